"""Inpainting in the step engine against diffusers' own inpainting pipelines, on tiny
random-weight models built offline: an ordinary U-Net (masked latent blending) and an
inpainting checkpoint's 9-channel U-Net. A job's images equal diffusers' (plus its
`apply_overlay`) within 2 levels (fp32 CPU, batched sums in another order), alone and batched
with image-to-image and text-to-image jobs in the same forwards."""

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForInpainting,
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw

from app.core.jobs import JobParams
from tests.factories import make_params, max_difference
from worker.engine.loop import Engine
from worker.engine.schedulers import make_scheduler
from worker.engine.state import EngineRequest, Outcome
from worker.families import load_family
from worker.families.base import InvalidInput, scheduler_of
from worker.tiny_families import ensure_tiny
from worker.tiny_model import ensure_tiny_model

TOLERANCE = 2
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("single_thread")


def scene() -> Image.Image:
    """Not the job's size, so both sides resize it."""
    image = Image.new("RGB", (96, 80), (240, 240, 240))
    ImageDraw.Draw(image).ellipse((10, 10, 60, 60), fill=(220, 30, 30))
    return image


def right_half(size: tuple[int, int] = (96, 80)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((size[0] // 2, 0, size[0], size[1]), fill=255)
    return mask


@pytest.fixture(scope="module")
def pipes(model_cache: Path) -> Any:
    """(served, reference) loaded apart, per model name; "tiny-sd-inpaint" is tiny-sd with a
    random 9-channel U-Net (an inpainting checkpoint's shape)."""

    @cache
    def load(name: str) -> tuple[Any, Any]:
        if name == "tiny-sdxl":
            folder = ensure_tiny(name, model_cache)
        else:
            folder = ensure_tiny_model(model_cache)
        loaded = [DiffusionPipeline.from_pretrained(folder) for _ in range(2)]
        if name == "tiny-sd-inpaint":
            config = dict(loaded[0].unet.config) | {"in_channels": 9}
            torch.manual_seed(3)
            unet = UNet2DConditionModel.from_config(config)
            loaded = [
                StableDiffusionInpaintPipeline(**(p.components | {"unet": unet})) for p in loaded
            ]
        for pipe in loaded:
            pipe.set_progress_bar_config(disable=True)
        return loaded[0], loaded[1]

    return load


def inpaint(params: JobParams, **changes: Any) -> JobParams:
    base = {"mode": "inpainting", "strength": 1.0, "num_inference_steps": 5, "num_images": 2}
    return params.model_copy(update=base | changes)


def reference(pipe: Any, params: JobParams, mask: Image.Image) -> list[Image.Image]:
    """diffusers' inpainting call with the same generators and scheduler, then its overlay."""
    inpainter = AutoPipelineForInpainting.from_pipe(pipe)
    inpainter.set_progress_bar_config(disable=True)
    n, size = params.num_images, (params.width, params.height)
    init = scene().resize(size, Image.Resampling.LANCZOS)
    scheduler = make_scheduler(params.scheduler, pipe.scheduler)
    with scheduler_of(inpainter, scheduler):
        images = inpainter(
            prompt=[params.prompt] * n,
            image=init,
            mask_image=mask,
            height=params.height,
            width=params.width,
            strength=params.strength,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(params.seed + i) for i in range(n)],
        ).images
    overlay_mask = mask.resize(size, Image.Resampling.NEAREST)
    return [inpainter.image_processor.apply_overlay(overlay_mask, init, i) for i in images]


def engine_run(pipe: Any, jobs: dict[str, JobParams], wait: int = 0) -> dict[str, Outcome]:
    """The jobs through one engine; those after the first join `wait` iterations later."""
    engine = Engine(load_family(pipe, CPU))
    outcomes: list[Outcome] = []
    for i, (job_id, params) in enumerate(jobs.items()):
        init = scene() if params.mode != "text-to-image" else None
        mask = right_half() if params.mode == "inpainting" else None
        engine.submit(EngineRequest(job_id, params, init, mask=mask))
        if i == 0:
            for _ in range(wait):
                outcomes += engine.iterate()
    outcomes += engine.run()
    by_id = {outcome.job_id: outcome for outcome in outcomes}
    assert all(outcome.ok for outcome in by_id.values()), by_id
    return by_id


@pytest.mark.parametrize(
    ("model", "scheduler", "strength"),
    [
        ("tiny-sd", None, 1.0),
        ("tiny-sd", "euler_a", 0.6),  # ancestral: draws from the generators at every step
        ("tiny-sd", "ddim", 0.8),
        ("tiny-sdxl", None, 1.0),
        ("tiny-sd-inpaint", None, 1.0),
        ("tiny-sd-inpaint", "dpmpp_2m", 0.7),
    ],
)
def test_an_inpainting_job_alone_equals_diffusers(
    pipes: Any, model: str, scheduler: str | None, strength: float
) -> None:
    served, ref = pipes(model)
    params = inpaint(make_params(model=model, scheduler=scheduler), strength=strength)
    outcome = engine_run(served, {"job": params})["job"]
    theirs = reference(ref, params, right_half())
    assert max_difference(outcome.images, theirs) <= TOLERANCE
    # Outside the mask the init image's own pixels, exactly.
    init = np.asarray(scene().resize((64, 64), Image.Resampling.LANCZOS), np.int16)
    for image in outcome.images:
        assert np.array_equal(np.asarray(image, np.int16)[:, :32], init[:, :32])
        assert np.abs(np.asarray(image, np.int16)[:, 32:] - init[:, 32:]).mean() > 10


def test_inpainting_batches_with_other_jobs_and_each_gets_its_own_images(pipes: Any) -> None:
    served, ref = pipes("tiny-sd")
    jobs = {
        "inpaint": inpaint(make_params(seed=5)),
        "img2img": make_params(mode="image-to-image", strength=0.8, num_inference_steps=6),
        "text": make_params(seed=9, num_inference_steps=6),
        "inpaint-late": inpaint(make_params(seed=11, prompt="a blue square"), strength=0.7),
    }
    forwards: list[int] = []
    family = load_family(served, CPU)
    real = family.forward
    family.forward = lambda states: (forwards.append(len(states)), real(states))[1]
    engine = Engine(family)
    outcomes = []
    for i, (job_id, params) in enumerate(jobs.items()):
        init = scene() if params.mode != "text-to-image" else None
        mask = right_half() if params.mode == "inpainting" else None
        engine.submit(EngineRequest(job_id, params, init, mask=mask))
        if i == 2:
            outcomes += engine.iterate() + engine.iterate()  # the last joins mid-way
    outcomes += engine.run()
    by_id = {o.job_id: o for o in outcomes}
    assert max(forwards) == 4  # all four shared forwards
    for job_id, params in jobs.items():
        alone = engine_run(ref, {job_id: params})[job_id]
        assert max_difference(by_id[job_id].images, alone.images) <= TOLERANCE, job_id
    theirs = reference(ref, jobs["inpaint-late"], right_half())
    assert max_difference(by_id["inpaint-late"].images, theirs) <= TOLERANCE


def test_an_inpainting_checkpoint_refuses_jobs_without_a_mask(pipes: Any) -> None:
    family = load_family(pipes("tiny-sd-inpaint")[0], CPU)
    with pytest.raises(InvalidInput, match="inpainting checkpoint"):
        family.check(make_params(), None)
    family.check(inpaint(make_params()), scene())
