"""Micro-batching seen from a client: real Redis, API and worker processes over HTTP."""

from scripts.stack import LocalStack
from tests.e2e.conftest import BUSY


def test_jobs_waiting_together_run_together_each_with_its_own_result(stack: LocalStack) -> None:
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    together = [
        stack.submit({"prompt": f"shape {i}", "seed": 100 + i, "num_inference_steps": 4})
        for i in range(4)
    ]
    apart = stack.submit({"prompt": "shape", "width": 128, "num_inference_steps": 4})
    stack.http.post(f"/v1/jobs/{busy['id']}/cancel")
    done = [stack.wait(job["id"]) for job in together]
    alone = stack.wait(apart["id"])
    assert all(job["status"] == "succeeded" for job in done + [alone])
    # Started in one step, on one worker: one pipeline call.
    assert len({(job["started_at"], job["worker"]) for job in done}) == 1
    assert alone["started_at"] != done[0]["started_at"]
    # Each job kept its own seed and image.
    assert [job["images"][0]["seed"] for job in done] == [100, 101, 102, 103]
    images = {stack.image(job).content for job in done}
    assert len(images) == 4


def test_canceling_one_job_of_a_batch_leaves_the_others_running(stack: LocalStack) -> None:
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    # Native size, so the three fit one batch; enough steps to be caught running (~2 s).
    body = {"prompt": "slow together", "num_inference_steps": 100}
    batch = [stack.submit(body | {"seed": seed}) for seed in range(3)]
    stack.http.post(f"/v1/jobs/{busy['id']}/cancel")
    victim = stack.wait(batch[1]["id"], {"running"})
    assert victim["status"] == "running"
    stack.http.post(f"/v1/jobs/{victim['id']}/cancel")
    assert stack.wait(victim["id"])["status"] == "canceled"
    finished = [stack.wait(job["id"], timeout=120) for job in (batch[0], batch[2])]
    assert all(j["status"] == "succeeded" and j["progress"]["step"] == 100 for j in finished)
    assert finished[0]["started_at"] == finished[1]["started_at"] == victim["started_at"]
