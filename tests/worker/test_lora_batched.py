"""Per-row LoRA stacks (worker/lora) against diffusers' own load_lora_weights + set_adapters.

Tolerance: float32 on CPU. Ours adds up(down(x) * s * scale) per adapter over a group of
rows; PEFT adds up(down(x)) * scale per adapter per job, and the batched base matmuls may
block differently by batch size, so results differ by rounding only: we allow 1e-5 of the
output's magnitude (observed: a few 1e-7), while the LoRAs move outputs by 1e-2..1e-1 of it.
"""

import copy
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from worker.lora.batched import RowLoras
from worker.lora.weights import FILE_CHANGED, LoraWeights, read_lora
from worker.tiny_families import _build_pipeline as build_family
from worker.tiny_model import _build_pipeline as build_sd

RTOL = 1e-5
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "time_emb_proj"]
UNET_TARGETS += ["conv1", "linear_1"]  # resnet 3x3 convs, the time embedding's first linear
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


def _peft_lora(model: torch.nn.Module, seed: int, targets: list[str], **extra) -> tuple:
    """A random PEFT LoRA on a copy of `model`: (state dict, its config as metadata)."""
    config = LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets, **extra
    )  # alpha != r: the scale matters
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(config)
    return get_peft_model_state_dict(model), config.to_dict()


def _diffusers_file(pipe, folder: Path, seed: int = 1) -> Path:
    """Diffusers/PEFT format, LoraConfig in the file's metadata (as diffusers' scripts save)."""
    unet, unet_meta = _peft_lora(
        pipe.unet, seed, UNET_TARGETS, rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3}
    )
    te, te_meta = _peft_lora(pipe.text_encoder, seed + 1, TEXT_TARGETS)
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=unet,
        text_encoder_lora_layers=te,
        unet_lora_adapter_metadata=unet_meta,
        text_encoder_lora_adapter_metadata=te_meta,
    )
    return folder / "pytorch_lora_weights.safetensors"


# kohya name -> (down shape, up shape, alpha): linears, a 1x1 and a 3x3 (LoCon) conv, ranks
# and alphas that differ per module (diffusers turns those into rank/alpha patterns).
_KOHYA_SD = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ((4, 32), (32, 4), 2),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": ((4, 32), (32, 4), 2),
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0": ((2, 32), (32, 2), 2),
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2": ((4, 128), (32, 4), 8),
    "lora_unet_down_blocks_0_attentions_0_proj_in": ((4, 32, 1, 1), (32, 4, 1, 1), 2),
    "lora_unet_down_blocks_0_resnets_0_conv1": ((4, 32, 3, 3), (32, 4, 1, 1), 2),
    "lora_unet_mid_block_resnets_1_conv2": ((4, 64, 3, 3), (64, 4, 1, 1), 2),
    "lora_unet_down_blocks_1_resnets_0_time_emb_proj": ((4, 128), (64, 4), 2),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ((4, 32), (32, 4), 1),
    "lora_te_text_model_encoder_layers_1_mlp_fc1": ((4, 32), (37, 4), 1),
    "lora_te_text_model_encoder_layers_1_self_attn_out_proj": ((4, 32), (32, 4), 1),
}


def _kohya_file(path: Path, spec: dict, seed: int = 7) -> Path:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (down, up, alpha) in spec.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(down, generator=gen) * 0.3
        tensors[f"{name}.lora_up.weight"] = torch.randn(up, generator=gen) * 0.3
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _peft_021_with_transformers_5():
    """transformers 5.25's PEFT integration (`add_adapter`, `load_adapter`, which diffusers'
    `load_lora_weights` calls for text encoders) demands peft >= 0.22, not yet released (we
    have 0.21.2), so diffusers cannot load a text-encoder LoRA here at all. worker/lora does
    not go through it. To build files and references, skip that version gate."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("transformers.integrations.peft.check_peft_version", lambda **_: None)
        yield


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory):
    """(tiny-sd, adapter A in diffusers format, adapter B in kohya format, their files)."""
    folder = tmp_path_factory.mktemp("lora")
    pipe = build_sd()
    file_a = _diffusers_file(pipe, folder / "a")
    file_b = _kohya_file(folder / "b.safetensors", _KOHYA_SD)
    a = read_lora(file_a, pipe, "adapter_a")
    b = read_lora(file_b, pipe, "adapter_b")
    return pipe, a, b, file_a, file_b


def _reference(pipe, files: dict[str, Path]):
    """A copy of `pipe` with every adapter loaded by diffusers itself."""
    ref = copy.deepcopy(pipe)
    for name, file in files.items():
        ref.load_lora_weights(str(file), adapter_name=name)
    return ref


def _activate(ref, stack: tuple) -> None:
    if not stack:
        ref.disable_lora()
        return
    ref.enable_lora()
    ref.set_adapters([w.name for w, _ in stack], adapter_weights=[s for _, s in stack])


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Max error relative to the output's magnitude; asserted within RTOL."""
    err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert err < RTOL, err
    return err


