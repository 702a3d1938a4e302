"""ETAs from measured pace: the pace a model's finished jobs had, the rate they finish at,
and what a queued or running job makes of them."""

from datetime import UTC, datetime, timedelta

from redis import Redis

from app.core.eta import eta_seconds
from app.core.jobs import Job, JobStatus, Progress
from app.core.limits import Pace, ServiceRate
from tests.factories import make_params

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def job(status: JobStatus, **fields) -> Job:
    params = make_params(num_inference_steps=20)
    return Job(id="j_1", status=status, model="tiny-sd", created_at=NOW, request=params, **fields)


def test_a_queued_job_waits_for_those_ahead_then_runs_its_steps() -> None:
    pace = Pace(step_s=0.05, per_second=4.0)
    assert eta_seconds(job(JobStatus.QUEUED, queue_position=0), pace, NOW) == 1.0
    assert eta_seconds(job(JobStatus.QUEUED, queue_position=8), pace, NOW) == 3.0
    # Nothing measured yet, or jobs ahead and none finishing: no number rather than a guess.
    assert eta_seconds(job(JobStatus.QUEUED, queue_position=0), Pace(None, 0.0), NOW) is None
    assert eta_seconds(job(JobStatus.QUEUED, queue_position=3), Pace(0.05, 0.0), NOW) is None


def test_a_running_job_goes_on_at_its_own_pace() -> None:
    pace = Pace(step_s=0.05, per_second=4.0)
    started = NOW - timedelta(seconds=2)
    running = job(JobStatus.RUNNING, started_at=started, progress=Progress(step=5, total_steps=20))
    assert eta_seconds(running, pace, NOW) == 6.0  # 0.4 s a step so far, 15 to go
    fresh = job(JobStatus.RUNNING, started_at=NOW, progress=Progress(step=0, total_steps=20))
    assert eta_seconds(fresh, pace, NOW) == 1.0
    paused = running.model_copy(update={"paused": True})
    assert eta_seconds(paused, pace, NOW) == 0.75  # its own pace counts the pause: the model's
    done = job(JobStatus.SUCCEEDED, progress=Progress(step=20, total_steps=20))
    assert eta_seconds(done, pace, NOW) is None


def test_pace_is_measured_from_finished_jobs(redis: Redis) -> None:
    rate = ServiceRate(redis)
    assert rate.pace("m") == Pace(None, 0.0)
    rate.record("m", "a", step_s=[0.1])
    rate.record("m", "b", "c", step_s=[0.2, 0.2])
    pace = rate.pace("m")
    assert 0.1 < pace.step_s < 0.2  # a mean that follows the latest jobs
    # Three jobs finished just now: a rate over at least a second, not over the whole minute.
    assert 1.0 <= pace.per_second <= 2.0
    rate.record("m", "d")  # canceled or failed: counted, but no pace
    assert rate.pace("m").step_s == pace.step_s
