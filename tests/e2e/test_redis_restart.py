"""Redis stops and comes back: the API says 503 meanwhile and recovers by itself, workers
reconnect, and every job accepted before the outage is still there and runs."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.procs import wait_until
from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model


@pytest.fixture
def stack(tmp_path: Path, model_cache: Path) -> Iterator[LocalStack]:
    ensure_tiny_model(model_cache)
    with LocalStack(tmp_path, model_cache) as stack:
        stack.start_api()
        yield stack


def test_an_outage_loses_no_accepted_job(stack: LocalStack) -> None:
    # Accepted while no worker runs, so they are still queued when Redis goes down.
    accepted = [stack.submit({"prompt": f"p{i}", "num_inference_steps": 2})["id"] for i in range(3)]
    stack.stop_redis()
    for response in (
        stack.http.get("/readyz"),
        stack.http.post("/v1/jobs", json={"prompt": "a"}),
        stack.http.get(f"/v1/jobs/{accepted[0]}"),
    ):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) > 0
    assert stack.http.get("/healthz").status_code == 200  # alive, just not ready
    stack.start_redis()
    wait_until(lambda: stack.http.get("/readyz").status_code == 200, 30, "API readiness")
    assert [stack.job(job_id)["status"] for job_id in accepted] == ["queued"] * 3
    stack.start_worker()
    assert [stack.wait(job_id)["status"] for job_id in accepted] == ["succeeded"] * 3


def test_a_worker_rides_out_an_outage(stack: LocalStack) -> None:
    worker = stack.start_worker()
    before = stack.submit({"prompt": "before", "num_inference_steps": 2})
    assert stack.wait(before["id"])["status"] == "succeeded"
    stack.stop_redis()
    stack.start_redis()
    wait_until(lambda: stack.http.get("/readyz").status_code == 200, 30, "API readiness")
    job = stack.submit({"prompt": "after", "num_inference_steps": 2})
    assert stack.wait(job["id"], timeout=120)["status"] == "succeeded"
    assert worker.poll() is None  # the same worker process, reconnected
