"""Each state change announces itself in the same atomic step: an event on the job's stream,
a webhook booking when the job asked for it, the finished-jobs tally (real Redis)."""

from redis import Redis

from app.core.jobs import JobError, JobStatus, Webhook, new_job_id
from app.core.queue import JobQueue, rq_queue
from app.core.store import Claim
from tests.factories import make_params

PARAMS = make_params(num_inference_steps=4)


def submit(queue: JobQueue, *events: str) -> str:
    job_id = new_job_id()
    webhook = Webhook(url="https://hooks.example.com/ldm", events=list(events)) if events else None
    queue.accept(job_id, PARAMS, "t1", webhook=webhook)
    return job_id


def stream(redis: Redis, job_id: str) -> list[dict[str, str]]:
    entries = redis.xrange(f"ldm:job:{job_id}:events")
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def bookings(redis: Redis) -> list[tuple[str, str]]:
    members = [raw.decode().split("|") for raw in redis.zrange("ldm:webhooks", 0, -1)]
    return [(job_id, event) for job_id, event, _ in members]


def claim(queue: JobQueue, job_id: str) -> None:
    queue_key = rq_queue(queue.redis, PARAMS.model).key
    assert queue.store.claim("w1", [Claim(job_id, job_id, queue_key, 4)]) == [job_id]


def test_a_job_life_is_on_its_stream_and_the_tally(queue: JobQueue, redis: Redis) -> None:
    job_id = submit(queue)
    claim(queue, job_id)
    queue.store.report_progress([job_id], 1, "w1")
    queue.store.fail(job_id, JobError(code="internal", message="x"), "w1")
    assert stream(redis, job_id) == [
        {"type": "status", "status": "queued"},
        {"type": "status", "status": "running"},
        {"type": "progress", "step": "1", "total_steps": "4"},
        {"type": "status", "status": "failed"},
    ]
    assert 0 < redis.ttl(f"ldm:job:{job_id}:events") <= queue.store.result_ttl
    assert redis.hgetall("ldm:stats:finished") == {b"tiny-sd|failed": b"1"}
    assert bookings(redis) == []  # no webhook asked for


def test_a_canceled_queued_job_is_announced(queue: JobQueue, redis: Redis) -> None:
    job_id = submit(queue, "completed")
    assert queue.cancel(job_id, PARAMS.model) is JobStatus.QUEUED
    assert stream(redis, job_id)[-1] == {"type": "status", "status": "canceled"}
    assert bookings(redis) == [(job_id, "completed")]
    assert redis.hget("ldm:stats:finished", "tiny-sd|canceled") == b"1"


def test_webhooks_are_booked_for_the_events_asked_for(queue: JobQueue, redis: Redis) -> None:
    job_id = submit(queue, "start", "progress", "completed")
    only_done = submit(queue, "completed")
    for job in (job_id, only_done):
        claim(queue, job)
    for step in (1, 2, 3, 4):  # within a second: the first and the last step are booked
        queue.store.report_progress([job_id, only_done], step, "w1")
    for job in (job_id, only_done):
        queue.store.mark_canceled(job, "w1")
    assert sorted(bookings(redis)) == sorted(
        [(job_id, "start"), (job_id, "completed"), (only_done, "completed")]
        + [(job_id, "progress")] * len(progress_steps(redis, job_id))
    )
    # Not every step: at most one a second, and always the first and the last.
    steps = progress_steps(redis, job_id)
    assert steps[0] == 1 and steps[-1] == 4 and len(steps) in (2, 3)


def progress_steps(redis: Redis, job_id: str) -> list[int]:
    """The steps of the job's booked progress webhooks, read from the entries they name."""
    steps = []
    for member in redis.zrange("ldm:webhooks", 0, -1):
        booked_job, event, entry_id = member.decode().split("|")
        if booked_job == job_id and event == "progress":
            (_, fields), = redis.xrange(f"ldm:job:{job_id}:events", entry_id, entry_id)
            steps.append(int(fields[b"step"]))
    return sorted(steps)
