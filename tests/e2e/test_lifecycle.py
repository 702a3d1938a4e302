"""Queue positions, cancel, timeouts, worker restarts and the HTTP errors, with real processes."""

import signal

import httpx

from scripts.stack import LocalStack
from tests.e2e.conftest import BEHIND_BUSY, BUSY, SLOW


def problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def busy_worker(stack: LocalStack) -> str:
    """Occupy the worker with a long job; the caller cancels it when done."""
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    return busy["id"]


def test_waiting_jobs_know_their_place(stack: LocalStack) -> None:
    busy = busy_worker(stack)
    # BUSY's size: they wait behind it (another size would join it at its next step).
    body = {"num_inference_steps": 2} | BEHIND_BUSY
    waiting = [stack.submit(body | {"prompt": f"w{i}"}) for i in range(3)]
    assert [j["queue_position"] for j in waiting] == [0, 1, 2]
    assert stack.job(busy)["queue_position"] is None
    stack.http.post(f"/v1/jobs/{waiting[0]['id']}/cancel")
    assert [stack.job(j["id"])["queue_position"] for j in waiting[1:]] == [0, 1]
    stack.http.post(f"/v1/jobs/{busy}/cancel")
    for job in waiting[1:]:
        assert stack.wait(job["id"])["status"] == "succeeded"


def test_cancel_a_queued_job(stack: LocalStack) -> None:
    busy = busy_worker(stack)
    queued = stack.submit({"prompt": "never"} | BEHIND_BUSY)
    response = stack.http.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "canceled"
    stack.http.post(f"/v1/jobs/{busy}/cancel")
    stack.wait(busy)
    # The worker moved on without ever starting it.
    assert stack.wait(stack.submit({"prompt": "after"})["id"])["status"] == "succeeded"
    job = stack.job(queued["id"])
    assert job["status"] == "canceled" and job["started_at"] is None and job["images"] == []
    problem(stack.http.post(f"/v1/jobs/{queued['id']}/cancel"), 409)


def test_cancel_a_running_job_and_the_worker_goes_on(stack: LocalStack) -> None:
    (worker,) = stack.workers[-1:]
    job_id = busy_worker(stack)
    response = stack.http.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    done = stack.wait(job_id, timeout=10)
    assert done["status"] == "canceled" and done["images"] == []
    assert done["progress"]["step"] < 100
    problem(stack.http.get(f"/v1/jobs/{job_id}/images/0"), 404)
    after = stack.wait(stack.submit({"prompt": "next"})["id"])
    assert after["status"] == "succeeded" and worker.poll() is None


def test_every_client_error_of_the_contract(stack: LocalStack) -> None:
    http = stack.http
    body = problem(http.post("/v1/jobs", json={"prompt": "a", "width": 63, "seed": -5}), 422)
    assert {e["field"] for e in body["errors"]} == {"body.width", "body.seed"}
    problem(http.post("/v1/jobs", json={"prompt": "a", "model": "sdxl"}), 422)
    problem(
        http.post(
            "/v1/jobs",
            content=b"x" * (17 * 1024 * 1024),
            headers={"content-type": "application/json"},
        ),
        413,
    )
    problem(http.get("/v1/jobs/j_01H00000000000000000000000"), 404)
    done = stack.wait(stack.submit({"prompt": "a", "num_inference_steps": 2})["id"])
    problem(http.get(f"{done['images'][0]['url'][:-1]}1"), 404)
    problem(http.post(f"/v1/jobs/{done['id']}/cancel"), 409)
    running = busy_worker(stack)
    problem(http.get(f"/v1/jobs/{running}/images/0"), 404)
    http.post(f"/v1/jobs/{running}/cancel")
    stack.wait(running)


def test_a_job_over_the_timeout_fails_and_the_worker_serves_the_next(stack: LocalStack) -> None:
    impatient = stack.start_api(LDM_JOB_TIMEOUT="1")
    slow = stack.submit(BUSY, client=impatient)
    done = stack.wait(slow["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout" and "1 s" in done["error"]["message"]
    assert stack.wait(stack.submit({"prompt": "next"})["id"])["status"] == "succeeded"


def test_worker_restart_between_jobs_loses_nothing(stack: LocalStack) -> None:
    assert stack.wait(stack.submit({"prompt": "before"})["id"])["status"] == "succeeded"
    # SIGTERM mid-job: the worker finishes the job it holds, then exits cleanly.
    old = stack.workers.pop()
    running = stack.submit(SLOW)
    stack.wait(running["id"], {"running"})
    old.send_signal(signal.SIGTERM)
    assert old.wait(timeout=60) == 0
    assert stack.job(running["id"])["status"] == "succeeded"
    # A job submitted while no worker runs waits for the next one.
    waiting = stack.submit({"prompt": "while down"})
    assert stack.job(waiting["id"])["status"] == "queued"
    stack.start_worker()
    assert stack.wait(waiting["id"])["status"] == "succeeded"
