"""Read one LoRA file into plain tensors, keyed by the pipeline modules it targets.

Conversion is diffusers' own (`lora_state_dict`: diffusers/PEFT and kohya/A1111 keys), and
each module's rank and alpha are resolved as diffusers + PEFT resolve them when
`load_lora_weights` loads the file, so a batched delta equals what PEFT would add.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.lora.peft_config import component_config, module_rank_alpha

FILE_CHANGED = "the adapter file changed since the API accepted the job"

# Key fragments PEFT / kohya use for things this module cannot batch, and what they are.
_UNSUPPORTED = {
    "dora_scale": "DoRA (magnitude vectors)",
    "lora_magnitude_vector": "DoRA (magnitude vectors)",
    "lora_embedding_": "LoRA on embedding layers",
    "lora_B.bias": "LoRA with a bias on the up weight (lora_bias=True)",
    ".lokr_": "LoKr",
    "hada_": "LoHa",
    "lora_controlnet": "control-LoRA",
}


@dataclass(frozen=True)
class LoraLayer:
    """One module's low-rank pair: delta(x) = scale * up(down(x)).

    For nn.Linear, down is (rank, in) and up is (out, rank). For nn.Conv2d (kohya LoCon /
    PEFT conv LoRA), down is a conv with the base conv's kernel, `stride` and `padding`
    (dilation 1, as PEFT builds it) and up is a 1x1 conv."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float  # lora_alpha / rank (or / sqrt(rank) for rsLoRA), as PEFT sets `scaling`
    stride: tuple[int, ...] | None = None  # conv only
    padding: Any = None  # conv only: the base conv's padding (a tuple, or "same"/"valid")

    @property
    def is_conv(self) -> bool:
        return self.down.ndim == 4

    @property
    def nbytes(self) -> int:
        return (
            self.down.numel() * self.down.element_size() + self.up.numel() * self.up.element_size()
        )


@dataclass(frozen=True, eq=False)
class LoraWeights:
    """An adapter, read once; shared (read-only) by every job that uses it."""

    name: str
    sha256: str
    layers: dict[tuple[str, str], LoraLayer] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers.values())

    @property
    def components(self) -> frozenset[str]:
        """Pipeline attributes it touches, e.g. {"unet", "text_encoder"}."""
        return frozenset(component for component, _ in self.layers)


def read_lora(
    path: str | Path,
    pipe: Any,
    name: str,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoraWeights:
    """Read the safetensors LoRA at `path` for `pipe`'s modules.

    The bytes are hashed and parsed from one read, so what is checked against `sha256` (when
    given) is exactly what is used. Raises ValueError naming the file for a file that is not a
    LoRA for this pipeline's architecture or that uses something unsupported."""
    import safetensors.torch
    from peft.tuners.tuners_utils import check_target_module_exists

    path = Path(path)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None and actual != sha256:
        raise ValueError(f"{path.name}: {FILE_CHANGED} (sha256 {actual}, expected {sha256})")
    try:
        raw = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path.name}: not a safetensors file ({exc})") from exc
    for key in raw:
        _refuse_unsupported(path, key)

    state_dict, network_alphas, metadata = _diffusers_state_dict(pipe, raw, _adapter_metadata(data))
    layers: dict[tuple[str, str], LoraLayer] = {}
    for component in _components_in(path, pipe, state_dict):
        module = getattr(pipe, component)
        peft_sd, config = component_config(
            component, module, state_dict, network_alphas, metadata, adapter_name=name
        )
        if config.use_dora:
            raise ValueError(f"{path.name}: {component} uses DoRA, which is not supported")
        if config.lora_bias:
            raise ValueError(f"{path.name}: {component} uses lora_bias, which is not supported")
        modules = dict(module.named_modules())
        for target in sorted({k.rsplit(".lora_", 1)[0] for k in peft_sd}):
            if not check_target_module_exists(config, target):
                continue  # PEFT injects no layer here: load_lora_weights ignores these weights
            layers[(component, target)] = _layer(
                path, component, target, modules.get(target), peft_sd, config, device, dtype
            )
    if not layers:
        raise ValueError(f"{path.name}: no LoRA weights for {type(pipe).__name__}")
    return LoraWeights(name=name, sha256=actual, layers=layers)


def _refuse_unsupported(path: Path, key: str) -> None:
    for fragment, what in _UNSUPPORTED.items():
        if fragment in key:
            raise ValueError(f"{path.name}: key {key!r} is {what}, which is not supported")


