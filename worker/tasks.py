"""The task RQ calls by its dotted path (`app.core.queue.TASK`), and the worker's one global."""

from types import TracebackType

from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob

from app.core.jobs import JobError, JobParams
from app.core.settings import get_settings
from app.core.store import JobStore
from worker.runner import Runner

# The resident pipeline (inside its runner): loaded once per process by `worker.main`.
_runner: Runner | None = None


def install(runner: Runner) -> None:
    """Make `runner` the one that runs this process's jobs."""
    global _runner
    _runner = runner


def run_job(job_id: str, params: dict) -> None:
    """Entry point of every queued job: the payload is the job id and validated parameters."""
    if _runner is None:
        raise RuntimeError("no resident pipeline: start workers with `python -m worker`")
    _runner.run(job_id, JobParams.model_validate(params))


def on_failure(
    job: RQJob,
    connection: Redis,
    exc_type: type[BaseException],
    exc_value: BaseException,
    traceback: TracebackType | None,
) -> None:
    """RQ's failure callback: ends the job record when the runner could not (a no-op otherwise).

    It runs for jobs whose worker died mid-job (RQ finds them abandoned) and for payloads
    that never reached the runner; a job the runner already ended stays as it is.
    """
    store = JobStore(connection, get_settings().result_ttl)
    job_id = job.args[0]  # the RQ job of a retry has an id of its own
    if issubclass(exc_type, AbandonedJobError):
        # Only while that worker still owns the job: it may be running again elsewhere.
        error = JobError(code="worker_lost", message="the worker stopped during the job")
        store.fail(job_id, error, job.worker_name or "")
    else:
        store.fail(job_id, JobError(code="internal", message="the worker failed to run the job"))
