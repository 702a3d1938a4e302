"""The task RQ names by its dotted path (`app.core.queue.TASK`), and the worker's one global.

Engine workers claim RQ jobs themselves (worker/claims.py) and never call `run_job`; it is
there so that a plain `rq worker` pointed at the queue fails loudly instead of losing jobs."""

from types import TracebackType

from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob

from app.core.jobs import JobError, attempt_of
from app.core.settings import get_settings
from app.core.store import JobStore
from worker.serve import Server

# The resident pipeline (inside its server): loaded once per process by `worker.main`.
_server: Server | None = None


def install(server: Server) -> None:
    """Make `server` the one that runs this process's jobs."""
    global _server
    _server = server


def run_job(job_id: str, params: dict) -> None:
    """Entry point RQ would call; jobs are run by the engine, started with `python -m worker`."""
    raise RuntimeError("jobs run on the step engine: start workers with `python -m worker`")


def on_failure(
    job: RQJob,
    connection: Redis,
    exc_type: type[BaseException],
    exc_value: BaseException,
    traceback: TracebackType | None,
) -> None:
    """RQ's failure callback: ends the job record when the worker could not (a no-op otherwise).

    It runs for jobs whose worker died mid-job (RQ finds them abandoned) and for payloads
    a plain RQ worker took; a job the engine already ended stays as it is, and so does a job
    that runs again meanwhile: each RQ job is one attempt, and ends only that attempt.
    """
    store = JobStore(connection, get_settings().result_ttl)
    job_id, attempt = attempt_of(job.id)
    if issubclass(exc_type, AbandonedJobError):
        # Only while that worker still owns the job: it may be running again elsewhere.
        error = JobError(code="worker_lost", message="the worker stopped during the job")
        store.fail(job_id, error, job.worker_name or "", attempt)
    else:
        error = JobError(code="internal", message="the worker failed to run the job")
        store.fail(job_id, error, attempt=attempt)
