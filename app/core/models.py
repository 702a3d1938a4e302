"""What the API must know about a served model without loading it: name, family, native size,
defaults."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.core.families import Family, family_of, schedulers_of, size_multiple_of
from app.core.jobs import Mode
from app.core.settings import Settings

TINY_MODEL = "tiny-sd"
# Trained in this project on a synthetic shapes world (shapes/), shipped with the worker.
SHAPES_MODEL = "tiny-shapes"
# Its inpainting checkpoint (9-channel U-Net), fine-tuned from it by shapes/inpaint_train.py.
SHAPES_INPAINT_MODEL = "tiny-shapes-inpaint"
# Random-weight miniatures of the SDXL, SD3 and FLUX architectures, built offline like tiny-sd.
TINY_SDXL = "tiny-sdxl"
TINY_SD3 = "tiny-sd3"
TINY_FLUX = "tiny-flux"

Engine = Literal["step", "pipeline"]
MODES: tuple[Mode, ...] = ("text-to-image", "image-to-image")


@dataclass(frozen=True)
class ModelSpec:
    """A served model and the defaults a request without explicit values gets."""

    name: str
    native_size: int
    default_steps: int
    default_guidance_scale: float
    max_batch: int = 1
    cpu_threads: int | None = None  # None: torch's default, one thread per core
    family: Family = "unet"
    size_multiple: int = 0  # 0: the family's own (families.size_multiple_of)
    inpainting_only: bool = False  # an inpainting checkpoint: its U-Net takes a mask

    def __post_init__(self) -> None:
        if not self.size_multiple:
            object.__setattr__(self, "size_multiple", size_multiple_of(self.family))

    @property
    def queue_name(self) -> str:
        """The RQ queue of this model; workers serving it listen there."""
        return queue_name(self.name)

    @property
    def schedulers(self) -> tuple[str, ...]:
        """Names a request's `scheduler` may take (none for a model run as one pipeline call)."""
        return schedulers_of(self.family)

    @property
    def modes(self) -> tuple[Mode, ...]:
        """What a request may ask of the model: U-Nets also inpaint (masked latent blending),
        and an inpainting checkpoint only inpaints (its U-Net's extra channels need a mask)."""
        if self.inpainting_only:
            return ("inpainting",)
        return (*MODES, "inpainting") if self.family == "unet" else MODES

    @property
    def takes_loras(self) -> bool:
        """Whether requests may stack LoRA adapters on it (the U-Net family's step engine)."""
        return self.family == "unet"

    @property
    def engine(self) -> Engine:
        """`step`: the worker's step loop serves it; `pipeline`: one diffusers call per batch."""
        return "pipeline" if self.family == "pipeline" else "step"


def queue_name(model: str) -> str:
    """The RQ queue of the model named `model`."""
    return f"ldm:{model}"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class _FolderFacts:
    family: Family
    native_size: int | None
    vae_scale: int
    inpainting_only: bool = False


def _facts_from_folder(folder: Path) -> _FolderFacts | None:
    """A local diffusers folder's family and native size, from its configs alone."""
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    transformer = _read_json(folder / "transformer" / "config.json")
    if index is None and unet is None:
        return None
    # Folders without a model_index.json (older tests, hand-made ones) hold an SD U-Net.
    family = family_of(index.get("_class_name")) if index else "unet"
    vae = _read_json(folder / "vae" / "config.json") or {}
    vae_scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    latent = None
    if unet is not None:
        latent = unet.get("sample_size")
    elif transformer is not None:
        # FLUX's config has no sample_size: FluxPipeline falls back to 128 (1024 px), as here.
        latent = transformer.get("sample_size", 128)
    if isinstance(latent, list):  # some configs give [height, width]
        latent = latent[0]
    native = int(latent) * vae_scale if isinstance(latent, int | float) else None
    inpainting = unet is not None and unet.get("in_channels") == 9
    return _FolderFacts(family, native, vae_scale, inpainting)


