"""Images through the API with S3 storage; result expiry as clients see it."""

import time

import httpx
from fastapi.testclient import TestClient
from redis import Redis

from app.api.main import create_app
from app.core.jobs import ImageInfo, image_url
from app.core.settings import Settings
from app.core.storage import ObjectNotFound, image_key
from tests.api.conftest import assert_problem


def finish_by_hand(client: TestClient, job_id: str, data: bytes) -> None:
    """Play the worker's part (the model is beside the point here)."""
    services = client.app.state.services
    services.store.start(job_id, 20)
    services.storage.put(image_key(job_id, 0, "png", attempt=1), data, "image/png")
    info = ImageInfo(
        url=image_url(job_id, 0), width=64, height=64, seed=1, content_type="image/png"
    )
    services.store.succeed(job_id, [info])


def test_s3_images_redirect_to_an_expiring_signed_url(s3_settings: Settings, redis: Redis) -> None:
    with TestClient(create_app(s3_settings.model_copy(update={"url_ttl": 120}))) as client:
        job = client.post("/v1/jobs", json={"prompt": "a"}).json()
        finish_by_hand(client, job["id"], b"\x89PNG-bytes")
        polled = client.get(f"/v1/jobs/{job['id']}").json()
        assert polled["images"][0]["url"] == f"/v1/jobs/{job['id']}/images/0"  # stable
        response = client.get(polled["images"][0]["url"], follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["cache-control"] == "no-store"
        signed = response.headers["location"]
        assert signed.startswith(s3_settings.s3_endpoint_url) and "X-Amz-Expires=120" in signed
        fetched = httpx.get(signed)
        assert fetched.status_code == 200 and fetched.content == b"\x89PNG-bytes"
        assert_problem(client.get(f"/v1/jobs/{job['id']}/images/1"), 404)


def test_expired_jobs_answer_404_and_their_files_are_deleted(
    settings: Settings, redis: Redis
) -> None:
    quick = settings.model_copy(update={"result_ttl": 1, "sweep_interval": 0.1})
    with TestClient(create_app(quick)) as client:
        storage = client.app.state.services.storage
        job_id = client.post("/v1/jobs", json={"prompt": "a"}).json()["id"]
        finish_by_hand(client, job_id, b"png")
        assert client.get(f"/v1/jobs/{job_id}/images/0").content == b"png"
        deadline = time.monotonic() + 10
        while client.get(f"/v1/jobs/{job_id}").status_code != 404:
            assert time.monotonic() < deadline, "the record never expired"
            time.sleep(0.1)
        assert_problem(client.get(f"/v1/jobs/{job_id}/images/0"), 404)
        while True:  # the API's own sweeper removes the files soon after
            try:
                storage.get(image_key(job_id, 0, "png", attempt=1))
            except ObjectNotFound:
                break
            assert time.monotonic() < deadline, "the files were never swept"
            time.sleep(0.1)


def test_several_models_each_with_its_queue_and_workers(settings: Settings, redis: Redis) -> None:
    many = Settings.model_validate(
        settings.model_dump() | {"models": ["tiny-sd", "stabilityai/sd-turbo"]}
    )
    with TestClient(create_app(many)) as client:
        client.post("/v1/jobs", json={"prompt": "a"})
        turbo = client.post("/v1/jobs", json={"prompt": "a", "model": "stabilityai/sd-turbo"})
        assert turbo.json()["request"]["num_inference_steps"] == 1  # that model's default
        client.app.state.services.workers.beat("stabilityai/sd-turbo", "w1")
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["tiny-sd"]["default"] and not models["stabilityai/sd-turbo"]["default"]
    assert (models["tiny-sd"]["queue_length"], models["tiny-sd"]["live_workers"]) == (1, 0)
    assert models["stabilityai/sd-turbo"]["queue_length"] == 1
    assert models["stabilityai/sd-turbo"]["live_workers"] == 1
    assert models["stabilityai/sd-turbo"]["native_width"] == 512
