"""The step engine's families against diffusers' own pipelines, on tiny random-weight models of
each architecture (SD 1.x, SDXL, SD3, FLUX) built offline: a job's images equal what the
pipeline gives for the same folder, params and seed (max pixel difference <= 2, fp32 CPU)
alone, batched, and joining mid-way among jobs at other timesteps."""

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from PIL import Image, ImageDraw

from app.core.jobs import JobParams
from app.core.models import model_spec
from app.core.settings import Settings
from tests.factories import make_params, max_difference
from worker.engine.loop import Engine
from worker.engine.schedulers import make_scheduler
from worker.engine.state import EngineRequest, Outcome
from worker.families import load_family
from worker.families.base import Family, scheduler_of
from worker.tiny_families import TINY_FAMILIES, build_tiny, ensure_tiny
from worker.tiny_model import ensure_tiny_model

FAMILIES = ("tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux")
UNET_SCHEDULERS = ("euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm")
TOLERANCE = 2  # 8-bit levels: batched matrix products sum in another order, nothing more
CPU = torch.device("cpu")


@dataclass
class Tiny:
    name: str
    family: Family
    text2img: Any  # diffusers' pipelines, loaded apart from the family's
    img2img: Any

    @property
    def flow(self) -> bool:
        return self.family.name == "flow"

    @property
    def flux(self) -> bool:
        return hasattr(self.text2img, "_pack_latents")


def pair(name: str, served: Any, reference: Any) -> Tiny:
    """The family over `served`; diffusers' pipelines over `reference`, a separate copy."""
    reference.set_progress_bar_config(disable=True)
    img2img = AutoPipelineForImage2Image.from_pipe(reference)
    img2img.set_progress_bar_config(disable=True)
    return Tiny(name, load_family(served, CPU), reference, img2img)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="session")
def tiny(model_cache: Path) -> Callable[..., Tiny]:
    """Each tiny model built once per session (`model_cache`), loaded twice: the family's and
    the reference; `tiny(name, dtype)` for another precision."""

    @cache
    def load(name: str, dtype: torch.dtype = torch.float32) -> Tiny:
        folder = (
            ensure_tiny_model(model_cache) if name == "tiny-sd" else ensure_tiny(name, model_cache)
        )
        served, reference = (
            DiffusionPipeline.from_pretrained(folder, dtype=dtype) for _ in range(2)
        )
        return pair(name, served, reference)

    return load


def init_image() -> Image.Image:
    """Not the job's size, so both sides resize it (LANCZOS)."""
    image = Image.new("RGB", (96, 80), (30, 90, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 10, 70, 60), fill=(220, 40, 40))
    draw.rectangle((0, 60, 96, 80), fill=(40, 200, 60))
    return image


def reference(
    model: Tiny, params: JobParams, init: Image.Image | None
) -> tuple[list[Image.Image], list[int]]:
    """diffusers' own call (generators seed + i, the scheduler `make_scheduler` builds): its
    images and the rows of each of its denoiser calls."""
    pipe = model.img2img if init is not None else model.text2img
    n = params.num_images
    kwargs: dict[str, Any] = {
        "prompt": [params.prompt] * n,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "generator": [torch.Generator("cpu").manual_seed(params.seed + i) for i in range(n)],
    }
    if params.negative_prompt is not None:
        kwargs["negative_prompt"] = [params.negative_prompt] * n
    if model.flux:
        kwargs["true_cfg_scale"] = params.guidance_scale
    accepted = inspect.signature(pipe.__call__).parameters
    if "height" in accepted:
        kwargs.update(height=params.height, width=params.width)
    if init is not None:
        size = (params.width, params.height)
        resized = init.resize(size, Image.Resampling.LANCZOS)
        kwargs.update(image=[resized] * n, strength=params.strength)
    scheduler = make_scheduler(params.scheduler, model.text2img.scheduler)
    with scheduler_of(pipe, scheduler), rows_of(denoiser(pipe)) as rows:
        return pipe(**kwargs).images, rows


@contextmanager
def rows_of(denoiser: torch.nn.Module) -> Iterator[list[int]]:
    """The rows of every call of `denoiser` (a U-Net or a transformer)."""
    rows: list[int] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        rows.append((args[0] if args else kwargs["hidden_states"]).shape[0])

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def denoiser(pipe: Any) -> torch.nn.Module:
    return getattr(pipe, "unet", None) or pipe.transformer


@dataclass
class Calls:
    denoiser_rows: list[int]  # rows of each denoiser call
    forwards: list[list[str]]  # job ids of each family forward


