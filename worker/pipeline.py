"""The resident pipeline: weights loaded once at start, then many jobs run on them."""

import logging
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image

from app.core.batches import batch_key
from app.core.jobs import JobCreate, JobParams
from app.core.models import SHAPES_MODEL, TINY_MODEL, ModelSpec, model_spec
from app.core.resolve import resolve_request
from app.core.settings import Settings
from worker.tiny_model import ensure_tiny_model

# Weights trained by `python -m shapes.train` (see docs/tiny-shapes.md).
SHAPES_WEIGHTS = Path(__file__).parent / "weights" / SHAPES_MODEL

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
    """What `from_pretrained` loads: the built tiny model, the shipped tiny-shapes weights, a
    local folder or a hub id."""
    if settings.model == TINY_MODEL:
        return ensure_tiny_model(settings.model_cache)
    if settings.model == SHAPES_MODEL:
        return SHAPES_WEIGHTS
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
        self.native_size = text2img.unet.config.sample_size * self.vae_scale
        for pipe in (self.text2img, self.img2img):
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(cls, settings: Settings) -> "ResidentPipeline":
        """Load the configured model onto the configured device, tuned for it."""
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        threads = model_spec(settings).cpu_threads
        if device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        source = model_source(settings)
        log.info("loading %s on %s as %s", source, device, dtype)
        pipe = AutoPipelineForText2Image.from_pretrained(
            source, dtype=dtype, cache_dir=settings.model_cache
        )
        pipe.to(device)
        # diffusers already attends with torch's scaled_dot_product_attention (flash or
        # memory-efficient kernels on CUDA); convolutions there prefer channels-last.
        if device.type == "cuda":
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if settings.compile:
            # Compiled once per input shape: warm-up compiles the shapes jobs will use.
            pipe.unet = torch.compile(pipe.unet)
        return cls(pipe, device)

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
        return self.generate_batch([(params, init_image)], on_step)[0]

    def generate_batch(
        self,
        jobs: Sequence[tuple[JobParams, Image.Image | None]],
        on_step: StepCallback | None = None,
    ) -> list[list[Image.Image]]:
        """Run jobs of one `batch_key` as one pipeline call; returns each job's images.

        Every image has its own prompt and CPU generator (seed + i), so a job's images are
        those it gets alone, within float noise."""
        first, first_image = jobs[0]
        for params, init_image in jobs:
            self.check(params, init_image)
            if batch_key(params) != batch_key(first):
                raise ValueError("jobs of one batch must share their batch key")
        img2img = first_image is not None
        pipe = self.img2img if img2img else self.text2img
        # A fresh scheduler per call: schedulers keep per-run state (step index, sigmas).
        pipe.scheduler = type(pipe.scheduler).from_config(self.scheduler_config)
        prompts, negatives, generators, images = [], [], [], []
        for params, init_image in jobs:
            if init_image is not None:
                size = (params.width, params.height)
                images += [init_image.resize(size, Image.Resampling.LANCZOS)] * params.num_images
            prompts += [params.prompt] * params.num_images
            negatives += [params.negative_prompt] * params.num_images
            # CPU generators give the same noise for a seed on every device.
            generators += [
                torch.Generator("cpu").manual_seed(params.seed + i)
                for i in range(params.num_images)
            ]
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            # All or none (see `batch_key`): None lets each pipeline treat "no negative
            # prompt" its own way.
            "negative_prompt": None if first.negative_prompt is None else negatives,
            "num_inference_steps": first.num_inference_steps,
            "guidance_scale": first.guidance_scale,
            "generator": generators,
            "output_type": "pil",
        }
        if img2img:
            kwargs["image"] = images
            kwargs["strength"] = first.strength
        else:
            kwargs["width"], kwargs["height"] = first.width, first.height
        if on_step is not None:

            def callback(_pipe: Any, step: int, _t: Any, tensors: dict) -> dict:
                on_step(step + 1)  # no tensor is read here: no host-device sync per step
                return tensors

            kwargs["callback_on_step_end"] = callback
        # Beyond twice the native side the VAE's activations, not the U-Net, fill memory.
        if first.width * first.height > 4 * self.native_size**2:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        with torch.inference_mode():
            output = pipe(**kwargs).images
        ends = accumulate(params.num_images for params, _ in jobs)
        return [output[end - p.num_images : end] for (p, _), end in zip(jobs, ends, strict=True)]

    def warm_up(self, spec: ModelSpec, settings: Settings) -> None:
        """Runs at native size, alone and in a full batch, so that the first jobs pay for
        neither lazy initialisation nor (with `LDM_COMPILE`) compilation."""
        request = JobCreate(prompt="warm-up", num_inference_steps=2, seed=0)
        params = resolve_request(request, spec, settings)
        self.generate(params)
        if spec.max_batch > 1:
            self.generate(params.model_copy(update={"num_images": spec.max_batch}))


def free_memory(device: torch.device) -> None:
    """Give cached accelerator memory back after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
