"""The exact-result cache and per-tenant usage on a real service: a repeated job is answered
from storage without reaching a worker, and each tenant's usage adds up to what ran."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model

A = {"Authorization": "Bearer key-a"}
G = {"Authorization": "Bearer key-g"}
BODY = {"prompt": "a red circle", "seed": 11, "num_inference_steps": 3, "num_images": 2}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LocalStack]:
    ensure_tiny_model(model_cache)
    keys = {"LDM_API_KEYS": "acme:key-a,globex:key-g", "LDM_RESULT_CACHE": "true"}
    with LocalStack(tmp_path_factory.mktemp("stack"), model_cache, **keys) as stack:
        stack.start_api()
        stack.start_worker(LDM_LOG_LEVEL="INFO")  # its log names each job it denoises
        yield stack


def submit(stack: LocalStack, body: dict, headers: dict) -> dict:
    response = stack.http.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def wait(stack: LocalStack, job_id: str, headers: dict) -> dict:
    def done() -> dict | None:
        job = stack.http.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    deadline = datetime.now(UTC).timestamp() + 60
    while (job := done()) is None:
        assert datetime.now(UTC).timestamp() < deadline, f"job {job_id} never ended"
    return job


def denoised(stack: LocalStack) -> list[str]:
    """Jobs the worker ran, from its own log."""
    logs = "".join(p.read_text() for p in stack.workdir.glob("worker-*.log"))
    return re.findall(r"job (j_\w+) denoised on attempt", logs)


def test_a_repeated_job_is_served_from_storage_and_billed_as_cached(stack: LocalStack) -> None:
    first = wait(stack, submit(stack, BODY, A)["id"], A)
    assert first["status"] == "succeeded" and first["cached"] is False
    originals = [stack.http.get(i["url"], headers=A).content for i in first["images"]]

    again = submit(stack, BODY, A)  # answered by the POST itself
    assert again["status"] == "succeeded" and again["cached"] is True
    served = [stack.http.get(i["url"], headers=A).content for i in again["images"]]
    assert served == originals
    fresh = wait(stack, submit(stack, BODY | {"cache": False}, A)["id"], A)
    assert fresh["cached"] is False
    assert [stack.http.get(i["url"], headers=A).content for i in fresh["images"]] == originals
    # Another tenant's identical job runs: results are not shared unless the operator says so.
    theirs = wait(stack, submit(stack, BODY, G)["id"], G)
    assert theirs["cached"] is False
    ran = denoised(stack)
    assert again["id"] not in ran and {first["id"], fresh["id"], theirs["id"]} <= set(ran)

    (row,) = stack.http.get("/v1/usage", headers=A).json()["days"]
    assert row["day"] == datetime.now(UTC).date().isoformat() and row["model"] == "tiny-sd"
    assert (row["jobs"], row["images"], row["steps"], row["cached_jobs"]) == (3, 6, 6, 1)
    assert row["worker_seconds"] > 0
    (other,) = stack.http.get("/v1/usage", headers=G).json()["days"]
    assert (other["jobs"], other["steps"], other["cached_jobs"]) == (1, 3, 0)
    metrics = stack.http.get("/metrics").text
    assert 'ldm_usage_jobs_total{model="tiny-sd",tenant="acme"} 3.0' in metrics
    assert 'ldm_usage_steps_total{model="tiny-sd",tenant="globex"} 3.0' in metrics
