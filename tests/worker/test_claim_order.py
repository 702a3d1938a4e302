"""Which waiting jobs a worker takes at a step boundary (worker.claims with the engine's
admission): queue order while they fit their latent shape's room, nobody passing a job that
waits, retried jobs alone. Real Redis; a job's cost is a stand-in (images x pixels in 64x64
units), the model is beside the point."""

import time
from collections.abc import Callable

from app.core.jobs import JobParams, JobStatus
from app.core.queue import JobQueue, rq_queue
from app.core.recovery import retry_lost
from app.core.store import Claim
from tests.factories import make_params, submitted
from worker.claims import LOOK_AHEAD, QUIET_LOOK_S, Claims
from worker.engine.admission import Admission

MODEL = "tiny-sd"


class Costs:
    """The one thing admission asks of a family."""

    @staticmethod
    def cost(params: JobParams) -> int:
        return params.num_images * params.width * params.height // 64**2


def room(max_cost: int, *held: JobParams) -> Callable[[JobParams], bool]:
    """The engine's admission with `held` jobs already in: whether a job fits (counting it)."""
    admission = Admission(Costs(), max_cost)
    for params in held:
        admission.add(params)
    return admission.take


def claims(queue: JobQueue, worker: str = "w1") -> Claims:
    return Claims(queue.redis, queue.store, rq_queue(queue.redis, MODEL).key, worker, MODEL)


def test_waiting_jobs_are_taken_in_queue_order_while_they_fit(queue: JobQueue) -> None:
    running = make_params(seed=9, num_images=2)  # cost 2 of the 64x64 room of 4
    a = submitted(queue, make_params(seed=1, num_images=2))  # cost 2: fits
    b = submitted(queue, make_params(seed=2))  # cost 1: does not fit any more
    c = submitted(queue, make_params(width=128, height=128))  # its own shape: must not pass b
    took = claims(queue).take(room(4, running), engine_empty=False)
    assert [(job.job_id, job.rq_id, job.attempt) for job in took] == [(a, a, 1)]
    assert took[0].params == queue.store.get(a).request
    assert took[0].timeout == queue.job_timeout  # what the API set on its RQ job
    job = queue.store.get(a)
    assert job.status is JobStatus.RUNNING and job.worker == "w1"
    assert job.progress.total_steps == 4
    assert rq_queue(queue.redis, MODEL).job_ids == [b, c]
    assert queue.store.get(b).status is JobStatus.QUEUED
    # Once there is room, b goes first; a shape with nothing in it takes any one job.
    took = claims(queue).take(room(4, running), engine_empty=False)
    assert [job.job_id for job in took] == [b, c]


def test_a_full_shape_does_not_hold_back_another(queue: JobQueue) -> None:
    full = make_params(num_images=4)
    big = submitted(queue, make_params(width=128, height=128, num_images=3))  # cost 12 > 4
    small = submitted(queue, make_params(seed=1))
    took = claims(queue).take(room(4, full), engine_empty=False)
    assert [job.job_id for job in took] == [big]
    assert claims(queue).take(room(4, full), engine_empty=False) == []
    assert [job.job_id for job in claims(queue).take(room(4), True)] == [small]


def test_nothing_waits_for_a_batch_to_fill(queue: JobQueue) -> None:
    assert claims(queue).take(room(7), engine_empty=True) == []
    only = submitted(queue, make_params())
    assert [job.job_id for job in claims(queue).take(room(7), True)] == [only]


def test_a_retried_job_is_taken_alone_into_an_empty_engine(queue: JobQueue) -> None:
    params = make_params()
    first = submitted(queue, params)
    retried = submitted(queue, params)
    key = rq_queue(queue.redis, MODEL).key
    queue.store.claim("w-dead", [Claim(retried, retried, key, 4)])
    assert retry_lost(queue, retried, params, "w-dead", max_attempts=3) == "requeued"
    behind = submitted(queue, params)
    assert [job.job_id for job in claims(queue).take(room(10), True)] == [first]
    assert claims(queue).take(room(10, params), False) == []  # not beside running jobs
    took = claims(queue).take(room(10), True)
    assert [(job.job_id, job.rq_id, job.attempt) for job in took] == [(retried, f"{retried}-2", 2)]
    assert queue.store.get(retried).status is JobStatus.RUNNING
    assert queue.store.get(behind).status is JobStatus.QUEUED  # not with it, either
    assert [job.job_id for job in claims(queue).take(room(10), True)] == [behind]


def test_a_job_whose_record_is_gone_is_skipped(queue: JobQueue) -> None:
    gone, kept = submitted(queue, make_params()), submitted(queue, make_params(seed=2))
    queue.redis.delete(queue.store.key(gone))
    assert [job.job_id for job in claims(queue).take(room(10), True)] == [kept]


def test_another_worker_cannot_take_what_one_claimed(queue: JobQueue) -> None:
    ids = [submitted(queue, make_params(seed=s)) for s in range(3)]
    assert [job.job_id for job in claims(queue, "w1").take(room(2), False)] == ids[:2]
    assert [job.job_id for job in claims(queue, "w2").take(room(10), False)] == ids[2:]
    assert [queue.store.get(job_id).worker for job_id in ids] == ["w1", "w1", "w2"]


def test_one_claim_looks_a_bounded_way_down_the_queue(queue: JobQueue) -> None:
    ids = [submitted(queue, make_params(seed=s)) for s in range(LOOK_AHEAD + 3)]
    took = claims(queue).take(room(1000), engine_empty=True)
    assert [job.job_id for job in took] == ids[:LOOK_AHEAD]
    assert queue.depth(MODEL) == 3


def test_waiting_for_work_takes_nothing(queue: JobQueue) -> None:
    waiter = claims(queue)
    started = time.monotonic()
    assert waiter.wait(0.2) is False
    assert 0.15 <= time.monotonic() - started < 2
    job_id = submitted(queue, make_params())
    assert waiter.wait(1) is True
    assert rq_queue(queue.redis, MODEL).job_ids == [job_id]
    assert queue.store.get(job_id).status is JobStatus.QUEUED


def test_a_look_at_an_empty_queue_keeps_the_next_ones_away_a_moment(queue: JobQueue) -> None:
    # Each look is a round trip: while jobs run, an empty queue is looked at again only
    # after QUIET_LOOK_S, and a look that finds a job ends the quiet at once.
    taker = claims(queue)
    assert not taker.quiet()  # never looked
    assert taker.take(room(4), engine_empty=False) == []
    assert taker.quiet()
    time.sleep(QUIET_LOOK_S)
    assert not taker.quiet()
    job = submitted(queue, make_params())
    assert [c.job_id for c in taker.take(room(4), engine_empty=False)] == [job]
    assert not taker.quiet()
