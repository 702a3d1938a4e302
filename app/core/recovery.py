"""Lost jobs run again, a bounded number of times: those whose worker stopped beating while
running them, and those a worker took from the queue but died before starting."""

import logging

from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from app.core.jobs import JobError, JobParams, JobStatus, rq_job_id
from app.core.queue import JobQueue, rq_queue
from app.core.store import RUNNING_KEY
from app.core.workers import GONE_AFTER_S, WorkerRegistry

log = logging.getLogger(__name__)


def _next_attempt(
    queue: JobQueue, pipe: Pipeline, job_id: str, params: JobParams, attempt: int
) -> None:
    # In the caller's transaction: a fresh RQ job for the next attempt, the record back to
    # queued, and the lost attempt's RQ job gone, so RQ never reports it abandoned later.
    rq = rq_queue(queue.redis, params.model)
    old_id = rq_job_id(job_id, attempt)
    try:
        old: RQJob | None = RQJob.fetch(old_id, connection=queue.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        old = None  # already gone: nothing of it to clean up
    queue.enqueue_attempt(job_id, params, pipe, attempt + 1)
    key = queue.store.key(job_id)
    pipe.hset(key, mapping={"status": "queued", "attempt": attempt + 1, "worker": "", "step": 0})
    pipe.hdel(key, "started_at", "total_steps", "paused")  # a paused job reruns from scratch
    queue.store.note_status(job_id, JobStatus.QUEUED, pipe)
    # At the front of its band: it has waited its turn once already.
    queue.waiting.add(pipe, job_id, rq_job_id(job_id, attempt + 1), params, 0.0, front=True)
    pipe.zrem(RUNNING_KEY, job_id)
    pipe.lrem(rq.intermediate_queue_key, 0, old_id)
    if old is not None:
        old.delete(pipeline=pipe, remove_from_queue=False)


def retry_lost(
    queue: JobQueue, job_id: str, params: JobParams, lost_worker: str, max_attempts: int
) -> str:
    """Run a job whose worker died again, or fail it (`worker_lost`) after `max_attempts`.

    Returns "requeued", "failed", "canceled" (a cancel was pending) or "skipped" (the job
    moved on meanwhile: it finished, or is no longer on that worker)."""
    key = queue.store.key(job_id)
    with queue.redis.pipeline() as pipe:
        try:
            pipe.watch(key)
            status, worker, attempt, cancel = pipe.hmget(
                key, "status", "worker", "attempt", "cancel"
            )
            if status != b"running" or (worker or b"").decode() != lost_worker:
                return "skipped"
            attempt = int(attempt or 1)
            if cancel == b"1" or attempt >= max_attempts:
                pipe.unwatch()
                if cancel == b"1":
                    queue.store.mark_canceled(job_id, lost_worker)
                    return "canceled"
                message = f"the worker running it stopped, {attempt} times; submit again"
                queue.store.fail(job_id, JobError(code="worker_lost", message=message), lost_worker)
                return "failed"
            pipe.multi()
            _next_attempt(queue, pipe, job_id, params, attempt)
            pipe.execute()
            return "requeued"
        except (WatchError, NoSuchJobError):
            return "skipped"  # it changed under us; the next round sees it as it is now


def rescue_unstarted(queue: JobQueue, model: str) -> int:
    """Requeue jobs a worker took off the queue but never started (it died in between): they
    sit in RQ's intermediate list or started registry while their record still says queued."""
    rq = rq_queue(queue.redis, model)
    taken = {raw.decode() for raw in queue.redis.lrange(rq.intermediate_queue_key, 0, -1)}
    # cleanup=False: RQ's own abandoned-job handling belongs to workers, not to this process.
    taken |= set(StartedJobRegistry(queue=rq).get_job_ids(cleanup=False))
    rescued = 0
    for rq_id in taken:
        job_id = rq_id.split("-")[0]
        key = queue.store.key(job_id)
        with queue.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                status, attempt = pipe.hmget(key, "status", "attempt")
                attempt = int(attempt or 1)
                if status != b"queued" or rq_job_id(job_id, attempt) != rq_id:
                    continue
                # A live worker starts what it takes within milliseconds: wait a heartbeat
                # timeout before calling it stranded.
                seen = f"ldm:stranded:{rq_id}"
                pipe.set(seen, queue.store.now(), nx=True, ex=3600)
                if queue.store.now() - float(pipe.get(seen) or 0) < GONE_AFTER_S:
                    continue
                params = JobParams.model_validate_json(pipe.hget(key, "request"))
                pipe.multi()
                _next_attempt(queue, pipe, job_id, params, attempt)
                pipe.delete(seen)
                pipe.execute()
                rescued += 1
                log.warning("job %s was taken but never started; queued again", job_id)
            except (WatchError, NoSuchJobError):
                continue
    return rescued


def recover_lost_jobs(
    queue: JobQueue, workers: WorkerRegistry, models: list[str], max_attempts: int
) -> int:
    """One round over every running job and every served model's queue; returns how many
    jobs were acted on. Safe from every API replica at once: each move is a transaction on
    the job's own record.

    Nothing is acted on until Redis has been reachable for `GONE_AFTER_S`: a worker silent
    through an outage is not dead, and running its jobs again would run them twice."""
    calm = workers.calm_for()
    if calm < GONE_AFTER_S:
        log.info("Redis was away %.0f s ago; lost jobs are looked for once it is calm", calm)
        return 0
    acted = 0
    for job_id in queue.store.running():
        job = queue.store.get(job_id)
        if job is None or not job.worker or workers.is_live(job.model, job.worker):
            continue
        outcome = retry_lost(queue, job_id, job.request, job.worker, max_attempts)
        if outcome != "skipped":
            log.warning("job %s lost its worker %s: %s", job_id, job.worker, outcome)
            acted += 1
    for model in models:
        acted += rescue_unstarted(queue, model)
    return acted
