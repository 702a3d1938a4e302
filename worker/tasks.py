"""The task RQ calls by its dotted path (`app.core.queue.TASK`), and the worker's one global."""

from app.core.jobs import JobParams
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
