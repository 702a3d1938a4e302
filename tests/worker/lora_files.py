"""Random LoRA files for tiny pipelines (diffusers/PEFT and kohya formats), and diffusers'
own loading of them as the reference the worker's adapters are checked against."""

import copy
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "time_emb_proj"]
UNET_TARGETS += ["conv1", "linear_1"]  # resnet 3x3 convs, the time embedding's first linear
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


def peft_lora(model: torch.nn.Module, seed: int, targets: list[str], **extra) -> tuple:
    """A random PEFT LoRA on a copy of `model`: (state dict, its config as metadata)."""
    config = LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets, **extra
    )  # alpha != r: the scale matters
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(config)
    return get_peft_model_state_dict(model), config.to_dict()


def diffusers_file(pipe, folder: Path, seed: int = 1) -> Path:
    """Diffusers/PEFT format, LoraConfig in the file's metadata (as diffusers' scripts save)."""
    unet, unet_meta = peft_lora(
        pipe.unet, seed, UNET_TARGETS, rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3}
    )
    te, te_meta = peft_lora(pipe.text_encoder, seed + 1, TEXT_TARGETS)
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
KOHYA_SD = {
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


def kohya_file(path: Path, spec: dict, seed: int = 7) -> Path:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (down, up, alpha) in spec.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(down, generator=gen) * 0.3
        tensors[f"{name}.lora_up.weight"] = torch.randn(up, generator=gen) * 0.3
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def peft_021_with_transformers_5():
    """transformers 5.25's PEFT integration (`add_adapter`, `load_adapter`, which diffusers'
    `load_lora_weights` calls for text encoders) demands peft >= 0.22, not yet released (we
    have 0.21.2), so diffusers cannot load a text-encoder LoRA here at all. worker/lora does
    not go through it. To build files and references, skip that version gate (autouse in
    each module that imports it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("transformers.integrations.peft.check_peft_version", lambda **_: None)
        yield


def reference(pipe, files: dict[str, Path]):
    """A copy of `pipe` with every adapter loaded by diffusers itself."""
    ref = copy.deepcopy(pipe)
    for name, file in files.items():
        ref.load_lora_weights(str(file), adapter_name=name)
    return ref


def activate(ref, stack: tuple) -> None:
    if not stack:
        ref.disable_lora()
        return
    ref.enable_lora()
    ref.set_adapters([w.name for w, _ in stack], adapter_weights=[s for _, s in stack])
