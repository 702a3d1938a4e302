"""A run given up for dead (its worker froze past its heartbeat, or was cut off from Redis)
that goes on, or ends late, cannot end the job's rerun, overwrite its images, or be reported
by RQ over it; a worker that learns its job runs again elsewhere drops it; and each job lost
with its worker reruns alone. Real Redis, real storage, the tiny model."""

import io
import threading
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from app.core.jobs import JobError, JobParams, JobStatus, rq_job_id
from app.core.queue import TASK, JobQueue, rq_queue
from app.core.recovery import retry_lost
from app.core.storage import LocalStorage, ObjectNotFound, image_key
from app.core.store import Claim
from tests.factories import make_params, submitted
from tests.worker.conftest import Forwards, ServerFactory
from worker.engine.state import JobState
from worker.outcomes import Outcomes, Task
from worker.tasks import on_failure

MODEL = "tiny-sd"


def claim(queue: JobQueue, job_id: str, worker: str, attempt: int, steps: int = 4) -> None:
    """`worker` takes that attempt of the job off the queue, as a worker's claim does."""
    key = rq_queue(queue.redis, MODEL).key
    assert queue.store.claim(worker, [Claim(job_id, rq_job_id(job_id, attempt), key, steps)])


def rerun_elsewhere(queue: JobQueue, params: JobParams) -> str:
    """A job that ran on w-zombie, was given up for dead and runs again (attempt 2) on w-new."""
    job_id = submitted(queue, params)
    claim(queue, job_id, "w-zombie", 1)
    assert retry_lost(queue, job_id, params, "w-zombie", max_attempts=3) == "requeued"
    claim(queue, job_id, "w-new", 2)
    return job_id


def attempt_rq_job(redis: Redis, job_id: str, attempt: int, worker: str) -> RQJob:
    """The RQ job of one attempt, as RQ hands it to its failure callback."""
    job = RQJob.create(
        TASK,
        args=[job_id, {}],
        id=rq_job_id(job_id, attempt),
        connection=redis,
        serializer=JSONSerializer,
    )
    job.worker_name = worker
    return job


def test_rq_reporting_a_lost_attempt_leaves_the_rerun_alone(queue: JobQueue, redis: Redis) -> None:
    job_id = rerun_elsewhere(queue, make_params())
    old = attempt_rq_job(redis, job_id, 1, "w-zombie")
    on_failure(old, redis, JobTimeoutException, JobTimeoutException("late"), None)
    on_failure(old, redis, AbandonedJobError, AbandonedJobError(), None)
    job = queue.store.get(job_id)
    assert (job.status, job.worker, job.attempt) == (JobStatus.RUNNING, "w-new", 2)
    # The rerun's own RQ job still ends it when RQ reports it.
    new = attempt_rq_job(redis, job_id, 2, "w-new")
    on_failure(new, redis, AbandonedJobError, AbandonedJobError(), None)
    job = queue.store.get(job_id)
    assert (job.status, job.error.code) == (JobStatus.FAILED, "worker_lost")


def test_a_late_end_of_a_lost_attempt_changes_nothing(queue: JobQueue) -> None:
    job_id = rerun_elsewhere(queue, make_params())
    # Even on the same worker name (a frozen worker that claimed its own job's rerun).
    assert not queue.store.fail(
        job_id, JobError(code="timeout", message="the job ran too long"), "w-new", attempt=1
    )
    assert not queue.store.mark_canceled(job_id, "w-new", attempt=1)
    assert not queue.store.succeed(job_id, [], "w-new", attempt=1)
    assert queue.store.succeed(job_id, [], "w-new", attempt=2)


def solid(colour: str) -> Image.Image:
    return Image.new("RGB", (64, 64), colour)


