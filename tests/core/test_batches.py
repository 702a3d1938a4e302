"""Which waiting jobs join a batch, and how a batch starts: against a real Redis."""

from app.core.batches import batch_key, compatible_waiting
from app.core.jobs import JobStatus
from app.core.queue import JobQueue, rq_queue
from app.core.store import Claim
from tests.factories import make_params, submitted

MODEL = "tiny-sd"


def test_jobs_differing_only_in_prompt_seed_count_or_format_batch_together() -> None:
    base = make_params()
    same = [
        make_params(prompt="a blue square"),
        make_params(seed=7, num_images=3),
        make_params(output_format="webp"),
    ]
    different = [
        make_params(width=128),
        make_params(num_inference_steps=5),
        make_params(guidance_scale=1.0),
        make_params(mode="image-to-image", strength=0.5),
        make_params(negative_prompt="blur"),  # SDXL treats none and "" apart
    ]
    assert all(batch_key(p) == batch_key(base) for p in same)
    assert all(batch_key(p) != batch_key(base) for p in different)


def test_waiting_jobs_are_picked_oldest_first_within_the_room(queue: JobQueue) -> None:
    first = make_params()
    a = submitted(queue, make_params(seed=1, num_images=2))
    submitted(queue, make_params(width=128))  # incompatible: stays for another batch
    b = submitted(queue, make_params(seed=2, num_images=3))  # would overflow the room
    c = submitted(queue, make_params(seed=3))
    d = submitted(queue, make_params(seed=4))
    picked = compatible_waiting(queue.redis, queue.store, first, room=4)
    assert [claim.job_id for claim, _ in picked] == [a, c, d]
    assert sum(params.num_images for _, params in picked) == 4
    assert b not in [claim.job_id for claim, _ in picked]


def test_nothing_waits_for_a_batch_to_fill(queue: JobQueue) -> None:
    assert compatible_waiting(queue.redis, queue.store, make_params(), room=7) == []


def test_a_claim_starts_the_batch_and_takes_its_jobs_off_the_queue(queue: JobQueue) -> None:
    params = make_params()
    taken_by_rq, waiting, other = (submitted(queue, params) for _ in range(3))
    rq = rq_queue(queue.redis, MODEL)
    rq.remove(taken_by_rq)  # as RQ's dequeue does
    claims = [
        Claim(taken_by_rq, "", rq.key, 4),
        Claim(waiting, waiting, rq.key, 4),
    ]
    assert queue.store.claim("w1", claims) == [taken_by_rq, waiting]
    for job_id in (taken_by_rq, waiting):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.RUNNING and job.worker == "w1"
        assert job.progress.total_steps == 4
    assert set(queue.store.running()) == {taken_by_rq, waiting}
    assert rq.job_ids == [other]
    assert rq.fetch_job(waiting) is None  # RQ never runs it a second time


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


def test_progress_for_a_batch_is_one_call_and_only_the_owner_writes(queue: JobQueue) -> None:
    params = make_params()
    key = rq_queue(queue.redis, MODEL).key
    ids = [submitted(queue, params) for _ in range(3)]
    queue.store.claim("w1", [Claim(job_id, job_id, key, 4) for job_id in ids])
    queue.cancel(ids[1], MODEL)
    assert queue.store.report_progress(ids, 2, "w1") == {ids[1]}
    assert [queue.store.get(job_id).progress.step for job_id in ids] == [2, 2, 2]
    queue.store.report_progress(ids, 3, "w-given-up-for-dead")
    assert [queue.store.get(job_id).progress.step for job_id in ids] == [2, 2, 2]


def test_a_claim_retried_after_a_lost_reply_keeps_what_it_started(queue: JobQueue) -> None:
    params = make_params()
    job_id = submitted(queue, params)
    claims = [Claim(job_id, job_id, rq_queue(queue.redis, MODEL).key, 4)]
    assert queue.store.claim("w1", claims) == [job_id]
    assert queue.store.claim("w1", claims) == [job_id]  # redis-py's retry: still ours
    assert queue.store.claim("w2", claims) == []
