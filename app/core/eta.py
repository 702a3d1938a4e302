"""Honest waiting information: when a queued or running job's images should be ready.

From measured figures only (`ServiceRate.pace`): a queued job waits for the jobs ahead of it
to start, at the rate jobs finish now, then runs its steps at the pace jobs run now; a
running job's steps go on at the pace it has had so far."""

from datetime import datetime

from app.core.jobs import Job, JobStatus
from app.core.limits import Pace


def eta_seconds(job: Job, pace: Pace, now: datetime) -> float | None:
    """Seconds until the job's images should be ready; None when finished or unknown (no job
    of the model has finished lately, or jobs wait ahead and none has finished)."""
    if job.status is JobStatus.RUNNING and job.progress is not None:
        step, total = job.progress.step, job.progress.total_steps
        per_step = pace.step_s
        if step >= 1 and job.started_at is not None and not job.paused:
            per_step = (now - job.started_at).total_seconds() / step
        return None if per_step is None else round(max(0.0, (total - step) * per_step), 3)
    if job.status is not JobStatus.QUEUED or pace.step_s is None:
        return None
    ahead = job.queue_position or 0
    if ahead and pace.per_second <= 0:
        return None
    wait = ahead / pace.per_second if ahead else 0.0
    return round(wait + job.request.denoising_steps * pace.step_s, 3)
