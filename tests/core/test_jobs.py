import re

import pytest
from pydantic import ValidationError

from app.core.errors import InvalidRequest
from app.core.jobs import JOB_ID_PATTERN, MAX_SEED, JobCreate, JobStatus, new_job_id
from app.core.models import ModelSpec
from app.core.resolve import resolve_request, select_model
from app.core.settings import Settings

SPEC = ModelSpec(name="tiny-sd", native_size=64, default_steps=20, default_guidance_scale=7.5)
SETTINGS = Settings(max_side=512, max_pixels=256 * 256, max_steps=50, max_images=4)


def bad_fields(exc: InvalidRequest) -> set[str]:
    return {e.field for e in exc.errors}


def test_terminal_states() -> None:
    assert {s for s in JobStatus if s.is_terminal()} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    }


def test_job_ids_are_unique_sortable_and_url_safe() -> None:
    ids = [new_job_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(re.fullmatch(JOB_ID_PATTERN, i) for i in ids)
    assert ids[0][:8] <= ids[-1][:8]  # the time part never goes backwards


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "   "},
        {"prompt": "x" * 2001},
        {"prompt": "a", "unknown": 1},
        {"prompt": "a", "width": 100},
        {"prompt": "a", "width": 32},
        {"prompt": "a", "strength": 0},
        {"prompt": "a", "strength": 1.5},
        {"prompt": "a", "guidance_scale": 31},
        {"prompt": "a", "seed": -1},
        {"prompt": "a", "seed": MAX_SEED + 1},
        {"prompt": "a", "num_images": 0},
        {"prompt": "a", "output_format": "gif"},
        {"prompt": "a", "num_inference_steps": "5"},
        {"prompt": "a", "negative_prompt": "n" * 2001},
    ],
)
def test_static_bounds_are_enforced(body: dict) -> None:
    with pytest.raises(ValidationError):
        JobCreate.model_validate(body)


def test_prompt_is_trimmed() -> None:
    assert JobCreate(prompt="  a cat \n").prompt == "a cat"


def test_defaults_are_resolved_and_seed_drawn() -> None:
    params = resolve_request(JobCreate(prompt="a"), SPEC, SETTINGS)
    assert (params.width, params.height) == (64, 64)
    assert (params.num_inference_steps, params.guidance_scale) == (20, 7.5)
    assert params.mode == "text-to-image" and params.strength is None
    assert 0 <= params.seed <= MAX_SEED
    assert params.output_format == "png" and params.model == "tiny-sd"


def test_explicit_values_are_kept() -> None:
    body = {
        "prompt": "a",
        "width": 128,
        "height": 96,
        "num_inference_steps": 5,
        "guidance_scale": 0,
        "seed": 7,
        "num_images": 3,
        "output_format": "webp",
    }
    params = resolve_request(JobCreate.model_validate(body), SPEC, SETTINGS)
    assert params.model_dump(include=set(body)) == body


def test_settings_bounds_name_each_bad_field() -> None:
    body = JobCreate(prompt="a", width=1024, height=512, num_inference_steps=51, num_images=5)
    with pytest.raises(InvalidRequest) as caught:
        resolve_request(body, SPEC, SETTINGS)
    assert bad_fields(caught.value) == {"body.width", "body.num_inference_steps", "body.num_images"}


def test_pixel_budget() -> None:
    with pytest.raises(InvalidRequest, match="width\\*height"):
        resolve_request(JobCreate(prompt="a", width=512, height=512), SPEC, SETTINGS)


def test_strength_only_with_init_image() -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_request(JobCreate(prompt="a", strength=0.5), SPEC, SETTINGS)
    assert bad_fields(caught.value) == {"body.strength"}


def test_image_to_image_keeps_aspect_and_needs_a_step() -> None:
    params = resolve_request(JobCreate(prompt="a"), SPEC, SETTINGS, init_size=(300, 200))
    assert params.mode == "image-to-image" and params.strength == 0.8
    assert (params.width, params.height) == (296, 200)
    assert params.denoising_steps == 16
    big = resolve_request(JobCreate(prompt="a"), SPEC, SETTINGS, init_size=(2000, 1000))
    assert big.width * big.height <= SETTINGS.max_pixels and big.width <= 512
    body = JobCreate(prompt="a", strength=0.04, num_inference_steps=20)
    with pytest.raises(InvalidRequest, match="no denoising step"):
        resolve_request(body, SPEC, SETTINGS, init_size=(64, 64))


def test_seed_range_covers_every_image() -> None:
    with pytest.raises(InvalidRequest, match="seed"):
        resolve_request(JobCreate(prompt="a", seed=MAX_SEED, num_images=2), SPEC, SETTINGS)
    drawn = resolve_request(JobCreate(prompt="a", num_images=4), SPEC, SETTINGS)
    assert drawn.seed + 3 <= MAX_SEED


def test_unknown_model_is_refused() -> None:
    assert select_model(None, {"tiny-sd": SPEC}, "tiny-sd") is SPEC
    with pytest.raises(InvalidRequest, match="not a served model"):
        select_model("sdxl", {"tiny-sd": SPEC}, "tiny-sd")


def test_huge_num_images_is_a_field_error_not_a_crash() -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_request(JobCreate(prompt="a", num_images=5_000_000_000), SPEC, SETTINGS)
    assert bad_fields(caught.value) == {"body.num_images"}
