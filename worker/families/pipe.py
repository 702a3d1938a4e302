"""The fallback: any other pipeline `AutoPipelineForText2Image` loads runs as one call per job.

No step-level batching (its loop is the pipeline's own), but the same engine interface: the
job is prepared as a state of one "step" whose forward is the whole call."""

from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from PIL import Image

from app.core.jobs import JobParams
from worker.engine.state import EngineRequest, JobState
from worker.families.base import InvalidInput, NoAdapters, plain_only, seeded


class _Done:
    """A scheduler stand-in: the pipeline call already ran every step, so the step hands its
    output (the images, as a tensor-free list) straight back."""

    def step(self, images: Any, _t: Any, _latents: Any, return_dict: bool = False) -> tuple:
        return (images,)


class PipelineFamily(NoAdapters):
    """One pipeline call per job, for architectures the engine has no family for."""

    name = "pipeline"

    def __init__(self, pipe: DiffusionPipeline, device: torch.device) -> None:
        self.pipe = pipe
        self.device = device
        try:
            self.img2img: DiffusionPipeline | None = AutoPipelineForImage2Image.from_pipe(pipe)
        except (ValueError, KeyError):
            self.img2img = None
        self.vae_scale = getattr(pipe, "vae_scale_factor", 8)
        self.size_multiple = self.vae_scale
        self.native_size = (
            getattr(getattr(pipe, "unet", None), "config", {}).get("sample_size", 64)
            * self.vae_scale
        )

    def check(self, params: JobParams, init_image: Image.Image | None) -> None:
        plain_only(params, self.name)
        if params.mode == "image-to-image" and self.img2img is None:
            raise InvalidInput("this model has no image-to-image pipeline")

    def cost(self, params: JobParams) -> int:
        return params.num_images * params.width * params.height // self.vae_scale**2

    def prepare(self, requests: list[EngineRequest]) -> list[JobState]:
        return [self._state(request) for request in requests]

    def _state(self, request: EngineRequest) -> JobState:
        return JobState(
            request=request,
            scheduler=_Done(),
            timesteps=torch.zeros(1),
            latents=torch.zeros(request.params.num_images),
            generators=seeded(request.params),
            cfg=False,
            guidance=request.params.guidance_scale,
            cond={},
            group=(self.name, request.job_id),  # never batched with another job
        )

    def forward(self, states: list[JobState]) -> list[Any]:
        return [self._call(state) for state in states]

    def _call(self, state: JobState) -> list[Image.Image]:
        params = state.request.params
        kwargs: dict[str, Any] = {
            "prompt": [params.prompt] * params.num_images,
            "negative_prompt": None
            if params.negative_prompt is None
            else [params.negative_prompt] * params.num_images,
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "generator": state.generators,
        }
        pipe = self.pipe
        if state.request.init_image is not None and self.img2img is not None:
            pipe = self.img2img
            size = (params.width, params.height)
            image = state.request.init_image.convert("RGB").resize(size)
            kwargs |= {"image": [image] * params.num_images, "strength": params.strength}
        else:
            kwargs |= {"width": params.width, "height": params.height}
        with torch.inference_mode():
            return pipe(**kwargs).images

    def decode(self, states: list[JobState]) -> list[list[Image.Image]]:
        return [state.latents for state in states]  # the images the call made