# Native side, steps, guidance, batch size (images per call at native size that keep a 24 GB
# card busy without running out of memory) and family of well-known checkpoints, for API
# replicas that do not have the weights' files at hand. Anything else: its folder's config,
# else SD 1.x.
_KNOWN: dict[str, tuple[int, int, float, int, Family]] = {
    name.lower(): facts
    for name, facts in {
        TINY_MODEL: (64, 20, 7.5, 16, "unet"),
        SHAPES_MODEL: (64, 20, 5.0, 16, "unet"),
        SHAPES_INPAINT_MODEL: (64, 20, 5.0, 16, "unet"),
        TINY_SDXL: (64, 20, 5.0, 16, "unet"),
        TINY_SD3: (64, 20, 7.0, 16, "flow"),
        TINY_FLUX: (64, 4, 3.5, 16, "flow"),
        "stabilityai/sd-turbo": (512, 1, 0.0, 8, "unet"),
        "stabilityai/sdxl-turbo": (512, 1, 0.0, 8, "unet"),
        "stabilityai/stable-diffusion-2-1": (768, 30, 7.5, 4, "unet"),
        "stabilityai/stable-diffusion-xl-base-1.0": (1024, 30, 5.0, 2, "unet"),
        "stable-diffusion-v1-5/stable-diffusion-v1-5": (512, 30, 7.5, 8, "unet"),
        "stabilityai/stable-diffusion-3-medium-diffusers": (1024, 28, 7.0, 2, "flow"),
        "stabilityai/stable-diffusion-3.5-large": (1024, 28, 3.5, 2, "flow"),
        "black-forest-labs/FLUX.1-schnell": (1024, 4, 0.0, 2, "flow"),
        "black-forest-labs/FLUX.1-dev": (1024, 28, 3.5, 2, "flow"),
    }.items()
}


# A 64x64 model's ops are too small to share out: a second thread buys nothing (264 vs 283 ms a
# call on a quiet 2-core machine), and while another process holds a core every op waits for
# the descheduled thread (4.1 s against 0.28 s; `python -m bench.first_image --busy`).
_CPU_THREADS: dict[str, int] = {SHAPES_MODEL: 1, SHAPES_INPAINT_MODEL: 1}
# Inpainting checkpoints by name (others are told by their folder's U-Net config).
_INPAINTING = {
    SHAPES_INPAINT_MODEL,
    "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "stabilityai/stable-diffusion-2-inpainting",
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
}


def model_spec(settings: Settings, name: str | None = None) -> ModelSpec:
    """The spec of model `name` (default `settings.model`, the only one settings override)."""
    name = name or settings.model
    known = _KNOWN.get(name.lower())
    vae_scale = 8
    inpainting = name.lower() in _INPAINTING
    if known is not None:
        size, steps, guidance, batch, family = known
    else:
        steps, guidance, batch = 30, 7.5, 4
        facts = _facts_from_folder(Path(name))
        family = facts.family if facts else "unet"
        size = (facts.native_size if facts else None) or 512
        vae_scale = facts.vae_scale if facts else 8
        inpainting |= bool(facts and facts.inpainting_only)
    threads = _CPU_THREADS.get(name.lower())
    if name == settings.model:
        threads = settings.cpu_threads or threads
        size = settings.native_size or size
        steps = settings.default_steps or steps
        if settings.default_guidance_scale is not None:
            guidance = settings.default_guidance_scale
        batch = settings.max_batch or batch
    multiple = size_multiple_of(family, vae_scale)
    return ModelSpec(
        name=name,
        # A request without a size gets the native one, so it must be one the model takes.
        native_size=max(multiple, size // multiple * multiple),
        default_steps=steps,
        default_guidance_scale=guidance,
        max_batch=batch,
        cpu_threads=threads,
        family=family,
        size_multiple=multiple,
        inpainting_only=inpainting,
    )
