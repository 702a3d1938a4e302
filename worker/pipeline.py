"""The resident pipeline: weights loaded once at start, then many jobs run on them."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image

from app.core.jobs import JobCreate, JobParams
from app.core.models import TINY_MODEL, ModelSpec
from app.core.resolve import resolve_request
from app.core.settings import Settings
from worker.tiny_model import ensure_tiny_model

log = logging.getLogger(__name__)
StepCallback = Callable[[int], None]


class InvalidInput(ValueError):
    """Parameters the pipeline cannot run; the message says how to fix them."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is half precision on accelerators and float32 on the CPU (where fp16 is slow)."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    return getattr(torch, name)


def model_source(settings: Settings) -> str | Path:
    """What `from_pretrained` loads: the built tiny model, a local folder or a hub id."""
    if settings.model == TINY_MODEL:
        return ensure_tiny_model(settings.model_cache)
    path = Path(settings.model)
    return path if path.is_dir() else settings.model


class ResidentPipeline:
    """Text-to-image and image-to-image pipelines sharing one set of weights on one device."""

    def __init__(self, text2img: DiffusionPipeline, device: torch.device) -> None:
        self.device = device
        self.text2img = text2img
        self.img2img = AutoPipelineForImage2Image.from_pipe(text2img)
        self.scheduler_config = text2img.scheduler.config
        self.vae_scale = 2 ** (len(text2img.vae.config.block_out_channels) - 1)
        for pipe in (self.text2img, self.img2img):
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(cls, settings: Settings) -> "ResidentPipeline":
        """Load the configured model onto the configured device."""
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        source = model_source(settings)
        log.info("loading %s on %s as %s", source, device, dtype)
        pipe = AutoPipelineForText2Image.from_pretrained(
            source, dtype=dtype, cache_dir=settings.model_cache
        )
        return cls(pipe.to(device), device)

    def check(self, params: JobParams, init_image: Image.Image | None) -> None:
        """Refuse what the pipeline cannot run, before any tensor is allocated."""
        for name in ("width", "height"):
            if getattr(params, name) % self.vae_scale:
                raise InvalidInput(f"{name} must be a multiple of {self.vae_scale}")
        if (params.mode == "image-to-image") != (init_image is not None):
            raise InvalidInput("image-to-image needs an init image, text-to-image none")
        if params.denoising_steps < 1:
            raise InvalidInput("strength * num_inference_steps must be at least 1")

    def generate(
        self,
        params: JobParams,
        init_image: Image.Image | None = None,
        on_step: StepCallback | None = None,
    ) -> list[Image.Image]:
        """Run one job; `on_step(n)` after denoising step n may raise to stop the run."""
        self.check(params, init_image)
        img2img = init_image is not None
        pipe = self.img2img if img2img else self.text2img
        # A fresh scheduler per job: schedulers keep per-run state (step index, sigmas).
        pipe.scheduler = type(pipe.scheduler).from_config(self.scheduler_config)
        # CPU generators give the same noise for a seed on every device.
        generators = [
            torch.Generator("cpu").manual_seed(params.seed + i) for i in range(params.num_images)
        ]
        kwargs: dict[str, Any] = {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "num_images_per_prompt": params.num_images,
            "generator": generators,
            "output_type": "pil",
        }
        if img2img:
            size = (params.width, params.height)
            kwargs["image"] = init_image.resize(size, Image.Resampling.LANCZOS)
            kwargs["strength"] = params.strength
        else:
            kwargs["width"], kwargs["height"] = params.width, params.height
        if on_step is not None:

            def callback(_pipe: Any, step: int, _t: Any, tensors: dict) -> dict:
                on_step(step + 1)
                return tensors

            kwargs["callback_on_step_end"] = callback
        with torch.inference_mode():
            return pipe(**kwargs).images

    def warm_up(self, spec: ModelSpec, settings: Settings) -> None:
        """One small run so the first job does not pay for lazy initialisation."""
        request = JobCreate(prompt="warm-up", num_inference_steps=2, seed=0)
        self.generate(resolve_request(request, spec, settings))


def free_memory(device: torch.device) -> None:
    """Give cached accelerator memory back after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