def _adapter_metadata(data: bytes) -> dict[str, Any] | None:
    """diffusers' `lora_adapter_metadata` (PEFT LoraConfig fields per component, e.g.
    "unet.lora_alpha") from the safetensors header, parsed as diffusers parses it from a file
    (we hand diffusers a dict, from which it would read no metadata)."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    value = (header.get("__metadata__") or {}).get(LORA_ADAPTER_METADATA_KEY)
    return json.loads(value) if value else None


def _diffusers_state_dict(
    pipe: Any, raw: dict[str, torch.Tensor], metadata: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], dict[str, float] | None, dict[str, Any] | None]:
    """`lora_state_dict` as the pipeline's own `load_lora_weights` calls it."""
    from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin

    if not hasattr(type(pipe), "lora_state_dict"):
        raise ValueError(f"{type(pipe).__name__} does not load LoRAs")
    kwargs: dict[str, Any] = {"return_lora_metadata": True}
    if isinstance(pipe, StableDiffusionXLLoraLoaderMixin):
        kwargs["unet_config"] = pipe.unet.config  # maps kohya's SGM block numbers, as SDXL does
    if "return_alphas" in _parameters(type(pipe).lora_state_dict):
        kwargs["return_alphas"] = True
    out = type(pipe).lora_state_dict(dict(raw), **kwargs)
    state_dict, alphas, _ = out if len(out) == 3 else (out[0], None, out[1])
    return state_dict, alphas, metadata


def _parameters(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _components_in(path: Path, pipe: Any, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The components keys are for, refusing keys diffusers would drop silently."""
    loadable = [c for c in getattr(pipe, "_lora_loadable_modules", []) if getattr(pipe, c, None)]
    found: list[str] = []
    for key in state_dict:
        if "lora" not in key:
            raise ValueError(f"{path.name}: key {key!r} is not a LoRA weight")
        component = next((c for c in loadable if key.startswith(f"{c}.")), None)
        if component is None:
            raise ValueError(
                f"{path.name}: key {key!r} is for no component of {type(pipe).__name__} "
                f"(it has {', '.join(loadable)}): an adapter for another architecture?"
            )
        if component not in found:
            found.append(component)
    return found


def _layer(
    path: Path,
    component: str,
    target: str,
    module: nn.Module | None,
    peft_sd: dict[str, torch.Tensor],
    config: Any,
    device: str | torch.device,
    dtype: torch.dtype,
) -> LoraLayer:
    where = f"{path.name}: {component}.{target}"
    down, up = peft_sd.get(f"{target}.lora_A.weight"), peft_sd.get(f"{target}.lora_B.weight")
    extra = set(k for k in peft_sd if k.startswith(f"{target}.lora_")) - {
        f"{target}.lora_A.weight",
        f"{target}.lora_B.weight",
    }
    if extra or down is None or up is None:
        raise ValueError(f"{where}: expected lora_A and lora_B weights, got {sorted(extra)}")
    if module is None:
        raise ValueError(f"{where}: no such module (an adapter for another architecture?)")
    r, alpha = module_rank_alpha(config, target)
    if down.shape[0] != r or up.shape[1] != r:
        raise ValueError(f"{where}: rank {down.shape[0]} in the file, {r} in its LoRA config")
    scale = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    to = {"device": device, "dtype": dtype}
    if type(module) is nn.Linear:
        if down.shape != (r, module.in_features) or up.shape != (module.out_features, r):
            raise ValueError(
                f"{where}: LoRA shapes {tuple(down.shape)}, {tuple(up.shape)} do not fit "
                f"Linear({module.in_features}, {module.out_features})"
            )
        return LoraLayer(down.to(**to).contiguous(), up.to(**to).contiguous(), scale)
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            raise ValueError(f"{where}: LoRA on grouped convolutions is not supported")
        expected_down = (r, module.in_channels, *module.kernel_size)
        if tuple(down.shape) != expected_down or tuple(up.shape) != (module.out_channels, r, 1, 1):
            raise ValueError(
                f"{where}: LoRA shapes {tuple(down.shape)}, {tuple(up.shape)} do not fit "
                f"Conv2d({module.in_channels}, {module.out_channels}, {module.kernel_size})"
            )
        return LoraLayer(
            down.to(**to).contiguous(),
            up.to(**to).contiguous(),
            scale,
            stride=tuple(module.stride),
            padding=module.padding,
        )
    raise ValueError(f"{where}: LoRA on {type(module).__name__} layers is not supported")
