"""Lost jobs: a running job whose worker stopped beating runs again, a bounded number of times."""

import logging

from app.core.queue import JobQueue
from app.core.workers import WorkerRegistry

log = logging.getLogger(__name__)


def recover_lost_jobs(queue: JobQueue, workers: WorkerRegistry, max_attempts: int) -> int:
    """Requeue (or, after `max_attempts`, fail as `worker_lost`) every running job whose worker
    is gone; returns how many jobs were acted on. Safe from every API replica at once: each
    move is a transaction on the job's own record."""
    acted = 0
    for job_id in queue.store.running():
        job = queue.store.get(job_id)
        if job is None or not job.worker or workers.is_live(job.model, job.worker):
            continue
        outcome = queue.retry(job_id, job.request, job.worker, max_attempts)
        if outcome != "skipped":
            log.warning("job %s lost its worker %s: %s", job_id, job.worker, outcome)
            acted += 1
    return acted
