"""Continuous batching seen from a client: real Redis, API and worker processes over HTTP."""

from datetime import datetime

from scripts.stack import LocalStack
from tests.e2e.conftest import BUSY


def _at(job: dict, field: str) -> datetime:
    return datetime.fromisoformat(job[field])


def test_short_jobs_join_a_running_long_one_and_finish_first(stack: LocalStack) -> None:
    # Nothing waits behind a long job: jobs arriving while it runs join it at the next step.
    long = stack.submit(BUSY)
    stack.wait(long["id"], {"running"})
    short = [
        stack.submit({"prompt": f"shape {i}", "seed": 100 + i, "num_inference_steps": 4})
        for i in range(4)
    ]
    # Another latent shape is served in turn, not after the long job.
    bigger = stack.submit({"prompt": "shape", "width": 128, "num_inference_steps": 4})
    done = [stack.wait(job["id"]) for job in short + [bigger]]
    assert all(job["status"] == "succeeded" for job in done)
    # They came and went while the long job ran on, at its own step.
    still = stack.http.get(f"/v1/jobs/{long['id']}").json()
    assert still["status"] == "running"
    assert 0 < still["progress"]["step"] < 100
    stack.http.post(f"/v1/jobs/{long['id']}/cancel")
    assert stack.wait(long["id"])["status"] == "canceled"
    # Each job kept its own seed and image.
    assert [job["images"][0]["seed"] for job in done[:4]] == [100, 101, 102, 103]
    assert len({stack.image(job).content for job in done[:4]}) == 4


def test_canceling_one_job_of_a_batch_leaves_the_others_running(stack: LocalStack) -> None:
    # Enough steps to be caught running; the three fit one forward.
    body = {"prompt": "slow together", "num_inference_steps": 100}
    batch = [stack.submit(body | {"seed": seed}) for seed in range(3)]
    victim = stack.wait(batch[1]["id"], {"running"})
    assert victim["status"] == "running"
    stack.http.post(f"/v1/jobs/{victim['id']}/cancel")
    canceled = stack.wait(victim["id"])
    assert canceled["status"] == "canceled"
    finished = [stack.wait(job["id"], timeout=120) for job in (batch[0], batch[2])]
    assert all(j["status"] == "succeeded" and j["progress"]["step"] == 100 for j in finished)
    # It left at a step boundary, well before its batch-mates ended.
    assert canceled["progress"]["step"] < 100
    assert all(_at(canceled, "finished_at") < _at(j, "finished_at") for j in finished)
