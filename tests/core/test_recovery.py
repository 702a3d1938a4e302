"""Jobs whose worker died run again, a bounded number of times (real Redis, real RQ records)."""

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.job import JobStatus as RQJobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from app.core.jobs import JobStatus, new_job_id, rq_job_id
from app.core.queue import JobQueue, rq_queue
from app.core.recovery import recover_lost_jobs, rescue_unstarted
from app.core.store import JobStore
from app.core.workers import CLOCK_KEY, GONE_AFTER_S, OUTAGE_AFTER_S, WorkerRegistry
from tests.factories import make_params

MODEL = "tiny-sd"


@pytest.fixture
def queue(redis: Redis) -> JobQueue:
    return JobQueue(redis, JobStore(redis, result_ttl=600), job_timeout=30)


@pytest.fixture(autouse=True)
def calm(redis: Redis) -> None:
    """Redis has been reachable for an hour (a fresh Redis has only just been)."""
    backdate_calm(redis, 3600)


def backdate_calm(redis: Redis, seconds: float, tick_ago: float = 0) -> None:
    """Set the outage clock: Redis calm for `seconds`, the last tick `tick_ago` s ago."""
    now = JobStore(redis, 600).now()
    redis.hset(CLOCK_KEY, mapping={"tick": now - tick_ago, "calm_since": now - seconds})


def taken_by_a_worker_that_dies(queue: JobQueue, worker: str = "w-dead") -> str:
    """Submit a job; an RQ worker takes and starts it, then vanishes without a word."""
    job_id = new_job_id()
    queue.submit(job_id, make_params(), "t1")
    rq = rq_queue(queue.redis, MODEL)
    rq_worker = SimpleWorker([rq], connection=queue.redis, serializer=JSONSerializer)
    rq_job = rq.fetch_job(job_id)
    rq.remove(rq_job)
    rq_worker.prepare_execution(rq_job)
    rq_job.set_status(RQJobStatus.STARTED)
    assert queue.store.start(job_id, 4, worker)
    return job_id


def test_a_lost_job_is_queued_again_as_a_fresh_attempt(queue: JobQueue, redis: Redis) -> None:
    job_id = taken_by_a_worker_that_dies(queue)
    queue.store.set_paused([job_id], True, "w-dead")  # paused for a high job when it died
    workers = WorkerRegistry(redis)
    assert recover_lost_jobs(queue, workers, [MODEL], max_attempts=3) == 1
    job = queue.store.get(job_id)
    assert (job.status, job.attempt, job.worker, job.progress) == (JobStatus.QUEUED, 2, None, None)
    assert queue.position(job_id, MODEL, job.attempt) == 0
    # The dead worker's RQ job is gone, so RQ can never report it abandoned later.
    rq = rq_queue(redis, MODEL)
    assert rq.fetch_job(job_id) is None
    assert rq.fetch_job(rq_job_id(job_id, 2)).args[0] == job_id
    assert not StartedJobRegistry(queue=rq).get_job_ids()
    # A live worker runs attempt 2; the dead one, should it come back, can no longer end it.
    workers.beat(MODEL, "w-live")
    assert queue.store.start(job_id, 4, "w-live")
    assert not queue.store.get(job_id).paused  # attempt 2 runs from scratch, not paused
    assert recover_lost_jobs(queue, workers, [MODEL], max_attempts=3) == 0  # w-live is beating
    assert not queue.store.succeed(job_id, [], worker="w-dead")
    assert queue.store.succeed(job_id, [], worker="w-live")
    assert queue.store.get(job_id).status is JobStatus.SUCCEEDED


def test_after_the_last_attempt_it_fails_as_worker_lost(queue: JobQueue, redis: Redis) -> None:
    job_id = taken_by_a_worker_that_dies(queue)
    assert recover_lost_jobs(queue, WorkerRegistry(redis), [MODEL], max_attempts=1) == 1
    job = queue.store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "worker_lost"
    assert queue.store.running() == []


def test_a_pending_cancel_wins_over_a_retry(queue: JobQueue, redis: Redis) -> None:
    job_id = taken_by_a_worker_that_dies(queue)
    queue.cancel(job_id, MODEL)
    recover_lost_jobs(queue, WorkerRegistry(redis), [MODEL], max_attempts=3)
    assert queue.store.get(job_id).status is JobStatus.CANCELED


def test_jobs_of_live_workers_are_left_alone(queue: JobQueue, redis: Redis) -> None:
    job_id = taken_by_a_worker_that_dies(queue, worker="w-busy")
    WorkerRegistry(redis).beat(MODEL, "w-busy")
    assert recover_lost_jobs(queue, WorkerRegistry(redis), [MODEL], max_attempts=3) == 0
    assert queue.store.get(job_id).status is JobStatus.RUNNING
    queue.store.succeed(job_id, [], worker="w-busy")
    assert queue.store.running() == []


def test_silence_through_a_redis_outage_is_not_death(queue: JobQueue, redis: Redis) -> None:
    job_id = taken_by_a_worker_that_dies(queue, worker="w-cut-off")
    workers = WorkerRegistry(redis)
    workers.beat(MODEL, "w-cut-off", now=queue.store.now() - GONE_AFTER_S - 5)
    # Redis comes back from a restart (its append-only file kept the last tick, long ago): the
    # worker could not beat meanwhile, so its silence proves nothing yet.
    backdate_calm(redis, 3600, tick_ago=OUTAGE_AFTER_S + 30)
    assert recover_lost_jobs(queue, workers, [MODEL], max_attempts=3) == 0
    assert 0 <= workers.calm_for() < 1
    job = queue.store.get(job_id)
    assert (job.status, job.worker, job.attempt) == (JobStatus.RUNNING, "w-cut-off", 1)
    # A gap shorter than an outage is no outage.
    backdate_calm(redis, 3600, tick_ago=OUTAGE_AFTER_S - 5)
    assert workers.calm_for() > GONE_AFTER_S
    # Calm for as long as a worker may stay silent, and still silent: it is gone.
    backdate_calm(redis, GONE_AFTER_S + 1)
    assert recover_lost_jobs(queue, workers, [MODEL], max_attempts=3) == 1
    assert queue.store.get(job_id).attempt == 2


def test_every_beat_ticks_the_outage_clock(redis: Redis) -> None:
    workers = WorkerRegistry(redis)
    backdate_calm(redis, 3600, tick_ago=OUTAGE_AFTER_S + 1)
    workers.beat(MODEL, "w1")  # the first tick after a gap: calm from now on
    assert workers.calm_for() < 1


def test_a_job_taken_but_never_started_is_queued_again(queue: JobQueue, redis: Redis) -> None:
    job_id = new_job_id()
    queue.submit(job_id, make_params(), "t1")
    rq = rq_queue(redis, MODEL)
    # A worker moves it off the queue (as RQ does) and dies before starting it.
    redis.lmove(rq.key, rq.intermediate_queue_key)
    assert redis.lpos(rq.key, job_id) is None
    assert rescue_unstarted(queue, MODEL) == 0  # first sight: a live worker may be starting it
    assert queue.store.get(job_id).attempt == 1
    redis.set(f"ldm:stranded:{job_id}", queue.store.now() - GONE_AFTER_S - 1)  # time passes
    assert rescue_unstarted(queue, MODEL) == 1
    job = queue.store.get(job_id)
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 2)
    assert queue.position(job_id, MODEL, 2) == 0
    assert queue.position(job_id, MODEL, 1) is None  # the lost attempt left the line
    assert redis.llen(rq.intermediate_queue_key) == 0 and rq.fetch_job(job_id) is None
