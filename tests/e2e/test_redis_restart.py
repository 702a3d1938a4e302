"""Redis stops and comes back: the API says 503 meanwhile and recovers by itself, workers
reconnect, and every job accepted before the outage is still there and runs, once."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.workers import GONE_AFTER_S
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


def test_a_job_running_through_an_outage_longer_than_the_heartbeat_timeout_is_not_rerun(
    tmp_path: Path, model_cache: Path
) -> None:
    ensure_tiny_model(model_cache)
    # Lost-job rounds every second, and a job that runs for minutes.
    with LocalStack(tmp_path, model_cache, LDM_SWEEP_INTERVAL="1", LDM_MAX_STEPS="100000") as stack:
        stack.start_api()
        worker = stack.start_worker()
        job_id = stack.submit({"prompt": "long", "num_inference_steps": 100000})["id"]
        running = stack.wait(job_id, until={"running"})
        stack.stop_redis()
        time.sleep(GONE_AFTER_S + 5)  # the outage itself: the worker cannot beat meanwhile
        stack.start_redis()
        wait_until(lambda: stack.http.get("/readyz").status_code == 200, 30, "API readiness")
        # Three lost-job rounds, each of which would find the worker's last beat too old if it
        # took silence through the outage for death: the job must stay its own.
        step = stack.job(job_id)["progress"]["step"]
        time.sleep(3)
        assert stack.job(job_id)["progress"]["step"] > step  # and it denoised on meanwhile
        job = stack.job(job_id)
        assert (job["status"], job["attempt"], job["worker"]) == (
            "running",
            1,
            running["worker"],
        )
        assert stack.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        assert stack.wait(job_id)["attempt"] == 1
        assert worker.poll() is None
