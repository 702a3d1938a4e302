"""The resident pipeline: weights loaded once at start, then many jobs run on them."""

import logging
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image

from app.core.families import Family as FamilyName
from app.core.jobs import JobCreate, JobParams
from app.core.loras import registry_from
from app.core.models import (
    SHAPES_INPAINT_MODEL,
    SHAPES_MODEL,
    TINY_FLUX,
    TINY_MODEL,
    TINY_SD3,
    TINY_SDXL,
    ModelSpec,
    model_spec,
)
from app.core.resolve import resolve_request
from app.core.settings import Settings
from worker.engine.budget import Fit, fit_rows
from worker.engine.loop import Engine
from worker.engine.memory import free_memory
from worker.engine.state import EngineRequest
from worker.families import load_family
from worker.families.base import InvalidInput
from worker.tiny_model import ensure_tiny_model
from worker.weights_version import weights_version

__all__ = ["InvalidInput", "ResidentPipeline", "free_memory", "resolve_device", "resolve_dtype"]

# Weights trained by `python -m shapes.train` (see docs/tiny-shapes.md).
SHAPES_WEIGHTS = Path(__file__).parent / "weights" / SHAPES_MODEL

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device, family: FamilyName = "unet") -> torch.dtype:
    """`auto` is float32 on the CPU (where half precision is slow), else half precision:
    bfloat16 for flow transformers (SD3, FLUX overflow in float16), float16 for U-Nets."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if family == "flow" else torch.float16


def model_source(settings: Settings) -> str | Path:
    """What `from_pretrained` loads: the built tiny model, the shipped tiny-shapes weights, a
    local folder or a hub id."""
    if settings.model == TINY_MODEL:
        return ensure_tiny_model(settings.model_cache)
    if settings.model == SHAPES_MODEL:
        return SHAPES_WEIGHTS
    if settings.model == SHAPES_INPAINT_MODEL:
        return SHAPES_WEIGHTS.with_name(SHAPES_INPAINT_MODEL)
    if settings.model in (TINY_SDXL, TINY_SD3, TINY_FLUX):
        from worker.tiny_families import ensure_tiny

        return ensure_tiny(settings.model, settings.model_cache)
    path = Path(settings.model)
    return path if path.is_dir() else settings.model


class ResidentPipeline:
    """The loaded pipeline and the family that runs it step by step, on one device."""

    def __init__(self, pipe: DiffusionPipeline, device: torch.device, settings: Settings) -> None:
        self.device = device
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)
        registry, model = registry_from(settings), settings.model

        def find(name: str, sha256: str) -> Path | None:
            adapter = registry.find(model, name, sha256)
            return adapter.path if adapter else None

        self.family = load_family(
            pipe,
            device,
            safety_checker=settings.safety_checker,
            prompt_cache=settings.prompt_cache,
            loras=(find, settings.lora_memory_mb * 2**20),
        )
        self.native_size = self.family.native_size
        self.max_cost: int | None = None  # rows x latent pixels a forward holds (fit_budget)
        self.version: str | None = None  # the weights' digest, set by `load` (result cache)
        if settings.vae_tiling and hasattr(pipe, "vae"):
            pipe.vae.enable_tiling()
        log.info("%s runs as the %s family", type(pipe).__name__, self.family.name)

    @classmethod
    def load(cls, settings: Settings) -> "ResidentPipeline":
        """Load the configured model onto the configured device, tuned for it."""
        device = resolve_device(settings.device)
        spec = model_spec(settings)
        dtype = resolve_dtype(settings.dtype, device, spec.family)
        threads = spec.cpu_threads
        if device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        source = model_source(settings)
        log.info("loading %s on %s as %s", source, device, dtype)
        pipe = AutoPipelineForText2Image.from_pretrained(
            source, dtype=dtype, cache_dir=settings.model_cache
        )
        pipe.to(device)
        denoiser = "unet" if hasattr(pipe, "unet") else "transformer"
        # diffusers already attends with torch's scaled_dot_product_attention (flash or
        # memory-efficient kernels on CUDA); convolutions there prefer channels-last.
        if device.type == "cuda" and hasattr(pipe, "unet"):
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if settings.compile and hasattr(pipe, denoiser):
            # Compiled once per input shape: warm-up compiles the shapes jobs will use.
            setattr(pipe, denoiser, torch.compile(getattr(pipe, denoiser)))
        resident = cls(pipe, device, settings)
        resident.version = weights_version(source, pipe, dtype)
        return resident

    def engine(self, max_batch: int | None = None) -> Engine:
        """A fresh engine over this pipeline; `max_batch` guided images at native size fill a
        forward, by default the budget `fit_budget` set (else the engine's own default)."""
        cost = self.max_cost if max_batch is None else self._cost(max_batch, 7.5)
        return Engine(self.family, max_cost=cost)

    def _cost(self, images: int, guidance: float) -> int:
        return self.family.cost(self._params(images, guidance))

    @property
    def _masks(self) -> bool:
        """An inpainting checkpoint runs only jobs with a mask (measure and warm up so)."""
        return bool(getattr(self.family, "inpainting_only", False))

    def _params(self, images: int, guidance: float, seed: int = 0) -> JobParams:
        return JobParams(
            prompt="-", negative_prompt=None,
            mode="inpainting" if self._masks else "text-to-image",
            strength=1.0 if self._masks else None,
            width=self.native_size, height=self.native_size, num_inference_steps=2,
            guidance_scale=guidance, num_images=images, seed=seed, output_format="png",
            model="-",
        )  # fmt: skip

    def _request(self, job_id: str, params: JobParams) -> EngineRequest:
        """A made-up job: with a gray image and an all-white mask where masks are needed."""
        if params.mode != "inpainting":
            return EngineRequest(job_id, params)
        size = (params.width, params.height)
        gray, white = Image.new("RGB", size, "gray"), Image.new("L", size, 255)
        return EngineRequest(job_id, params, gray, mask=white)

    def fit_budget(self, spec: ModelSpec, settings: Settings) -> Fit | None:
        """Set how many rows a forward holds: what this device pays for, measured
        (worker/engine/budget.py) up to four times the model's batch; the model's batch when
        the operator set LDM_MAX_BATCH, or with LDM_COMPILE (each new shape would compile).
        Returns the measurement, None where there was none."""
        if settings.max_batch or settings.compile or self.family.name == "pipeline":
            self.max_cost = self._cost(spec.max_batch, 7.5)
            return None

        def requests(rows: int) -> list[EngineRequest]:
            # One-row jobs (no guidance rows), each with a seed of its own, as jobs come.
            return [self._request(f"budget-{i}", self._params(1, 1.0, seed=i)) for i in range(rows)]

        fit = fit_rows(self.family, requests, up_to=4 * 2 * spec.max_batch)
        self.max_cost = fit.rows * self._cost(1, 1.0)
        return fit

    def generate(
        self,
        params: JobParams,
        init_image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> list[Image.Image]:
        """Run one job alone (tests, benchmarks, warm-up); raises `InvalidInput` or the error."""
        self.family.check(params, init_image)
        engine = self.engine()
        engine.submit(EngineRequest("alone", params, init_image, mask=mask))
        (outcome,) = engine.run()
        if not outcome.ok:
            raise RuntimeError(f"{outcome.error}")
        return outcome.images

    def warm_up(self, spec: ModelSpec, settings: Settings) -> None:
        """Runs at native size, alone and in a full batch, so that the first jobs pay for
        neither lazy initialisation nor (with `LDM_COMPILE`) compilation."""
        request = JobCreate(prompt="warm-up", num_inference_steps=2, seed=0)
        params = resolve_request(request, spec, settings) if not self._masks else self._params(1, 5)
        for images in sorted({1, spec.max_batch}):
            made_up = self._request("warm-up", params.model_copy(update={"num_images": images}))
            self.generate(made_up.params, made_up.init_image, made_up.mask)
