"""What the API must know about a served model without loading it: name, native size, defaults."""

import json
from dataclasses import dataclass
from pathlib import Path

from app.core.settings import Settings

TINY_MODEL = "tiny-sd"


@dataclass(frozen=True)
class ModelSpec:
    """A served model and the defaults a request without explicit values gets."""

    name: str
    native_size: int
    default_steps: int
    default_guidance_scale: float

    @property
    def queue_name(self) -> str:
        """The RQ queue of this model; workers serving it listen there."""
        return queue_name(self.name)


def queue_name(model: str) -> str:
    """The RQ queue of the model named `model`."""
    return f"ldm:{model}"


def _native_size_from_folder(folder: Path) -> int | None:
    # A diffusers folder says it: U-Net latent size times the VAE's downscale factor.
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def model_spec(settings: Settings) -> ModelSpec:
    """The spec of `settings.model`; settings override what the model's files or name imply."""
    name = settings.model
    lowered = name.lower()
    if name == TINY_MODEL:
        size, steps, guidance = 64, 20, 7.5
    else:
        size = _native_size_from_folder(Path(name)) or (1024 if "xl" in lowered else 512)
        # Distilled "turbo" models are trained for a step or two without guidance.
        steps, guidance = (1, 0.0) if "turbo" in lowered else (30, 7.5)
    return ModelSpec(
        name=name,
        native_size=size,
        default_steps=settings.default_steps or steps,
        default_guidance_scale=(
            guidance if settings.default_guidance_scale is None else settings.default_guidance_scale
        ),
    )
