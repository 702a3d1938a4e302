"""The LoraConfig diffusers builds for one component when it loads a LoRA, and PEFT's
per-module rank/alpha resolution from it.

This mirrors `PeftAdapterMixin.load_lora_adapter` (U-Nets, transformers) and
`_load_lora_into_text_encoder` (CLIP/T5 text encoders) in diffusers 0.42 step by step,
calling diffusers' own helpers, so that its quirks carry over: e.g. kohya alphas that differ
per module become an `alpha_pattern` whose keys match no module, so every module gets the
most common alpha, exactly as `load_lora_weights` does it.
"""

from __future__ import annotations

from typing import Any

import torch

# The text-encoder modules diffusers reads ranks from (`_load_lora_into_text_encoder`).
_TEXT_RANK_SUFFIXES = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def component_config(
    component: str,
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    network_alphas: dict[str, float] | None,
    metadata: dict[str, Any] | None,
    adapter_name: str,
) -> tuple[dict[str, torch.Tensor], Any]:
    """(PEFT-format state dict of `component`, the LoraConfig diffusers makes for it)."""
    from diffusers.models.modeling_utils import ModelMixin

    prefix = f"{component}."
    sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if metadata is not None:
        metadata = {k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)}
    if isinstance(model, ModelMixin):
        return _model_config(component, sd, network_alphas, metadata, adapter_name)
    return _text_encoder_config(component, model, sd, network_alphas, metadata)


def _model_config(
    component: str,
    sd: dict[str, torch.Tensor],
    network_alphas: dict[str, float] | None,
    metadata: dict[str, Any] | None,
    adapter_name: str,
) -> tuple[dict[str, torch.Tensor], Any]:
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config

    if network_alphas and metadata:
        raise ValueError("both network alphas and LoRA metadata")  # as diffusers refuses it
    if "lora_A" not in next(iter(sd)):
        sd = convert_unet_state_dict_to_peft(sd)
    # "^": ranks are anchored to the full module path (see diffusers / PEFT #2419).
    rank = {f"^{k}": v.shape[1] for k, v in sd.items() if "lora_B" in k and v.ndim > 1}
    if network_alphas is not None and len(network_alphas) >= 1:
        network_alphas = {
            k.removeprefix(f"{component}."): v
            for k, v in network_alphas.items()
            if k.startswith(f"{component}.")
        }
    config = _create_lora_config(sd, network_alphas, metadata, rank, adapter_name=adapter_name)
    return sd, config


def _text_encoder_config(
    component: str,
    model: torch.nn.Module,
    sd: dict[str, torch.Tensor],
    network_alphas: dict[str, float] | None,
    metadata: dict[str, Any] | None,
) -> tuple[dict[str, torch.Tensor], Any]:
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config

    if network_alphas and metadata:
        raise ValueError("both network alphas and LoRA metadata")
    sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sd))
    # transformers 5 flattened CLIPTextModel (no `.text_model`); older files still have it.
    if not hasattr(model, "text_model"):
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    rank = {}
    for name, _ in model.named_modules():
        key = f"{name}.lora_B.weight"
        if name.endswith(_TEXT_RANK_SUFFIXES) and key in sd:
            rank[key] = sd[key].shape[1]
    if not rank:
        # diffusers fails here with an IndexError; say what is wrong instead.
        raise ValueError(f"no LoRA on {component}'s attention or MLP projections")
    if network_alphas is not None:
        network_alphas = {
            k.removeprefix(f"{component}."): v
            for k, v in network_alphas.items()
            if k.split(".")[0] == component
        }
    return sd, _create_lora_config(sd, network_alphas, metadata, rank, is_unet=False)


def module_rank_alpha(config: Any, target: str) -> tuple[int, float]:
    """(r, lora_alpha) PEFT gives module `target` (LoraModel._create_and_replace)."""
    from peft.utils.other import get_pattern_key

    ranks, alphas = config.rank_pattern or {}, config.alpha_pattern or {}
    r = ranks.get(get_pattern_key(ranks.keys(), target), config.r)
    return r, alphas.get(get_pattern_key(alphas.keys(), target), config.lora_alpha)
