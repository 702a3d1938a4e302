import base64
import io

from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from app.api.main import create_app
from app.core.jobs import ImageInfo, image_url
from app.core.settings import Settings
from app.core.storage import image_key, init_image_key
from tests.api.conftest import assert_problem, nothing_written


def png_b64(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "green").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_submit_answers_202_with_location_and_resolved_request(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"prompt": "  a red circle "})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["model"] == "tiny-sd" and job["images"] == [] and job["error"] is None
    request = job["request"]
    assert request["prompt"] == "a red circle"
    assert (request["width"], request["height"], request["num_inference_steps"]) == (64, 64, 20)
    assert isinstance(request["seed"], int) and "init_image" not in request
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


def test_image_to_image_submit_stores_the_init_image(client: TestClient) -> None:
    body = {"prompt": "a cat", "init_image": "data:image/png;base64," + png_b64((96, 72))}
    job = client.post("/v1/jobs", json=body).json()
    assert job["request"]["mode"] == "image-to-image"
    assert job["request"]["strength"] == 0.8
    assert (job["request"]["width"], job["request"]["height"]) == (96, 72)
    services = client.app.state.services
    stored = Image.open(io.BytesIO(services.storage.get(init_image_key(job["id"]))))
    assert stored.size == (96, 72)


def test_queue_positions_count_from_zero(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json={"prompt": f"p{i}"}).json()["id"] for i in range(3)]
    assert [client.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids] == [0, 1, 2]


def test_validation_errors_name_every_bad_field(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs",
        json={"prompt": "", "width": 65, "guidance_scale": 99, "output_format": "gif", "x": 1},
    )
    body = assert_problem(response, 422)
    fields = {e["field"] for e in body["errors"]}
    assert fields == {
        "body.prompt",
        "body.width",
        "body.guidance_scale",
        "body.output_format",
        "body.x",
    }


def test_settings_limits_are_422_with_the_field(client: TestClient) -> None:
    body = assert_problem(client.post("/v1/jobs", json={"prompt": "a", "num_images": 99}), 422)
    assert body["errors"] == [{"field": "body.num_images", "message": "must be at most 4"}]
    body = assert_problem(client.post("/v1/jobs", json={"prompt": "a", "model": "nope"}), 422)
    assert body["errors"][0]["field"] == "body.model"
    body = assert_problem(client.post("/v1/jobs", json={"prompt": "a", "strength": 0.5}), 422)
    assert body["errors"][0]["field"] == "body.strength"


def test_bad_init_image_never_reaches_the_queue(client: TestClient) -> None:
    body = assert_problem(client.post("/v1/jobs", json={"prompt": "a", "init_image": "@@"}), 422)
    assert body["errors"][0]["field"] == "body.init_image"
    assert nothing_written(client.app.state.services.redis)


def test_malformed_json_and_missing_body(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422)
    assert_problem(client.post("/v1/jobs"), 422)


def test_oversized_body_is_413_with_or_without_length(client: TestClient) -> None:
    limit = client.app.state.services.settings.max_body_bytes
    big = b'{"prompt": "' + b"a" * limit + b'"}'
    headers = {"content-type": "application/json"}
    assert_problem(client.post("/v1/jobs", content=big, headers=headers), 413)

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    assert_problem(client.post("/v1/jobs", content=chunks(), headers=headers), 413)


def test_unknown_and_malformed_ids_are_404(client: TestClient) -> None:
    for job_id in [
        "j_01H00000000000000000000000",
        "nope",
        "..%2F..%2Fetc%2Fpasswd",
        "j_" + "Z" * 26,
    ]:
        assert_problem(client.get(f"/v1/jobs/{job_id}"), 404)
        assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 404)
        assert_problem(client.get(f"/v1/jobs/{job_id}/images/0"), 404)


def test_cancel_queued_then_conflict(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={"prompt": "a"}).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "canceled" and response.json()["finished_at"]
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409)


def test_images_only_for_succeeded_jobs_and_in_range(client: TestClient) -> None:
    services = client.app.state.services
    job_id = client.post("/v1/jobs", json={"prompt": "a", "output_format": "webp"}).json()["id"]
    assert_problem(client.get(f"/v1/jobs/{job_id}/images/0"), 404)
    # Play the worker's part by hand: the model is beside the point here.
    services.store.start(job_id, 20)
    services.storage.put(image_key(job_id, 0, "webp", attempt=1), b"RIFF-bytes", "image/webp")
    info = ImageInfo(
        url=image_url(job_id, 0), width=64, height=64, seed=1, content_type="image/webp"
    )
    services.store.succeed(job_id, [info])
    response = client.get(f"/v1/jobs/{job_id}/images/0")
    assert response.status_code == 200 and response.content == b"RIFF-bytes"
    assert response.headers["content-type"] == "image/webp"
    assert_problem(client.get(f"/v1/jobs/{job_id}/images/1"), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}/images/-1"), 404)
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409)


def test_bodies_are_json_even_from_curl_d(client: TestClient) -> None:
    body = b'{"prompt": "a red circle"}'
    for content_type in (
        "application/x-www-form-urlencoded",  # what `curl -d` sends
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ):
        response = client.post("/v1/jobs", content=body, headers={"content-type": content_type})
        assert response.status_code == 202, content_type
    metrics = client.get("/metrics").text
    assert 'ldm_http_requests_total{method="POST",route="/v1/jobs",status="202"} 3.0' in metrics
    body = assert_problem(
        client.post("/v1/jobs", content=b"<job/>", headers={"content-type": "text/xml"}), 415
    )
    assert "application/json" in body["detail"]


def test_a_full_queue_answers_503_with_retry_after(settings: Settings, redis: Redis) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_queue_length": 2}))) as client:
        for _ in range(2):
            assert client.post("/v1/jobs", json={"prompt": "a"}).status_code == 202
        # Workers finished 60 jobs in the last minute: a place frees up in about a second.
        for i in range(60):
            client.app.state.services.service_rate.record("tiny-sd", f"done-{i}")
        response = client.post("/v1/jobs", json={"prompt": "a"})
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "1"
        assert client.get("/v1/models").json()["models"][0]["queue_length"] == 2


def test_any_replica_cancels_any_job_whatever_it_serves(
    client: TestClient, settings: Settings
) -> None:
    job_id = client.post("/v1/jobs", json={"prompt": "a"}).json()["id"]
    other = Settings.model_validate(
        settings.model_dump() | {"model": "some/other-model", "models": ["some/other-model"]}
    )
    with TestClient(create_app(other)) as replica:
        assert replica.get(f"/v1/jobs/{job_id}").json()["queue_position"] == 0
        response = replica.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "canceled"


def test_a_tenant_over_its_rate_gets_429_with_retry_after(settings: Settings, redis: Redis) -> None:
    limited = settings.model_copy(update={"rate_limit": 0.5, "rate_burst": 2})
    with TestClient(create_app(limited)) as client:
        for _ in range(2):
            assert client.post("/v1/jobs", json={"prompt": "a"}).status_code == 202
        response = client.post("/v1/jobs", json={"prompt": "a"})
        body = assert_problem(response, 429)
        assert response.headers["retry-after"] == "2" and "submits/s" in body["detail"]
        assert client.get("/v1/models").status_code == 200  # polling is not limited
