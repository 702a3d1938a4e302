"""What a client sees of model families through HTTP: schedulers, size multiples, turbo
defaults, and the /v1/models fields that tell them. No worker: the API never loads weights."""

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.api.main import create_app
from app.api.openai_schemas import ImageGenerate
from app.api.routes.images import to_job
from app.core.models import TINY_FLUX, TINY_MODEL
from app.core.settings import Settings
from tests.api.conftest import assert_problem, nothing_written
from tests.api.test_jobs_api import png_b64

TURBO = "stabilityai/sd-turbo"
FLUX = "black-forest-labs/FLUX.1-schnell"
SERVED = [TINY_MODEL, TINY_FLUX, TURBO, FLUX]


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    served = settings.model_copy(update={"models": SERVED, "sync_wait_timeout": 0.2})
    with TestClient(create_app(served)) as client:
        yield client


def submit(client: TestClient, **body: object) -> dict:
    response = client.post("/v1/jobs", json={"prompt": "a red circle", **body})
    assert response.status_code == 202, response.text
    return response.json()


def refused(client: TestClient, **body: object) -> dict[str, str]:
    response = client.post("/v1/jobs", json={"prompt": "a red circle", **body})
    return {e["field"]: e["message"] for e in assert_problem(response, 422)["errors"]}


def test_a_scheduler_is_echoed_in_the_jobs_request(client: TestClient) -> None:
    job = submit(client, scheduler="dpmpp_2m_karras")
    assert job["request"]["scheduler"] == "dpmpp_2m_karras"
    assert client.get(f"/v1/jobs/{job['id']}").json()["request"]["scheduler"] == "dpmpp_2m_karras"
    assert submit(client)["request"]["scheduler"] is None  # the model's own
    assert submit(client)["warnings"] == []


def test_an_unknown_scheduler_is_a_422_naming_scheduler(client: TestClient, redis: Redis) -> None:
    errors = refused(client, scheduler="warp_drive")
    assert list(errors) == ["body.scheduler"] and "choose one of" in errors["body.scheduler"]
    assert nothing_written(redis)  # nothing queued


def test_a_flow_model_refuses_euler_and_takes_flow_euler(client: TestClient) -> None:
    errors = refused(client, model=TINY_FLUX, scheduler="euler")
    assert "['flow_euler']" in errors["body.scheduler"]
    job = submit(client, model=TINY_FLUX, scheduler="flow_euler")
    assert (job["model"], job["request"]["scheduler"]) == (TINY_FLUX, "flow_euler")


def test_sizes_follow_the_models_multiple(client: TestClient) -> None:
    errors = refused(client, model=TINY_FLUX, width=72, height=64)
    assert list(errors) == ["body.width"] and "multiple of 16" in errors["body.width"]
    job = submit(client, model=TINY_MODEL, width=72, height=64)  # a U-Net takes multiples of 8
    assert (job["request"]["width"], job["request"]["height"]) == (72, 64)
    job = submit(client, model=TINY_FLUX, width=80, height=96)
    assert (job["request"]["width"], job["request"]["height"]) == (80, 96)


def test_flow_image_to_image_rounds_the_init_size_down(client: TestClient) -> None:
    job = submit(client, model=TINY_FLUX, init_image=png_b64((100, 72)))
    assert (job["request"]["width"], job["request"]["height"]) == (96, 64)


def test_sd_turbo_image_to_image_works_with_default_steps(client: TestClient) -> None:
    job = submit(client, model=TURBO, init_image=png_b64((64, 64)), strength=0.5)
    assert job["request"]["num_inference_steps"] == 2  # 1 by default: 2 x 0.5 runs one step
    errors = refused(
        client, model=TURBO, init_image=png_b64((64, 64)), strength=0.5, num_inference_steps=1
    )
    assert "no denoising step" in errors["body.strength"]  # asked for explicitly: refused


def test_models_list_family_multiple_schedulers_modes_and_engine(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert list(models) == SERVED
    sd, flux = models[TINY_MODEL], models[FLUX]
    assert (sd["family"], sd["size_multiple"], sd["engine"]) == ("unet", 8, "step")
    assert {"euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm"} == set(
        sd["schedulers"]
    )
    assert (flux["family"], flux["size_multiple"], flux["schedulers"]) == (
        "flow",
        16,
        ["flow_euler"],
    )
    assert (flux["native_width"], flux["default_steps"], flux["default_guidance_scale"]) == (
        1024,
        4,
        0.0,
    )
    assert sd["modes"] == ["text-to-image", "image-to-image", "inpainting"]
    assert flux["modes"] == ["text-to-image", "image-to-image"]
    assert flux["loras"] == []  # flow models take no adapters yet
    for model in models.values():
        assert {"default", "limits", "queue_length", "live_workers"} <= set(model)  # as before


def test_openai_requests_pass_the_scheduler_on() -> None:
    body = ImageGenerate(prompt="a", model=TINY_FLUX, scheduler="flow_euler", size="80x96")
    job = to_job(body)
    assert (job.scheduler, job.width, job.height) == ("flow_euler", 80, 96)


def test_openai_refusals_name_scheduler_and_size(client: TestClient, redis: Redis) -> None:
    generate = "/v1/images/generations"
    cases = [
        ({"model": TINY_FLUX, "scheduler": "euler"}, "scheduler", "flow_euler"),
        ({"model": TINY_FLUX, "size": "72x64"}, "size", "multiple of 16"),
    ]
    for extra, param, said in cases:
        response = client.post(generate, json={"prompt": "a", **extra})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, "invalid_value") and said in error[
            "message"
        ]
    assert nothing_written(redis)


def test_openai_job_carries_the_scheduler(client: TestClient) -> None:
    started = time.monotonic()
    response = client.post(
        "/v1/images/generations",
        json={"prompt": "a", "model": TINY_FLUX, "scheduler": "flow_euler", "size": "80x80"},
    )
    assert response.status_code == 504 and time.monotonic() - started < 5  # no worker here
    job = client.get(f"/v1/jobs/{response.headers['x-job-id']}").json()
    assert (job["request"]["scheduler"], job["request"]["width"]) == ("flow_euler", 80)