@contextmanager
def counting(family: Family) -> Iterator[Calls]:
    """Record every denoiser call and which jobs each forward carried."""
    with rows_of(denoiser(family.pipe)) as rows:
        calls = Calls(rows, [])
        real = family.forward

        def forward(states: list) -> list:
            calls.forwards.append([state.job_id for state in states])
            return real(states)

        family.forward = forward
        try:
            yield calls
        finally:
            del family.forward


def run(
    model: Tiny, first: dict[str, JobParams], later: dict[str, JobParams], wait: int = 2
) -> tuple[dict[str, Outcome], Calls]:
    """Submit `first`, iterate `wait` times, submit `later`, run to the end."""
    engine = Engine(model.family)
    outcomes: list[Outcome] = []
    with counting(model.family) as calls:
        for jobs in (first, later):
            for job_id, params in jobs.items():
                init = init_image() if params.mode == "image-to-image" else None
                engine.submit(EngineRequest(job_id, params, init))
            if jobs is first:
                for _ in range(wait):
                    outcomes += engine.iterate()
        outcomes += engine.run()
    by_id = {outcome.job_id: outcome for outcome in outcomes}
    assert set(by_id) == set(first) | set(later)
    return by_id, calls


@dataclass
class Compared:
    differences: dict[str, int]  # max pixel difference per job
    steps: dict[str, int]  # denoising steps diffusers ran per job
    rows: dict[str, int]  # denoiser rows diffusers ran per job, all steps


def assert_as_diffusers(model: Tiny, jobs: dict[str, JobParams], outcomes: dict) -> Compared:
    compared = Compared({}, {}, {})
    for job_id, params in jobs.items():
        outcome = outcomes[job_id]
        assert outcome.ok, outcome.error
        init = init_image() if params.mode == "image-to-image" else None
        images, rows = reference(model, params, init)
        compared.differences[job_id] = max_difference(outcome.images, images)
        # diffusers runs FLUX's true CFG as a second call a step.
        per_step = 2 if model.family.uses_cfg(params) and model.flux else 1
        compared.steps[job_id] = len(rows) // per_step
        compared.rows[job_id] = sum(rows)
    print(model.name, "max pixel differences", compared.differences)
    assert max(compared.differences.values()) <= TOLERANCE, compared.differences
    return compared


