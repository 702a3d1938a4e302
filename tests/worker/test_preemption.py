"""Priority and preemption in the worker: a high job that finds the engine full pauses the
lowest-priority running job at the next step boundary, runs, and the paused job resumes
from where it was, with the images an uninterrupted run gives. Real Redis and storage, the
real tiny-sd pipeline."""

import pytest

from app.core.jobs import JobParams, JobStatus
from app.core.queue import JobQueue
from app.core.storage import LocalStorage
from tests.factories import make_params, max_diff, stored_image, submitted
from tests.worker.conftest import Forwards, ServerFactory
from worker import claims
from worker.engine.state import JobState
from worker.pipeline import ResidentPipeline


@pytest.fixture(autouse=True)
def look_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker looks at an empty queue again only after 20 ms; tiny-sd steps take less, so
    # "within one step" is only exact when it looks at every step boundary.
    monkeypatch.setattr(claims, "QUIET_LOOK_S", 0.0)


def submit_during(forwards: Forwards, queue: JobQueue, at: int, params: JobParams) -> list[str]:
    """Submit a job during forward number `at` (0-based); its id once submitted."""
    made: list[str] = []

    def hook(states: list[JobState]) -> None:
        if len(forwards.tried) == at + 1:
            made.append(submitted(queue, params))

    forwards.hook = hook
    return made


def test_a_high_job_pauses_the_lowest_priority_job_and_both_get_their_images(
    queue: JobQueue,
    resident: ResidentPipeline,
    storage: LocalStorage,
    forwards: Forwards,
    make_server: ServerFactory,
) -> None:
    normal = submitted(queue, make_params(seed=1, num_inference_steps=8, scheduler="euler_a"))
    low = submitted(queue, make_params(seed=2, num_inference_steps=8, priority="low"))
    paused_seen: list[tuple[bool, int]] = []
    made = submit_during(forwards, queue, 2, make_params(seed=3, priority="high"))
    real_hook = forwards.hook

    def watch(states: list[JobState]) -> None:
        real_hook(states)
        if made and len(forwards.tried) in (5, 6):
            job = queue.store.get(low)
            paused_seen.append((job.paused, job.progress.step))

    forwards.hook = watch
    make_server(max_batch=2).serve(burst=True)

    (high,) = made
    # The engine was full (two guided jobs); the high job ran from the very next step, beside
    # the normal job, while the low one waited paused: its step frozen, `paused` on the job.
    assert forwards.ran[:3] == [[normal, low]] * 3
    assert [set(ids) for ids in forwards.ran[3:7]] == [{normal, high}] * 4
    assert len(forwards.with_job(low)) == 8
    assert paused_seen and all(p == (True, 3) for p in paused_seen)
    for job_id in (normal, low, high):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and not job.paused
        (alone,) = resident.generate(job.request)
        assert max_diff(alone, stored_image(storage, job_id)) <= 2
    # The paused job resumed only once the high one had left.
    resumed = next(i for i, ids in enumerate(forwards.ran) if i > 2 and low in ids)
    assert all(high not in ids for ids in forwards.ran[resumed:])


def test_a_job_of_the_same_priority_waits_its_turn(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    first = submitted(queue, make_params(seed=1, num_inference_steps=6))
    second = submitted(queue, make_params(seed=2, num_inference_steps=6))
    made = submit_during(forwards, queue, 1, make_params(seed=3))
    make_server(max_batch=2).serve(burst=True)
    (late,) = made
    assert forwards.ran[:6] == [[first, second]] * 6  # nobody paused for it
    assert set(forwards.ran[6]) == {late}


def test_paused_jobs_resume_before_new_jobs_of_their_priority(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    a = submitted(queue, make_params(seed=1, num_inference_steps=6))
    b = submitted(queue, make_params(seed=2, num_inference_steps=6))
    made = submit_during(
        forwards, queue, 1, make_params(seed=3, num_inference_steps=2, priority="high")
    )
    waiting = submitted(queue, make_params(seed=4, num_inference_steps=2))
    make_server(max_batch=2).serve(burst=True)
    (high,) = made
    paused = a if high in forwards.ran[2] and a not in forwards.ran[2] else b
    resumed = next(i for i, ids in enumerate(forwards.ran) if i > 2 and paused in ids)
    first_of_waiting = next(i for i, ids in enumerate(forwards.ran) if waiting in ids)
    assert resumed < first_of_waiting
    assert queue.store.get(waiting).status is JobStatus.SUCCEEDED


def test_a_paused_job_can_be_canceled(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    # Long jobs on either side: the low one stays paused (until one of them ends, when room
    # comes back) far longer than a cancel takes to be read, even on a loaded machine.
    normal = submitted(queue, make_params(seed=1, num_inference_steps=60))
    low = submitted(queue, make_params(seed=2, num_inference_steps=8, priority="low"))
    long_high = make_params(seed=3, num_inference_steps=60, priority="high")
    made = submit_during(forwards, queue, 1, long_high)
    real_hook = forwards.hook

    def cancel_when_paused(states: list[JobState]) -> None:
        real_hook(states)
        if made and queue.store.get(low).paused and not queue.store.get(low).cancel_requested:
            queue.cancel(low, "tiny-sd")

    forwards.hook = cancel_when_paused
    make_server(max_batch=2).serve(burst=True)
    job = queue.store.get(low)
    assert job.status is JobStatus.CANCELED and not job.paused
    assert len(forwards.with_job(low)) == 2  # it left while paused, never to run again
    assert queue.store.get(made[0]).status is JobStatus.SUCCEEDED
    assert queue.store.get(normal).status is JobStatus.SUCCEEDED
