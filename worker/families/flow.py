"""Flow-matching transformers: SD3 / SD3.5 (MMDiT) and FLUX.1 schnell / dev.

Every formula is diffusers' own (`encode_prompt`, `prepare_latents`, `retrieve_timesteps`,
`calculate_shift`, `get_timesteps`, `_pack/_unpack_latents`, the VAE's scaling and shift
factors, the image processor), called on the loaded pipelines with each job's scheduler
swapped in; this module only arranges rows.

Rows: SD3 gives a job unconditional rows (negative first) where guidance > 1, as the
pipeline's `do_classifier_free_guidance`. FLUX embeds `guidance_scale` (dev; schnell has no
guidance embedding) and runs true CFG where a job has a negative prompt and guidance > 1 —
diffusers' `true_cfg_scale`, which it runs as a second forward; here the negative rows go in
the same forward, so such jobs batch with the rest."""

import inspect
from typing import Any

import numpy as np
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps
from PIL import Image

from app.core.families import FLOW_SCHEDULERS
from app.core.jobs import JobParams
from worker.engine.schedulers import Schedulers
from worker.engine.state import EngineRequest, JobState
from worker.families.base import (
    InvalidInput,
    NoAdapters,
    guided,
    plain_only,
    scheduler_of,
    seeded,
    split_rows,
)
from worker.families.flow_text import FlowTexts


def _default(pipe: DiffusionPipeline, argument: str) -> object:
    """A default of the pipeline's own `__call__` (e.g. its `max_sequence_length`)."""
    return inspect.signature(type(pipe).__call__).parameters[argument].default


