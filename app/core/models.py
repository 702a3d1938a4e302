"""What the API must know about a served model without loading it: name, native size, defaults."""

import json
from dataclasses import dataclass
from pathlib import Path

from app.core.settings import Settings

TINY_MODEL = "tiny-sd"
# Trained in this project on a synthetic shapes world (shapes/), shipped with the worker.
SHAPES_MODEL = "tiny-shapes"


@dataclass(frozen=True)
class ModelSpec:
    """A served model and the defaults a request without explicit values gets."""

    name: str
    native_size: int
    default_steps: int
    default_guidance_scale: float
    max_batch: int = 1
    cpu_threads: int | None = None  # None: torch's default, one thread per core

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


# Native side, steps, guidance and batch size (images per call at native size that keep a
# 24 GB card busy without running out of memory) of well-known checkpoints, for API replicas
# that do not have the weights' files at hand. Anything else: its folder's config, else SD 1.x.
_KNOWN: dict[str, tuple[int, int, float, int]] = {
    TINY_MODEL: (64, 20, 7.5, 16),
    SHAPES_MODEL: (64, 20, 5.0, 16),
    "stabilityai/sd-turbo": (512, 1, 0.0, 8),
    "stabilityai/sdxl-turbo": (512, 1, 0.0, 8),
    "stabilityai/stable-diffusion-2-1": (768, 30, 7.5, 4),
    "stabilityai/stable-diffusion-xl-base-1.0": (1024, 30, 5.0, 2),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": (512, 30, 7.5, 8),
}


# A 64x64 model's ops are too small to share out: a second thread buys nothing (264 vs 283 ms a
# call on a quiet 2-core machine), and while another process holds a core every op waits for
# the descheduled thread (4.1 s against 0.28 s; `python -m bench.first_image --busy`).
_CPU_THREADS: dict[str, int] = {SHAPES_MODEL: 1}


def model_spec(settings: Settings, name: str | None = None) -> ModelSpec:
    """The spec of model `name` (default `settings.model`, the only one settings override)."""
    name = name or settings.model
    size, steps, guidance, batch = _KNOWN.get(name.lower(), (None, 30, 7.5, 4))
    size = size or _native_size_from_folder(Path(name)) or 512
    threads = _CPU_THREADS.get(name.lower())
    if name == settings.model:
        threads = settings.cpu_threads or threads
        size = settings.native_size or size
        steps = settings.default_steps or steps
        if settings.default_guidance_scale is not None:
            guidance = settings.default_guidance_scale
        batch = settings.max_batch or batch
    return ModelSpec(
        name=name,
        native_size=size,
        default_steps=steps,
        default_guidance_scale=guidance,
        max_batch=batch,
        cpu_threads=threads,
    )
