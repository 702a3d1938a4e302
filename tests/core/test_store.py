"""The job state machine, against a real Redis."""

import pytest
from redis import Redis

from app.core.jobs import ImageInfo, JobError, JobStatus, new_job_id
from app.core.queue import TASK, JobQueue, rq_queue
from app.core.store import JobStore
from tests.factories import make_params

MODEL = "tiny-sd"
PARAMS = make_params(seed=1)


@pytest.fixture
def queue(redis: Redis) -> JobQueue:
    return JobQueue(redis, JobStore(redis, result_ttl=3600), job_timeout=30)


def submit(queue: JobQueue) -> str:
    job_id = new_job_id()
    queue.submit(job_id, PARAMS, "t1")
    return job_id


def test_submit_writes_record_and_enqueues_json_payload(queue: JobQueue) -> None:
    job_id = submit(queue)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.QUEUED and job.request == PARAMS
    rq_job = rq_queue(queue.redis, MODEL).fetch_job(job_id)
    assert rq_job.func_name == TASK
    assert rq_job.args == [job_id, PARAMS.model_dump(mode="json")]
    assert rq_job.timeout == 30


def test_happy_path_transitions(queue: JobQueue) -> None:
    store = queue.store
    job_id = submit(queue)
    assert store.start(job_id, total_steps=4)
    assert not store.start(job_id, total_steps=4)  # a job starts once
    assert store.report_progress([job_id], 2).canceled == set()
    job = store.get(job_id)
    assert job.status is JobStatus.RUNNING and job.started_at is not None
    assert (job.progress.step, job.progress.total_steps) == (2, 4)
    image = ImageInfo(url="/x", width=64, height=64, seed=1, content_type="image/png")
    assert store.succeed(job_id, [image])
    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.images == [image] and job.finished_at
    assert not store.fail(job_id, JobError(code="internal", message="late"))  # terminal stays
    assert 0 < queue.redis.ttl(store.key(job_id)) <= 3600


def test_failure_records_code_and_message(queue: JobQueue) -> None:
    job_id = submit(queue)
    queue.store.start(job_id, 4)
    queue.store.fail(job_id, JobError(code="timeout", message="too slow"))
    job = queue.store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "timeout"


def test_cancel_queued_job_leaves_the_queue_at_once(queue: JobQueue) -> None:
    first, second, third = submit(queue), submit(queue), submit(queue)
    assert [queue.position(j, MODEL) for j in (first, second, third)] == [0, 1, 2]
    assert queue.cancel(second, MODEL) is JobStatus.QUEUED
    assert queue.store.get(second).status is JobStatus.CANCELED
    assert queue.position(second, MODEL) is None
    assert queue.position(third, MODEL) == 1
    assert rq_queue(queue.redis, MODEL).fetch_job(second) is None
    # The worker that might already hold it cannot start it any more.
    assert not queue.store.start(second, 4)


def test_cancel_running_job_sets_the_flag_the_worker_reads(queue: JobQueue) -> None:
    job_id = submit(queue)
    queue.store.start(job_id, 4)
    assert queue.cancel(job_id, MODEL) is JobStatus.RUNNING
    assert queue.store.get(job_id).cancel_requested
    assert queue.store.report_progress([job_id], 1).canceled == {job_id}
    assert queue.store.mark_canceled(job_id)
    assert queue.store.get(job_id).status is JobStatus.CANCELED


def test_cancel_terminal_or_unknown(queue: JobQueue) -> None:
    job_id = submit(queue)
    queue.store.start(job_id, 4)
    queue.store.succeed(job_id, [])
    assert queue.cancel(job_id, MODEL) is JobStatus.SUCCEEDED
    assert queue.store.get(job_id).status is JobStatus.SUCCEEDED
    assert queue.cancel(new_job_id(), MODEL) is None
    assert queue.store.get(new_job_id()) is None


def test_depth_counts_waiting_jobs(queue: JobQueue) -> None:
    ids = [submit(queue) for _ in range(3)]
    assert queue.depth(MODEL) == 3
    queue.cancel(ids[0], MODEL)
    assert queue.depth(MODEL) == 2
