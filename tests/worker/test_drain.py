"""Stopping a worker: SIGTERM drains the active set (they finish, nothing new is taken); a
second signal stops at once and hands the jobs it held back to the queue. Real Redis, the tiny
model."""

import signal

from redis import Redis
from rq import Worker

from app.core.jobs import JobStatus
from app.core.queue import JobQueue, rq_queue
from tests.factories import make_params, submitted
from tests.worker.conftest import Forwards, ServerFactory
from worker.engine.state import JobState

MODEL = "tiny-sd"


def signal_at_forward(forwards: Forwards, at: int, times: int) -> None:
    """Send this process SIGTERM `times` times during forward number `at` (1-based)."""

    def hook(states: list[JobState]) -> None:
        if len(forwards.tried) == at:
            for _ in range(times):
                signal.raise_signal(signal.SIGTERM)

    forwards.hook = hook


def test_sigterm_lets_the_active_jobs_finish_and_takes_no_more(
    queue: JobQueue, redis: Redis, forwards: Forwards, make_server: ServerFactory
) -> None:
    params = make_params(num_inference_steps=5)
    active = [submitted(queue, params.model_copy(update={"seed": s})) for s in (1, 2)]
    waiting = submitted(queue, params)  # no room beside them (max_batch=2)
    signal_at_forward(forwards, at=2, times=1)
    before = signal.getsignal(signal.SIGTERM)
    make_server(max_batch=2).serve()  # not a burst: it returns because it was told to stop
    assert signal.getsignal(signal.SIGTERM) is before  # handlers given back
    for job_id in active:
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.progress.step == 5
    assert queue.store.get(waiting).status is JobStatus.QUEUED
    assert rq_queue(redis, MODEL).job_ids == [waiting]  # left for another worker
    assert not forwards.with_job(waiting)
    assert Worker.all(connection=redis) == []


def test_a_second_signal_stops_at_once_and_hands_the_jobs_back(
    queue: JobQueue, redis: Redis, forwards: Forwards, make_server: ServerFactory
) -> None:
    params = make_params(num_inference_steps=20)
    active = [submitted(queue, params.model_copy(update={"seed": s})) for s in (1, 2)]
    waiting = submitted(queue, params)
    signal_at_forward(forwards, at=2, times=2)
    make_server(max_batch=2).serve()
    assert len(forwards.ran) == 2  # it stopped after the step it was in
    rq = rq_queue(redis, MODEL)
    # As after kill -9, but at once: each runs again (a fresh attempt), ahead of the waiting job.
    for job_id in active:
        job = queue.store.get(job_id)
        assert (job.status, job.attempt, job.worker) == (JobStatus.QUEUED, 2, None)
        assert queue.position(job_id, MODEL, 2) in (0, 1)
    assert queue.position(waiting, MODEL) == 2
    assert rq.started_job_registry.get_job_ids(cleanup=False) == []
    make_server(max_batch=2).serve(burst=True)
    for job_id in [*active, waiting]:
        assert queue.store.get(job_id).status is JobStatus.SUCCEEDED
