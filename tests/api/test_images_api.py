"""POST /v1/images/generations in-process, with a real Redis and no worker: this test plays the
worker's part through the job store, to reach the outcomes a healthy worker rarely gives."""

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.api.main import create_app
from app.core.jobs import JobError
from app.core.settings import Settings
from app.core.store import JobStore
from tests.api.conftest import assert_problem

GENERATE = "/v1/images/generations"


def job_ids(redis: Redis) -> set[str]:
    """Ids of the job records in Redis (not their event streams)."""
    keys = [key.decode() for key in redis.scan_iter("ldm:job:j_*")]
    return {key.split(":")[2] for key in keys if key.count(":") == 2}


def assert_openai_error(response: httpx.Response, status: int, type_: str, code: str) -> dict:
    """The response is an OpenAI error of that status, type and code; returns its `error`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["type"], error["code"]) == (type_, code)
    return error


def in_background(call: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Start `call` on a thread; the returned function joins it and gives its response."""
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()

    def join() -> httpx.Response:
        thread.join(30)
        return result[0]

    return join


def new_job(redis: Redis, before: set[str]) -> str:
    """The one job submitted since `before` was taken (polls: the request runs elsewhere)."""
    deadline = time.monotonic() + 10
    while not (new := job_ids(redis) - before):
        assert time.monotonic() < deadline, "no job was submitted"
        time.sleep(0.01)
    (job_id,) = new
    return job_id


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_failed_job_answers_with_its_error_code(client: TestClient, redis: Redis) -> None:
    before = job_ids(redis)
    answer = in_background(lambda: client.post(GENERATE, json={"prompt": "a red circle"}))
    job_id = new_job(redis, before)
    JobStore(redis, 60).fail(job_id, JobError(code="out_of_memory", message="the GPU ran out"))
    response = answer()
    error = assert_openai_error(response, 500, "server_error", "out_of_memory")
    assert error["message"] == "the GPU ran out" and response.headers["x-job-id"] == job_id
    assert response.headers["x-should-retry"] == "false"  # the package would resubmit it


def test_a_job_canceled_meanwhile_is_a_conflict_not_retried(
    client: TestClient, redis: Redis
) -> None:
    before = job_ids(redis)
    answer = in_background(lambda: client.post(GENERATE, json={"prompt": "a red circle"}))
    job_id = new_job(redis, before)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    response = answer()
    assert_openai_error(response, 409, "invalid_request_error", "canceled")
    assert response.headers["x-should-retry"] == "false"


def test_limits_answer_in_openai_shape_with_retry_after(settings: Settings, redis: Redis) -> None:
    tight = settings.model_copy(
        update={"rate_limit": 0.01, "rate_burst": 1, "sync_wait_timeout": 0.2}
    )
    with TestClient(create_app(tight)) as client:
        started = time.monotonic()
        first = client.post(GENERATE, json={"prompt": "nobody draws this"})
        assert time.monotonic() - started < 5
        assert_openai_error(first, 504, "server_error", "timeout")
        assert client.get(f"/v1/jobs/{first.headers['x-job-id']}").json()["status"] == "canceled"
        limited = client.post(GENERATE, json={"prompt": "too soon"})
        assert_openai_error(limited, 429, "requests", "rate_limit_exceeded")
        assert int(limited.headers["retry-after"]) >= 1
        # Only this route speaks OpenAI: the jobs API keeps problem+json.
        assert_problem(client.post("/v1/jobs", json={"prompt": "too soon"}), 429)


def test_bad_requests_name_the_openai_parameter(client: TestClient, redis: Redis) -> None:
    cases = [
        ({"prompt": "x", "size": "64x65"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "2048x2048"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "large"}, "size", "invalid_value"),
        ({"prompt": "x", "n": 5}, "n", "invalid_value"),
        ({"prompt": "x", "n": "2"}, "n", "invalid_type"),
        ({"prompt": "x", "response_format": "jpeg"}, "response_format", "invalid_value"),
        ({"prompt": "x", "stream": "yes"}, "stream", "invalid_type"),
        (
            {"prompt": "x", "stream": True, "partial_images": 4},
            "partial_images",
            "integer_above_max_value",
        ),
        ({"prompt": "x", "mask": "..."}, "mask", "unknown_parameter"),
        ({"size": "64x64"}, "prompt", "missing_required_parameter"),
    ]
    for body, param, code in cases:
        response = client.post(GENERATE, json=body)
        error = assert_openai_error(response, 400, "invalid_request_error", code)
        assert error["param"] == param, body
    # Width and height are both `size` to OpenAI: the message says which side is wrong.
    wide = client.post(GENERATE, json={"prompt": "x", "size": "2048x64"}).json()["error"]
    assert wide["message"] == "size (width): must be at most 1024"
    unknown = client.post(GENERATE, json={"prompt": "x", "model": "dall-e-3"})
    error = assert_openai_error(unknown, 404, "invalid_request_error", "model_not_found")
    assert error["param"] == "model" and "tiny-sd" in error["message"]
    assert job_ids(redis) == set()  # nothing was queued for any of them


def test_openapi_documents_the_openai_shapes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    n = spec["components"]["schemas"]["ImageGenerate"]["properties"]["n"]
    assert {"type": "integer", "minimum": 1, "maximum": 4} in n["anyOf"]  # LDM_MAX_IMAGES
    operation = spec["paths"][GENERATE]["post"]
    responses = operation["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ImagesResponse"
    )
    for status in ("400", "401", "404", "429", "500", "503", "504"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/OpenAIError"
        )
    assert "422" not in responses  # never sent: validation errors are OpenAI 400s
