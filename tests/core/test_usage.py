"""The usage book: each job counted once, per tenant, model and UTC day."""

from datetime import date

from redis import Redis

from app.core.jobs import new_job_id
from app.core.queue import JobQueue
from app.core.usage import Counts, Usage
from tests.factories import make_params


def accepted(queue: JobQueue, tenant: str, model: str = "tiny-sd") -> str:
    job_id = new_job_id()
    queue.submit(job_id, make_params(model=model), tenant)
    return job_id


def test_a_job_is_counted_once_to_its_tenant_model_and_day(queue: JobQueue, redis: Redis) -> None:
    usage = Usage(redis)
    monday, tuesday = date(2026, 12, 7), date(2026, 12, 8)
    job = accepted(queue, "acme")
    assert usage.record(queue.store.key(job), Counts(images=2, steps=8, worker_seconds=1.5), monday)
    # A retried write (a lost reply) books nothing more.
    assert not usage.record(queue.store.key(job), Counts(images=2, steps=8), monday)
    shapes = accepted(queue, "acme", "tiny-shapes")
    usage.record(queue.store.key(shapes), Counts(images=1, steps=20, worker_seconds=0.5), monday)
    later = accepted(queue, "acme")
    usage.record(queue.store.key(later), Counts(images=1, cached_jobs=1), tuesday)
    usage.record(queue.store.key(accepted(queue, "globex")), Counts(images=9, steps=9), monday)
    # A job whose record is gone cannot be booked to anyone.
    assert not usage.record(queue.store.key("j_gone"), Counts(images=1), monday)

    report = usage.report("acme", monday, tuesday)
    rows = [(r.day, r.model, r.jobs, r.images, r.steps, r.worker_seconds, r.cached_jobs)
            for r in report.days]  # fmt: skip
    assert rows == [
        (monday, "tiny-sd", 1, 2, 8, 1.5, 0),
        (monday, "tiny-shapes", 1, 1, 20, 0.5, 0),
        (tuesday, "tiny-sd", 1, 1, 0, 0.0, 1),
    ]
    assert report.total == Counts(jobs=3, images=4, steps=28, worker_seconds=2.0, cached_jobs=1)
    assert usage.report("acme", tuesday, tuesday).total.jobs == 1
    totals = usage.totals()
    assert totals[("acme", "tiny-sd")]["jobs"] == 2
    assert totals[("globex", "tiny-sd")]["images"] == 9