def _plan(a: LoraWeights, b: LoraWeights) -> list:
    # Base rows, A alone, A + B with a negative scale, A again (not adjacent, another
    # scale): A's rows take the index path with per-row scales, B's the slice path.
    return [(2, ()), (2, ((a, 0.8),)), (2, ((a, 0.5), (b, -1.0))), (1, ((a, 0.8),))]


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # the 2nd reference adapter
@torch.inference_mode()
def test_unet_and_text_encoder_rows_match_diffusers(sd) -> None:
    pipe, a, b, file_a, file_b = sd
    assert a.components == {"unet", "text_encoder"} and b.components == a.components
    assert any(layer.is_conv and layer.down.shape[-1] == 3 for layer in b.layers.values())
    plan = _plan(a, b)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(7, 4, 8, 8, generator=gen)
    t = torch.tensor([999, 999, 500, 500, 20, 20, 700])
    context = torch.randn(7, 10, 32, generator=gen)
    ids = torch.randint(0, 400, (7, 77), generator=gen)

    base_unet = pipe.unet(sample, t, context).sample
    base_text = pipe.text_encoder(ids).last_hidden_state
    row_loras = RowLoras(pipe)
    with row_loras.rows(plan):
        unet_out = pipe.unet(sample, t, context).sample
        text_out = pipe.text_encoder(ids).last_hidden_state
    # Outside the context the base model is untouched, bit for bit.
    assert torch.equal(pipe.unet(sample, t, context).sample, base_unet)
    assert torch.equal(pipe.text_encoder(ids).last_hidden_state, base_text)

    ref = _reference(pipe, {a.name: file_a, b.name: file_b})
    start, errors = 0, []
    for count, stack in plan:
        rows = slice(start, start + count)
        _activate(ref, stack)
        want_unet = ref.unet(sample[rows], t[rows], context[rows]).sample
        want_text = ref.text_encoder(ids[rows]).last_hidden_state
        errors += [_close(unet_out[rows], want_unet), _close(text_out[rows], want_text)]
        if stack:  # the adapters really change these rows
            assert (unet_out[rows] - base_unet[rows]).abs().max() > 100 * RTOL
            assert (text_out[rows] - base_text[rows]).abs().max() > 100 * RTOL
        start += count
    print(f"max relative error {max(errors):.2e}")


def test_works_with_grad_and_no_adapter_rows(sd) -> None:
    """Outside inference mode too; a plan without adapters registers no hook."""
    pipe, a, _, _, _ = sd
    row_loras = RowLoras(pipe)
    ids = torch.randint(0, 400, (3, 77))
    with torch.no_grad():
        base = pipe.text_encoder(ids).last_hidden_state
        with row_loras.rows([(3, ())]):
            assert not any(m._forward_hooks for m in pipe.text_encoder.modules())
            assert torch.equal(pipe.text_encoder(ids).last_hidden_state, base)
        with row_loras.rows([(1, ()), (2, ((a, 1.0),))], components={"unet"}):
            assert torch.equal(pipe.text_encoder(ids).last_hidden_state, base)
        with row_loras.rows([(2, ((a, 1.0),))]), pytest.raises(RuntimeError, match="rows"):
            pipe.text_encoder(ids)  # 3 rows, a plan for 2