def test_a_zombie_finishing_late_cannot_overwrite_the_served_images(
    queue: JobQueue, storage: LocalStorage
) -> None:
    params = make_params()
    job_id = rerun_elsewhere(queue, params)
    outcomes = Outcomes(queue.store, storage)
    outcomes.succeed([(Task(job_id, params, attempt=2), [solid("red")])], "w-new")
    outcomes.succeed([(Task(job_id, params, attempt=1), [solid("blue")])], "w-zombie")
    job = queue.store.get(job_id)
    assert (job.status, job.worker, job.attempt) == (JobStatus.SUCCEEDED, "w-new", 2)
    # The API serves the attempt the record names: the rerun's image, not the zombie's.
    served = storage.get(image_key(job_id, 0, params.output_format, attempt=job.attempt))
    assert Image.open(io.BytesIO(served)).convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_a_worker_drops_a_job_that_runs_again_elsewhere(
    queue: JobQueue, storage: LocalStorage, forwards: Forwards, make_server: ServerFactory
) -> None:
    steps = 200
    params = make_params(num_inference_steps=steps)
    job_id = submitted(queue, params)
    server = make_server()

    def give_up_for_dead(states: list[JobState]) -> None:
        # What the API does when the worker's beats stop reaching Redis, and another worker.
        if len(forwards.tried) == 3:
            # "skipped" while a progress write races it, as the API's next round would see.
            while retry_lost(queue, job_id, params, server.name, 3) == "skipped":
                pass
            claim(queue, job_id, "w-new", 2, steps)

    forwards.hook = give_up_for_dead
    server.serve(burst=True)
    assert len(forwards.with_job(job_id)) < steps  # it stopped rather than run to the end
    job = queue.store.get(job_id)
    assert (job.status, job.worker, job.attempt) == (JobStatus.RUNNING, "w-new", 2)
    for attempt in (1, 2):
        with pytest.raises(ObjectNotFound):
            storage.get(image_key(job_id, 0, params.output_format, attempt=attempt))


def test_jobs_lost_with_their_worker_rerun_alone(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    # One of a crashed batch may be what crashed it (a segfault, the OOM killer): each runs
    # again by itself, so it cannot take its batch-mates down a second time.
    params = make_params(num_inference_steps=3)
    lost = [submitted(queue, params.model_copy(update={"seed": s})) for s in range(3)]
    for job_id in lost:
        claim(queue, job_id, "w-crashed", 1)
        assert retry_lost(queue, job_id, params, "w-crashed", max_attempts=3) == "requeued"
    fresh = [submitted(queue, params.model_copy(update={"seed": s})) for s in range(10, 12)]
    make_server().serve(burst=True)
    for job_id in lost:
        assert forwards.with_job(job_id) == [[job_id]] * 3  # every step alone
        assert queue.store.get(job_id).status is JobStatus.SUCCEEDED
    assert [sorted(ids) for ids in forwards.ran if fresh[0] in ids] == [sorted(fresh)] * 3


class HeldStorage(LocalStorage):
    """Holds the first image write until `release` is set (slow storage, Redis away)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writing = threading.Event()
        self.release = threading.Event()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.writing.set()
        assert self.release.wait(30)
        super().put(key, data, content_type)


def test_a_job_being_stored_is_not_adopted_as_an_orphan(
    queue: JobQueue, tmp_path: Path, forwards: Forwards, make_server: ServerFactory
) -> None:
    # After a lost reply the worker adopts jobs Redis says it runs but it does not hold; one
    # that only waits for its images to be stored is still its own, not one to run again.
    params = make_params(num_inference_steps=3)
    job_id = submitted(queue, params)
    storage = HeldStorage(tmp_path / "held")
    server = make_server(storage=storage)
    real_orphans = server.claims.orphans

    def orphans(known: set[str]) -> list:
        found = real_orphans(known)
        if storage.writing.is_set():
            storage.release.set()  # looked once while the job was being stored
            server.draining = True  # then stop once idle
        return found

    def lose_redis_while_storing() -> None:
        assert storage.writing.wait(30)
        server._lost_redis = True  # what a Redis error in the main loop sets

    server.claims.orphans = orphans  # type: ignore[method-assign]
    threading.Thread(target=lose_redis_while_storing, daemon=True).start()
    server.serve()
    assert storage.release.is_set()
    assert len(forwards.with_job(job_id)) == 3  # denoised once
    assert queue.store.get(job_id).status is JobStatus.SUCCEEDED
