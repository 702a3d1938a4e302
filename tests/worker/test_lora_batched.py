"""Per-row LoRA stacks (worker/lora) against diffusers' own load_lora_weights + set_adapters.

Tolerance: float32 on CPU. Ours adds up(down(x) * s * scale) per adapter over a group of
rows; PEFT adds up(down(x)) * scale per adapter per job, and the batched base matmuls may
block differently by batch size, so results differ by rounding only: we allow 1e-5 of the
output's magnitude (observed: a few 1e-7), while the LoRAs move outputs by 1e-2..1e-1 of it.
"""

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

from tests.worker.lora_files import (
    KOHYA_SD,
    TEXT_TARGETS,
    UNET_TARGETS,
    activate,
    diffusers_file,
    kohya_file,
    peft_021_with_transformers_5,  # noqa: F401 (autouse)
    peft_lora,
    reference,
)
from worker.lora.batched import RowLoras
from worker.lora.weights import FILE_CHANGED, LoraWeights, read_lora
from worker.tiny_families import _build_pipeline as build_family
from worker.tiny_model import _build_pipeline as build_sd

RTOL = 1e-5


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory):
    """(tiny-sd, adapter A in diffusers format, adapter B in kohya format, their files)."""
    folder = tmp_path_factory.mktemp("lora")
    pipe = build_sd()
    file_a = diffusers_file(pipe, folder / "a")
    file_b = kohya_file(folder / "b.safetensors", KOHYA_SD)
    a = read_lora(file_a, pipe, "adapter_a")
    b = read_lora(file_b, pipe, "adapter_b")
    return pipe, a, b, file_a, file_b


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

    ref = reference(pipe, {a.name: file_a, b.name: file_b})
    start, errors = 0, []
    for count, stack in plan:
        rows = slice(start, start + count)
        activate(ref, stack)
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
    unet, _ = peft_lora(sdxl.unet, 3, ["to_q", "to_k"])
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "xl", unet_lora_layers=unet)
    xl_file = tmp_path / "xl" / "pytorch_lora_weights.safetensors"
    with pytest.raises(ValueError, match="pytorch_lora_weights.safetensors.*(no such|fit)"):
        read_lora(xl_file, pipe, "xl")
    te2 = kohya_file(
        tmp_path / "te2.safetensors",
        {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj": ((4, 32), (32, 4), 4)},
    )
    with pytest.raises(ValueError, match="te2.safetensors.*text_encoder_2.*another architecture"):
        read_lora(te2, pipe, "te2")


def test_unsupported_is_refused(sd, tmp_path: Path) -> None:
    pipe = sd[0]
    dora, meta = peft_lora(pipe.unet, 4, ["to_q"], use_dora=True)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "dora", unet_lora_layers=dora)
    with pytest.raises(ValueError, match="DoRA"):
        read_lora(tmp_path / "dora" / "pytorch_lora_weights.safetensors", pipe, "dora")
    kohya_dora = dict(KOHYA_SD)
    kohya_file(tmp_path / "kd.safetensors", kohya_dora)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "kd.safetensors")
    tensors["lora_unet_down_blocks_0_resnets_0_conv1.dora_scale"] = torch.ones(1, 32, 1, 1)
    save_file(tensors, tmp_path / "kd.safetensors")
    with pytest.raises(ValueError, match="kd.safetensors.*DoRA"):
        read_lora(tmp_path / "kd.safetensors", pipe, "kd")
    emb, _ = peft_lora(pipe.text_encoder, 5, ["token_embedding"])
    StableDiffusionPipeline.save_lora_weights(tmp_path / "emb", text_encoder_lora_layers=emb)
    with pytest.raises(ValueError, match="embedding"):
        read_lora(tmp_path / "emb" / "pytorch_lora_weights.safetensors", pipe, "emb")


@torch.inference_mode()
def test_sdxl_unet_and_text_encoder_2(tmp_path: Path) -> None:
    pipe = build_family("tiny-sdxl")
    unet, unet_meta = peft_lora(pipe.unet, 11, UNET_TARGETS + ["add_embedding.linear_1"])
    te2, te2_meta = peft_lora(pipe.text_encoder_2, 12, TEXT_TARGETS + ["text_projection"])
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
    ref = reference(pipe, {"x": file})
    start = 0
    for count, stack in plan:
        rows = slice(start, start + count)
        activate(ref, stack)
        sub = {k: v[rows] for k, v in added.items()}
        want = ref.unet(sample[rows], t[rows], context[rows], added_cond_kwargs=sub).sample
        _close(unet_out[rows], want)
        want_te2 = ref.text_encoder_2(ids[rows])
        _close(te2_out.text_embeds[rows], want_te2.text_embeds)
        _close(te2_out.last_hidden_state[rows], want_te2.last_hidden_state)
        moved = (te2_out.text_embeds[rows] - base_te2[rows]).abs().max()
        assert (moved > 100 * RTOL) == bool(stack)
        start += count