def test_sha_mismatch_and_wrong_architecture(sd, tmp_path: Path) -> None:
    pipe, _, _, file_a, _ = sd
    with pytest.raises(ValueError, match=FILE_CHANGED):
        read_lora(file_a, pipe, "a", sha256="0" * 64)
    sdxl = build_family("tiny-sdxl")
    unet, _ = _peft_lora(sdxl.unet, 3, ["to_q", "to_k"])
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "xl", unet_lora_layers=unet)
    xl_file = tmp_path / "xl" / "pytorch_lora_weights.safetensors"
    with pytest.raises(ValueError, match="pytorch_lora_weights.safetensors.*(no such|fit)"):
        read_lora(xl_file, pipe, "xl")
    te2 = _kohya_file(
        tmp_path / "te2.safetensors",
        {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj": ((4, 32), (32, 4), 4)},
    )
    with pytest.raises(ValueError, match="te2.safetensors.*text_encoder_2.*another architecture"):
        read_lora(te2, pipe, "te2")


def test_unsupported_is_refused(sd, tmp_path: Path) -> None:
    pipe = sd[0]
    dora, meta = _peft_lora(pipe.unet, 4, ["to_q"], use_dora=True)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "dora", unet_lora_layers=dora)
    with pytest.raises(ValueError, match="DoRA"):
        read_lora(tmp_path / "dora" / "pytorch_lora_weights.safetensors", pipe, "dora")
    kohya_dora = dict(_KOHYA_SD)
    _kohya_file(tmp_path / "kd.safetensors", kohya_dora)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "kd.safetensors")
    tensors["lora_unet_down_blocks_0_resnets_0_conv1.dora_scale"] = torch.ones(1, 32, 1, 1)
    save_file(tensors, tmp_path / "kd.safetensors")
    with pytest.raises(ValueError, match="kd.safetensors.*DoRA"):
        read_lora(tmp_path / "kd.safetensors", pipe, "kd")
    emb, _ = _peft_lora(pipe.text_encoder, 5, ["token_embedding"])
    StableDiffusionPipeline.save_lora_weights(tmp_path / "emb", text_encoder_lora_layers=emb)
    with pytest.raises(ValueError, match="embedding"):
        read_lora(tmp_path / "emb" / "pytorch_lora_weights.safetensors", pipe, "emb")


@torch.inference_mode()
def test_sdxl_unet_and_text_encoder_2(tmp_path: Path) -> None:
    pipe = build_family("tiny-sdxl")
    unet, unet_meta = _peft_lora(pipe.unet, 11, UNET_TARGETS + ["add_embedding.linear_1"])
    te2, te2_meta = _peft_lora(pipe.text_encoder_2, 12, TEXT_TARGETS + ["text_projection"])
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=unet,
        text_encoder_2_lora_layers=te2,
        unet_lora_adapter_metadata=unet_meta,
        text_encoder_2_lora_adapter_metadata=te2_meta,
    )
    file = tmp_path / "pytorch_lora_weights.safetensors"
    x = read_lora(file, pipe, "x")
    assert x.components == {"unet", "text_encoder_2"}
    plan = [(2, ((x, 1.5),)), (2, ()), (2, ((x, -0.7),))]
    gen = torch.Generator().manual_seed(0)
    sample, context = torch.randn(6, 4, 8, 8, generator=gen), torch.randn(6, 10, 64, generator=gen)
    t = torch.tensor([900, 900, 400, 400, 10, 10])
    added = {"text_embeds": torch.randn(6, 32, generator=gen), "time_ids": torch.rand(6, 6) * 64}
    ids = torch.randint(0, 400, (6, 77), generator=gen)
    base_te2 = pipe.text_encoder_2(ids).text_embeds
    with RowLoras(pipe).rows(plan):
        unet_out = pipe.unet(sample, t, context, added_cond_kwargs=added).sample
        te2_out = pipe.text_encoder_2(ids)
    ref = _reference(pipe, {"x": file})
    start = 0
    for count, stack in plan:
        rows = slice(start, start + count)
        _activate(ref, stack)
        sub = {k: v[rows] for k, v in added.items()}
        want = ref.unet(sample[rows], t[rows], context[rows], added_cond_kwargs=sub).sample
        _close(unet_out[rows], want)
        want_te2 = ref.text_encoder_2(ids[rows])
        _close(te2_out.text_embeds[rows], want_te2.text_embeds)
        _close(te2_out.last_hidden_state[rows], want_te2.last_hidden_state)
        moved = (te2_out.text_embeds[rows] - base_te2[rows]).abs().max()
        assert (moved > 100 * RTOL) == bool(stack)
        start += count