@pytest.mark.parametrize("mode", ["text-to-image", "image-to-image"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_job_alone_equals_diffusers(tiny: Callable[..., Tiny], name: str, mode: str) -> None:
    model = tiny(name)
    if mode == "text-to-image":  # guided, with a negative prompt (FLUX: true CFG)
        params = make_params(negative_prompt="blurry", guidance_scale=5.0, seed=7)
    else:  # guided without one (SDXL: zero negatives; SD3: ""; FLUX: embedded guidance only)
        params = make_params(mode=mode, strength=0.7, num_inference_steps=5, num_images=2)
    outcomes, calls = run(model, {"job": params}, {})
    compared = assert_as_diffusers(model, {"job": params}, outcomes)
    # diffusers' steps and rows, in one denoiser call a step (FLUX's true CFG included).
    assert len(calls.denoiser_rows) == compared.steps["job"]
    assert sum(calls.denoiser_rows) == compared.rows["job"]


@pytest.mark.parametrize("name", FAMILIES)
def test_jobs_joining_mid_way_among_others_equal_diffusers(
    tiny: Callable[..., Tiny], name: str
) -> None:
    model = tiny(name)
    scheduler = "flow_euler" if model.flow else "dpmpp_2m"
    first = {
        # Guided with a negative prompt: SD3 / U-Net CFG rows, FLUX true CFG.
        "guided": make_params(
            seed=1,
            num_inference_steps=6,
            guidance_scale=5.0,
            negative_prompt="dark",
            scheduler=scheduler,
        ),
        "unguided": make_params(
            seed=2, num_inference_steps=4, guidance_scale=1.0, num_images=2, prompt="a blue square"
        ),
    }
    later = {
        "img2img": make_params(
            seed=3,
            mode="image-to-image",
            strength=0.6,
            num_inference_steps=8,
            guidance_scale=4.0,
            negative_prompt="red",
        ),
        "no_negative": make_params(seed=4, num_inference_steps=5, guidance_scale=6.0),
        # Another size: a group of its own.
        "wide": make_params(seed=5, width=128, num_inference_steps=3, guidance_scale=3.0),
    }
    outcomes, calls = run(model, first, later)
    compared = assert_as_diffusers(model, first | later, outcomes)
    forwards = [set(batch) for batch in calls.forwards]
    # Guidance 1 and > 1 (FLUX: true CFG and not) in one forward; newcomers joined the
    # earlier jobs' forwards mid-way; the other size ran in forwards of its own.
    assert any({"guided", "unguided"} <= batch for batch in forwards)
    assert any({"guided", "img2img", "no_negative"} <= batch for batch in forwards)
    assert all(batch == {"wide"} for batch in forwards if "wide" in batch)
    assert len(calls.denoiser_rows) == len(calls.forwards)
    assert len(calls.forwards) < sum(compared.steps.values())
    assert sum(calls.denoiser_rows) == sum(compared.rows.values())


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl"])
def test_unet_jobs_with_different_schedulers_share_forwards(
    tiny: Callable[..., Tiny], name: str
) -> None:
    model = tiny(name)
    jobs = {
        scheduler: make_params(
            scheduler=scheduler,
            seed=10 + i,
            num_inference_steps=3 + i % 4,
            guidance_scale=(1.0, 7.5)[i % 2],
            negative_prompt=("green" if i % 3 == 0 else None),
        )
        for i, scheduler in enumerate(UNET_SCHEDULERS)
    }
    first = dict(list(jobs.items())[:4])
    later = dict(list(jobs.items())[4:])
    outcomes, calls = run(model, first, later)
    compared = assert_as_diffusers(model, jobs, outcomes)
    assert max(len(batch) for batch in calls.forwards) == len(jobs)
    assert len(calls.forwards) < sum(compared.steps.values())
    assert sum(calls.denoiser_rows) == sum(compared.rows.values())


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_flow_family_facts(tiny: Callable[..., Tiny], name: str) -> None:
    family = tiny(name).family
    assert (family.name, family.native_size, family.size_multiple) == ("flow", 64, 16)
    # The pipelines' own default T5 lengths: every job of a model encodes to the same length.
    assert family.max_sequence_length == {"tiny-sd3": 256, "tiny-flux": 512}[name]


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_flow_sizes_are_checked_before_any_tensor(tiny: Callable[..., Tiny], name: str) -> None:
    model = tiny(name)
    jobs = {
        "odd": make_params(width=72),
        "img2img_without_image": make_params(mode="image-to-image", strength=0.5),
        "unet_scheduler": make_params(scheduler="euler"),
    }
    if name == "tiny-sd3":
        jobs["too_big"] = make_params(width=1024)  # beyond SD3's positional-embedding grid
    engine = Engine(model.family)
    for job_id, params in jobs.items():
        engine.submit(EngineRequest(job_id, params))
    outcomes = {o.job_id: o for o in engine.run()}
    assert {o.error[0] for o in outcomes.values() if o.error} == {"invalid_input"}
    assert len(outcomes) == len(jobs)
    assert "multiple of 16" in outcomes["odd"].error[1]


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_flow_prompts_past_an_encoders_length_are_said_on_the_job(
    tiny: Callable[..., Tiny], name: str
) -> None:
    model = tiny(name)
    fits_t5 = "a red circle " * 10  # 102 CLIP tokens, 101 T5 tokens
    too_long = "a red circle " * 60  # 601 T5 tokens: past SD3's 256 and FLUX's 512
    jobs = {
        "short": make_params(num_inference_steps=1),
        "clip": make_params(prompt=fits_t5, num_inference_steps=1),
        "both": make_params(prompt=too_long, negative_prompt=fits_t5, num_inference_steps=1),
    }
    engine = Engine(model.family)
    for job_id, params in jobs.items():
        engine.submit(EngineRequest(job_id, params))
    outcomes = {o.job_id: o for o in engine.run()}

    def said(job_id: str) -> set[tuple[str, str]]:
        # "<field> is longer than the <encoder> text encoder's <n> tokens; ..."
        return {(w.split()[0], w.split()[5]) for w in outcomes[job_id].warnings}

    assert said("short") == set()
    assert said("clip") == {("prompt", "CLIP")}
    assert said("both") == {("prompt", "CLIP"), ("prompt", "T5"), ("negative_prompt", "CLIP")}


def variant(base: Tiny, name: str) -> Tiny:
    """`base` with one part changed, for code paths the tiny models do not take."""
    components = dict(base.text2img.components)
    options = {}
    if name == "sdxl-no-force-zeros":  # a missing negative prompt encodes "", not zeros
        options["force_zeros_for_empty_prompt"] = False
    elif name == "flux-schnell-like":  # no guidance embedding: guidance only as true CFG
        config = {**base.text2img.transformer.config, "guidance_embeds": False}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            components["transformer"] = type(base.text2img.transformer).from_config(config)
    else:  # SD3 with resolution-dependent shift (mu), as the scheduler config may ask
        scheduler = base.text2img.scheduler
        components["scheduler"] = type(scheduler).from_config(
            scheduler.config, use_dynamic_shifting=True
        )
    return pair(name, *(type(base.text2img)(**components, **options) for _ in range(2)))


VARIANTS = {
    "sdxl-no-force-zeros": "tiny-sdxl",
    "flux-schnell-like": "tiny-flux",
    "sd3-dynamic-shift": "tiny-sd3",
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_equal_diffusers(tiny: Callable[..., Tiny], name: str) -> None:
    model = variant(tiny(VARIANTS[name]), name)
    first = {
        "guided": make_params(
            seed=1, num_inference_steps=5, guidance_scale=4.0, negative_prompt="x"
        ),
        "unguided": make_params(seed=2, num_inference_steps=4, guidance_scale=1.0),
    }
    later = {
        "img2img": make_params(seed=3, mode="image-to-image", strength=0.5, num_inference_steps=6),
        "wide": make_params(seed=4, width=128, num_inference_steps=2, guidance_scale=2.0),
    }
    outcomes, calls = run(model, first, later)
    compared = assert_as_diffusers(model, first | later, outcomes)
    assert any({"guided", "unguided", "img2img"} <= set(batch) for batch in calls.forwards)
    assert sum(calls.denoiser_rows) == sum(compared.rows.values())


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_a_flow_job_alone_in_bfloat16_equals_diffusers(
    tiny: Callable[..., Tiny], name: str
) -> None:
    """The family runs in the pipeline's own dtype, down to the memory layout of the init
    image's pixels (which picks the convolution kernels). Batched, bfloat16 rounds otherwise."""
    model = tiny(name, torch.bfloat16)
    assert model.family.dtype == torch.bfloat16
    jobs = {
        "text": make_params(seed=1, num_inference_steps=3, guidance_scale=4.0, negative_prompt="x"),
        "image": make_params(seed=2, mode="image-to-image", strength=0.6, num_inference_steps=4),
    }
    for job_id, params in jobs.items():
        outcomes, _ = run(model, {job_id: params}, {})
        assert_as_diffusers(model, {job_id: params}, outcomes)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_tiny_models_build_the_same_every_time_and_say_what_they_are(
    model_cache: Path, tmp_path: Path, name: str
) -> None:
    built = ensure_tiny(name, model_cache)
    again = build_tiny(name, tmp_path / name)
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((built / f).read_bytes() == (again / f).read_bytes() for f in files)
    # What the API reads from the folder alone: family, native size, size multiple.
    spec = model_spec(Settings(model=str(built)))
    family, multiple = ("unet", 8) if name == "tiny-sdxl" else ("flow", 16)
    assert (spec.family, spec.native_size, spec.size_multiple) == (family, 64, multiple)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl"])
def test_unet_texts_are_encoded_once_and_kept_embeddings_equal_diffusers(
    tiny: Callable[..., Tiny], name: str
) -> None:
    model = tiny(name)
    family: Any = model.family
    encoded: list[list[tuple]] = []
    real = family.texts.prompts.encode

    def encode(texts: list[tuple]) -> list:
        encoded.append(texts)
        return real(texts)

    family.texts.prompts.encode = encode
    try:
        # Two jobs share a prompt and a negative prompt: each distinct text is encoded once.
        prompt, negative = f"a kept prompt for {name}", f"a kept negative for {name}"
        first = {
            "a": make_params(prompt=prompt, negative_prompt=negative, guidance_scale=5.0, seed=1),
            "b": make_params(prompt=prompt, negative_prompt=negative, guidance_scale=3.0, seed=2),
        }
        outcomes, _ = run(model, first, {})
        assert encoded == [[(prompt, ()), (negative, ())]]  # no text-encoder adapters
        assert_as_diffusers(model, first, outcomes)
        # A later job with both texts kept encodes nothing, and still equals diffusers.
        later = {"c": make_params(prompt=prompt, negative_prompt=negative, num_images=2, seed=3)}
        outcomes, _ = run(model, later, {})
        assert encoded == [[(prompt, ()), (negative, ())]]
        assert_as_diffusers(model, later, outcomes)
    finally:
        family.texts.prompts.encode = real
