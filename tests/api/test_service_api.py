from pathlib import Path

from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.settings import Settings
from scripts.procs import free_port
from tests.api.conftest import assert_problem
from tests.api.test_jobs_api import png_b64


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_redis_down_means_503_with_retry_after_not_500(tmp_path: Path) -> None:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", storage_url=tmp_path.as_uri()
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        for response in (
            client.get("/readyz"),
            client.post("/v1/jobs", json={"prompt": "a"}),
            client.get("/v1/jobs/j_01H00000000000000000000000"),
        ):
            assert_problem(response, 503)
            assert int(response.headers["retry-after"]) > 0
        assert client.get("/metrics").status_code == 200


def test_models_lists_defaults_limits_and_queue(client: TestClient) -> None:
    client.post("/v1/jobs", json={"prompt": "a"})
    (model,) = client.get("/v1/models").json()["models"]
    assert model["name"] == "tiny-sd" and model["default"] is True
    assert (model["native_width"], model["native_height"], model["default_steps"]) == (64, 64, 20)
    assert model["limits"] == {
        "max_side": 1024,
        "max_pixels": 1048576,
        "max_steps": 100,
        "max_images": 4,
    }
    assert model["queue_length"] == 1


def test_metrics_in_prometheus_text_format(client: TestClient) -> None:
    client.post("/v1/jobs", json={"prompt": "a"})
    client.get("/v1/jobs/nope")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'ldm_jobs_submitted_total{model="tiny-sd"} 1.0' in text
    assert 'ldm_queue_depth{model="tiny-sd"} 1.0' in text
    # Labelled by route template, so ids never blow up the series count.
    assert 'route="/v1/jobs/{job_id}",status="404"' in text


def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v2/anything"), 404)
    assert_problem(client.delete("/v1/jobs"), 405)


def test_internal_errors_leak_nothing(client: TestClient, tmp_path: Path) -> None:
    storage = client.app.state.services.storage
    storage.root = tmp_path / "a-file"  # storage breaks: writes now fail inside the handler
    storage.root.write_text("not a folder")
    with TestClient(client.app, raise_server_exceptions=False) as broken:
        response = broken.post("/v1/jobs", json={"prompt": "a", "init_image": png_b64((64, 64))})
    body = assert_problem(response, 500)
    assert "a-file" not in response.text and "Error" not in body["detail"]


def test_openapi_matches_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/images/{index}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/v1/jobs/{job_id}/events",
        "/v1/images/generations",
        "/v1/usage",
    }
    create = spec["components"]["schemas"]["JobCreate"]
    assert create["additionalProperties"] is False
    assert set(create["properties"]) == {
        "prompt",
        "negative_prompt",
        "init_image",
        "strength",
        "width",
        "height",
        "num_inference_steps",
        "guidance_scale",
        "num_images",
        "seed",
        "output_format",
        "model",
        "scheduler",
        "priority",
        "previews",
        "loras",
        "mask_image",
        "cache",
        "webhook_url",
        "webhook_events",
    }
    assert create["required"] == ["prompt"]
    lora = spec["components"]["schemas"]["LoraRequest"]["properties"]
    assert (lora["scale"]["minimum"], lora["scale"]["maximum"]) == (-2, 2)
    assert create["properties"]["priority"]["enum"] == ["high", "normal", "low"]
    assert create["properties"]["priority"]["default"] == "normal"
    job = spec["components"]["schemas"]["Job"]["properties"]
    assert {"eta_seconds", "paused", "cached"} <= set(job)
    assert create["properties"]["cache"]["default"] is True
    assert create["properties"]["strength"]["default"] == 0.8
    assert create["properties"]["output_format"]["enum"] == ["png", "jpeg", "webp"]
    settings = client.app.state.services.settings

    def bounds(field: str) -> dict:
        (integer,) = [b for b in create["properties"][field]["anyOf"] if b["type"] == "integer"]
        return integer

    assert bounds("width") | bounds("height") == {
        "type": "integer",
        "minimum": 64,
        "maximum": settings.max_side,
        "multipleOf": 8,
    }
    assert bounds("num_inference_steps")["maximum"] == settings.max_steps
    assert create["properties"]["num_images"]["maximum"] == settings.max_images
    assert "202" in paths["/v1/jobs"]["post"]["responses"]
    assert (
        "application/problem+json"
        in paths["/v1/jobs/{job_id}"]["get"]["responses"]["404"]["content"]
    )
    assert "409" in paths["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    job = spec["components"]["schemas"]["Job"]["properties"]
    assert {
        "id",
        "status",
        "model",
        "created_at",
        "started_at",
        "finished_at",
        "queue_position",
        "progress",
        "request",
        "images",
        "error",
        "warnings",
    } <= set(job)


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    for hostile in ("x" * 65, "a b", "id\\u2028", ""):
        given = client.get("/healthz", headers={"X-Request-ID": hostile}).headers["x-request-id"]
        assert given != hostile and len(given) == 32  # a fresh id instead
    assert len(client.get("/v1/jobs/nope").headers["x-request-id"]) == 32  # errors too
