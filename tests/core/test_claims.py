"""How jobs start: the store's claim takes them off their queue and starts them in one step,
against a real Redis. The RQ job of a claimed job stays (the worker keeps RQ's registries
with it) unless nobody will run it."""

from app.core.jobs import JobStatus
from app.core.queue import JobQueue, rq_queue
from app.core.store import Claim
from tests.factories import make_params, submitted

MODEL = "tiny-sd"


def test_a_claim_starts_its_jobs_and_takes_them_off_the_queue(queue: JobQueue) -> None:
    params = make_params()
    taken_by_rq, waiting, other = (submitted(queue, params) for _ in range(3))
    rq = rq_queue(queue.redis, MODEL)
    rq.remove(taken_by_rq)  # a job the worker already took off the queue itself
    claims = [
        Claim(taken_by_rq, "", rq.key, 4),
        Claim(waiting, waiting, rq.key, 4),
    ]
    assert queue.store.claim("w1", claims) == [taken_by_rq, waiting]
    for job_id in (taken_by_rq, waiting):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.RUNNING and job.worker == "w1"
        assert (job.progress.step, job.progress.total_steps) == (0, 4)
        assert job.started_at is not None
    assert set(queue.store.running()) == {taken_by_rq, waiting}
    assert rq.job_ids == [other]
    # Off the queue, so no RQ worker runs it a second time; but RQ still knows it.
    assert rq.fetch_job(waiting) is not None
    assert queue.position(waiting, MODEL) is None and queue.position(other, MODEL) == 0


def test_a_job_canceled_or_claimed_elsewhere_is_not_started_again(queue: JobQueue) -> None:
    params = make_params()
    canceled, contested = submitted(queue, params), submitted(queue, params)
    queue.cancel(canceled, MODEL)
    key = rq_queue(queue.redis, MODEL).key
    assert queue.store.claim("w1", [Claim(contested, contested, key, 4)]) == [contested]
    claims = [Claim(canceled, canceled, key, 4), Claim(contested, contested, key, 4)]
    assert queue.store.claim("w2", claims) == []
    assert queue.store.get(canceled).status is JobStatus.CANCELED
    assert queue.store.get(contested).worker == "w1"
    assert rq_queue(queue.redis, MODEL).fetch_job(contested) is not None  # still w1's to book


def test_a_queued_job_whose_record_is_gone_is_dropped_for_good(queue: JobQueue) -> None:
    expired, kept = submitted(queue, make_params()), submitted(queue, make_params(seed=2))
    queue.redis.delete(queue.store.key(expired))  # its record expired while it waited
    rq = rq_queue(queue.redis, MODEL)
    claims = [Claim(expired, expired, rq.key, 4), Claim(kept, kept, rq.key, 4)]
    assert queue.store.claim("w1", claims) == [kept]
    assert rq.job_ids == [] and rq.fetch_job(expired) is None  # nobody will run it
    assert rq.fetch_job(kept) is not None


def test_progress_is_one_call_per_active_set_and_only_the_owner_writes(
    queue: JobQueue,
) -> None:
    params = make_params()
    key = rq_queue(queue.redis, MODEL).key
    ids = [submitted(queue, params) for _ in range(3)]
    queue.store.claim("w1", [Claim(job_id, job_id, key, 4) for job_id in ids])
    queue.cancel(ids[1], MODEL)
    assert queue.store.report_progress(ids, 2, "w1").canceled == {ids[1]}  # one step for all
    assert [queue.store.get(job_id).progress.step for job_id in ids] == [2, 2, 2]
    assert queue.store.report_progress(ids, [4, 1, 3], "w1").canceled == {ids[1]}  # each its own
    assert [queue.store.get(job_id).progress.step for job_id in ids] == [4, 1, 3]
    flags = queue.store.report_progress(ids, [4, 4, 4], "w-given-up-for-dead", totals=[9, 9, 9])
    assert [queue.store.get(job_id).progress.step for job_id in ids] == [4, 1, 3]
    assert flags.lost == set(ids)  # that worker learns they are not its own any more
    assert all(queue.store.get(job_id).progress.total_steps == 4 for job_id in ids)
    # The worker may correct a total (what its scheduler really runs), per job.
    queue.store.report_progress(ids, [1, 1, 1], "w1", totals=[4, 5, 4])
    assert [queue.store.get(job_id).progress.total_steps for job_id in ids] == [4, 5, 4]


def test_progress_of_an_ended_job_is_not_written(queue: JobQueue) -> None:
    key = rq_queue(queue.redis, MODEL).key
    done, running = submitted(queue, make_params()), submitted(queue, make_params())
    queue.store.claim("w1", [Claim(done, done, key, 4), Claim(running, running, key, 4)])
    assert queue.store.mark_canceled(done, "w1")
    flags = queue.store.report_progress([done, running], [3, 3], "w1")
    assert flags.lost == {done} and flags.canceled == set()
    assert queue.store.get(done).progress.step == 0
    assert queue.store.get(running).progress.step == 3


def test_a_claim_retried_after_a_lost_reply_keeps_what_it_started(queue: JobQueue) -> None:
    params = make_params()
    job_id = submitted(queue, params)
    rq = rq_queue(queue.redis, MODEL)
    claims = [Claim(job_id, job_id, rq.key, 4)]
    assert queue.store.claim("w1", claims) == [job_id]
    assert queue.store.claim("w1", claims) == [job_id]  # redis-py's retry: still ours
    assert queue.store.claim("w2", claims) == []
    assert queue.store.get(job_id).worker == "w1"
    assert rq.fetch_job(job_id) is not None  # the retry did not drop w1's RQ job