class FlowFamily(NoAdapters):
    """The step-wise math of diffusers' SD3 and FLUX text- and image-to-image pipelines."""

    name = "flow"

    def __init__(self, pipe: DiffusionPipeline, device: torch.device):
        if "Img2Img" in type(pipe).__name__:
            pipe = AutoPipelineForText2Image.from_pipe(pipe)
        self.pipe = pipe
        self.schedulers = Schedulers(pipe.scheduler)
        self.img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        for each in (self.pipe, self.img2img):
            each.set_progress_bar_config(disable=True)
        self.device = device
        self.transformer = pipe.transformer
        self.flux = hasattr(pipe, "_pack_latents")
        self.vae_scale = pipe.vae_scale_factor
        # As the pipelines' default height: SD3 reads the transformer's sample_size, FLUX has
        # none and says 128 (a config that names one, as tiny-flux's, is taken at its word).
        latent = self.transformer.config.get("sample_size") or pipe.default_sample_size
        self.native_size = latent * self.vae_scale
        self.patch = 2 if self.flux else self.transformer.config.patch_size
        self.size_multiple = self.vae_scale * self.patch
        # SD3 crops a fixed positional-embedding grid: larger latents cannot run.
        grid = None if self.flux else self.transformer.config.get("pos_embed_max_size")
        self.max_size = grid * self.patch * self.vae_scale if grid else None
        # Equal text lengths across jobs (rows concatenate): always the pipeline's default.
        self.max_sequence_length = int(_default(pipe, "max_sequence_length"))
        self.guidance_embeds = self.flux and bool(self.transformer.config.guidance_embeds)
        self.texts = FlowTexts(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def uses_cfg(self, params: JobParams) -> bool:
        """Whether the job gets unconditional rows (SD3's CFG, FLUX's true CFG)."""
        if self.flux:
            return params.negative_prompt is not None and params.guidance_scale > 1
        return params.guidance_scale > 1

    def check(self, params: JobParams, init_image: Image.Image | None) -> None:
        plain_only(params, self.name)
        if params.scheduler not in (None, *FLOW_SCHEDULERS):
            raise InvalidInput(f"scheduler must be one of {', '.join(FLOW_SCHEDULERS)}")
        for name in ("width", "height"):
            value = getattr(params, name)
            if value % self.size_multiple:
                raise InvalidInput(f"{name} must be a multiple of {self.size_multiple}")
            if self.max_size is not None and value > self.max_size:
                raise InvalidInput(f"{name} must be at most {self.max_size} for this model")
        if (params.mode == "image-to-image") != (init_image is not None):
            raise InvalidInput("image-to-image needs an init image, text-to-image none")
        if self.denoising_steps(params) < 1:
            raise InvalidInput("strength * num_inference_steps must be at least 1")

    @staticmethod
    def denoising_steps(params: JobParams) -> int:
        """Steps the SD3 / FLUX image-to-image pipelines run (their `get_timesteps`): one more
        than `JobParams.denoising_steps` (SD's rounding) where steps x strength has a fraction."""
        steps = params.num_inference_steps
        if params.strength is None:
            return steps
        return steps - int(max(steps - min(steps * params.strength, steps), 0))

    def cost(self, params: JobParams) -> int:
        latent_pixels = params.width * params.height // self.vae_scale**2
        return params.num_images * (2 if self.uses_cfg(params) else 1) * latent_pixels

    def prepare(self, requests: list[EngineRequest]) -> list[JobState]:
        """Encode every newcomer's prompts in one text-encoder call, then set up each job."""
        conds = self.texts.encode(requests)
        return [self._prepare_one(r, c) for r, c in zip(requests, conds, strict=True)]

    def _shift(self, scheduler: Any, image_seq_len: int, max_shift: float) -> float:
        """The resolution-dependent shift `mu`, with the pipelines' own config defaults."""
        config = scheduler.config
        return calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", max_shift),
        )

    def _timesteps(self, scheduler: Any, params: JobParams, img2img: bool) -> torch.Tensor:
        """`retrieve_timesteps` as each pipeline calls it (then `get_timesteps` for img2img)."""
        steps = params.num_inference_steps
        latent_h, latent_w = params.height // self.vae_scale, params.width // self.vae_scale
        image_seq_len = (latent_h // self.patch) * (latent_w // self.patch)
        kwargs: dict[str, Any] = {}
        if self.flux:
            sigmas = np.linspace(1.0, 1 / steps, steps)
            # FluxPipeline (text-to-image only) leaves flow sigmas to the scheduler.
            if not img2img and getattr(scheduler.config, "use_flow_sigmas", False):
                sigmas = None
            kwargs = {"sigmas": sigmas, "mu": self._shift(scheduler, image_seq_len, 1.15)}
        elif scheduler.config.get("use_dynamic_shifting", None):
            kwargs = {"mu": self._shift(scheduler, image_seq_len, 1.16)}
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, **kwargs)
        if img2img:
            with scheduler_of(self.img2img, scheduler) as i2i:
                timesteps, _ = i2i.get_timesteps(steps, params.strength, self.device)
        elif self.flux:
            scheduler.set_begin_index(0)
        return timesteps

    def _start_latents(
        self, request: EngineRequest, scheduler: Any, timesteps: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Generator]]:
        """A job's first latents, FLUX's image ids and the job's generators (seed + i), by the
        pipelines' `prepare_latents`."""
        params, generators = request.params, seeded(request.params)
        n, height, width = params.num_images, params.height, params.width
        channels = self.transformer.config.in_channels // (4 if self.flux else 1)
        device = self.device
        if request.init_image is None:
            with scheduler_of(self.pipe, scheduler) as t2i:
                out = t2i.prepare_latents(n, channels, height, width, dtype, device, generators)
            latents, ids = out if self.flux else (out, None)
            return latents, ids, generators
        image = request.init_image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        with scheduler_of(self.img2img, scheduler) as i2i:
            # One row per image as the pipelines get them (row i is encoded with generator i);
            # a list keeps their memory layout, so half-precision convolutions match too.
            pixels = i2i.image_processor.preprocess([image] * n, height=height, width=width)
            pixels, start = pixels.to(torch.float32), timesteps[:1].repeat(n)
            if self.flux:
                latents, ids = i2i.prepare_latents(
                    pixels, start, n, channels, height, width, dtype, device, generators
                )
                return latents, ids, generators
            latents = i2i.prepare_latents(pixels, start, n, 1, dtype, device, generators)
            return latents, None, generators

    def _prepare_one(self, request: EngineRequest, cond: dict[str, torch.Tensor]) -> JobState:
        params = request.params
        scheduler = self.schedulers.make(params.scheduler)
        extra: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            timesteps = self._timesteps(scheduler, params, request.init_image is not None)
            dtype = cond["embeds"].dtype
            latents, ids, generators = self._start_latents(request, scheduler, timesteps, dtype)
            if self.flux:
                # The pipeline's text ids: zeros, one per text token, shared by every row.
                text_ids = torch.zeros(cond["embeds"].shape[1], 3)
                dtype_ids = self.pipe.text_encoder.dtype
                extra = {"img_ids": ids, "txt_ids": text_ids.to(self.device, dtype_ids)}
        return JobState(
            request=request,
            scheduler=scheduler,
            timesteps=timesteps,
            latents=latents,
            generators=generators,
            cfg=self.uses_cfg(params),
            guidance=params.guidance_scale,
            cond=cond,
            # txt_ids / img_ids are shared across a forward's rows: one size per group.
            group=(self.name, params.height, params.width),
            extra=extra,
            warnings=self.texts.warnings(params),
        )

    def forward(self, states: list[JobState]) -> list[torch.Tensor]:
        inputs, timesteps = [], []
        for state in states:
            x = torch.cat([state.latents] * 2) if state.cfg else state.latents
            inputs.append(x)
            # Per-sample timesteps: each row carries its own job's.
            t = state.timestep.expand(x.shape[0])
            timesteps.append(t.to(x.dtype) / 1000 if self.flux else t)
        keys = states[0].cond.keys()
        cond = {key: torch.cat([state.cond[key] for state in states]) for key in keys}
        extra = {}
        if self.flux:
            ids = states[0].extra  # the same for every job of the group
            extra = {"guidance": cond.get("guidance"), "txt_ids": ids["txt_ids"]}
            extra["img_ids"] = ids["img_ids"]
        with torch.inference_mode():
            output = self.transformer(
                hidden_states=torch.cat(inputs),
                timestep=torch.cat(timesteps),
                encoder_hidden_states=cond["embeds"],
                pooled_projections=cond["pooled"],
                return_dict=False,
                **extra,
            )[0]
        pairs = zip(split_rows(output, states), states, strict=True)
        return [guided(rows, state) for rows, state in pairs]

    def decode(self, states: list[JobState]) -> list[list[Image.Image]]:
        params = states[0].request.params
        with torch.inference_mode():
            latents = torch.cat([state.latents for state in states])
            if self.flux:
                latents = self.pipe._unpack_latents(
                    latents, params.height, params.width, self.vae_scale
                )
            vae = self.pipe.vae
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
            image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
            images = self.pipe.image_processor.postprocess(image, output_type="pil")
        out, start = [], 0
        for state in states:
            end = start + state.request.params.num_images
            out.append(images[start:end])
            start = end
        return out
