"""What a request may ask of a model's family: schedulers, size multiples, turbo defaults."""

import pytest

from app.core.errors import InvalidRequest
from app.core.jobs import Job, JobCreate, JobParams
from app.core.models import TINY_FLUX, TINY_MODEL, ModelSpec, model_spec
from app.core.resolve import resolve_request
from app.core.settings import Settings

SETTINGS = Settings(max_side=1024, max_pixels=1024 * 1024, max_steps=50, max_images=4)
UNET = model_spec(SETTINGS, TINY_MODEL)
FLOW = model_spec(SETTINGS, TINY_FLUX)
TURBO = model_spec(SETTINGS, "stabilityai/sd-turbo")
FALLBACK = ModelSpec("some/kandinsky", 512, 30, 4.0, family="pipeline")


def refusal(body: JobCreate, spec: ModelSpec, init_size: tuple[int, int] | None = None) -> dict:
    """The field errors of a refused request, by field."""
    with pytest.raises(InvalidRequest) as caught:
        resolve_request(body, spec, SETTINGS, init_size)
    return {e.field: e.message for e in caught.value.errors}


def test_a_scheduler_is_passed_on_and_absent_means_the_models_own() -> None:
    assert resolve_request(JobCreate(prompt="a", scheduler="dpmpp_2m"), UNET, SETTINGS).scheduler
    assert resolve_request(JobCreate(prompt="a"), UNET, SETTINGS).scheduler is None


def test_an_unknown_scheduler_names_the_field_and_the_choices() -> None:
    errors = refusal(JobCreate(prompt="a", scheduler="karras_magic"), UNET)
    assert list(errors) == ["body.scheduler"]
    assert "choose one of" in errors["body.scheduler"] and "'euler'" in errors["body.scheduler"]


def test_a_flow_model_refuses_unet_schedulers_and_takes_flow_euler() -> None:
    errors = refusal(JobCreate(prompt="a", scheduler="euler"), FLOW)
    assert "['flow_euler']" in errors["body.scheduler"]
    params = resolve_request(JobCreate(prompt="a", scheduler="flow_euler"), FLOW, SETTINGS)
    assert params.scheduler == "flow_euler"
    assert (
        "choose one of"
        in refusal(JobCreate(prompt="a", scheduler="flow_euler"), UNET)["body.scheduler"]
    )


def test_a_fallback_model_refuses_every_scheduler() -> None:
    errors = refusal(JobCreate(prompt="a", scheduler="euler"), FALLBACK)
    assert "one diffusers pipeline call" in errors["body.scheduler"]
    assert resolve_request(JobCreate(prompt="a"), FALLBACK, SETTINGS).scheduler is None


def test_sizes_must_be_multiples_of_the_models_multiple() -> None:
    errors = refusal(JobCreate(prompt="a", width=72, height=88), FLOW)
    assert set(errors) == {"body.width", "body.height"}
    assert "multiple of 16" in errors["body.width"] and "try 64" in errors["body.width"]
    params = resolve_request(JobCreate(prompt="a", width=72, height=88), UNET, SETTINGS)
    assert (params.width, params.height) == (72, 88)
    params = resolve_request(JobCreate(prompt="a", width=80, height=96), FLOW, SETTINGS)
    assert (params.width, params.height) == (80, 96)


def test_image_to_image_rounds_the_init_size_down_to_the_multiple() -> None:
    params = resolve_request(JobCreate(prompt="a"), FLOW, SETTINGS, init_size=(300, 200))
    assert (params.width, params.height) == (288, 192)
    params = resolve_request(JobCreate(prompt="a"), UNET, SETTINGS, init_size=(300, 200))
    assert (params.width, params.height) == (296, 200)
    tiny = resolve_request(JobCreate(prompt="a"), FLOW, SETTINGS, init_size=(40, 40))
    assert (tiny.width, tiny.height) == (64, 64)


def test_turbo_image_to_image_with_default_steps_gets_enough_to_run() -> None:
    body = JobCreate(prompt="a", strength=0.5)
    params = resolve_request(body, TURBO, SETTINGS, init_size=(512, 512))
    assert (params.num_inference_steps, params.denoising_steps) == (2, 1)
    params = resolve_request(JobCreate(prompt="a"), TURBO, SETTINGS, init_size=(512, 512))
    assert (params.num_inference_steps, params.denoising_steps) == (2, 1)  # strength 0.8
    # A model whose default already runs a step keeps it.
    assert resolve_request(body, UNET, SETTINGS, init_size=(64, 64)).num_inference_steps == 20


@pytest.mark.parametrize("strength", [0.3, 1 / 3, 0.7, 0.01 * 7, 0.999])
def test_raised_steps_always_run_a_step(strength: float) -> None:
    body = JobCreate(prompt="a", strength=strength)
    assert resolve_request(body, TURBO, SETTINGS, init_size=(64, 64)).denoising_steps >= 1


def test_explicit_steps_that_run_nothing_stay_refused() -> None:
    body = JobCreate(prompt="a", strength=0.5, num_inference_steps=1)
    assert "no denoising step" in refusal(body, TURBO, (512, 512))["body.strength"]


def test_a_strength_needing_more_than_max_steps_names_strength() -> None:
    errors = refusal(JobCreate(prompt="a", strength=0.01), TURBO, (512, 512))
    assert list(errors) == ["body.strength"] and "100 steps" in errors["body.strength"]


def test_records_stored_before_schedulers_and_warnings_still_read() -> None:
    old = {
        "prompt": "a",
        "negative_prompt": None,
        "mode": "text-to-image",
        "strength": None,
        "width": 64,
        "height": 64,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "num_images": 1,
        "seed": 1,
        "output_format": "png",
        "model": "tiny-sd",
    }
    assert JobParams.model_validate(old).scheduler is None
    job = {"id": "j_1", "status": "queued", "model": "tiny-sd", "created_at": 0, "request": old}
    assert Job.model_validate(job).warnings == []
