"""Cluster figures read from a real Redis as the API's /metrics reads them."""

import time
from datetime import UTC, datetime

from redis import Redis

from app.core.jobs import rq_job_id
from app.core.queue import JobQueue, rq_queue
from app.core.stats import FINISHED_KEY, ModelStats, read_cluster_stats
from app.core.store import Claim
from app.core.workers import GONE_AFTER_S, WorkerRegistry
from tests.factories import make_params, submitted

MODELS = ["tiny-sd", "other"]


def test_an_idle_cluster_reads_as_zeros(redis: Redis) -> None:
    stats = read_cluster_stats(redis, MODELS)
    assert stats.models == {model: ModelStats() for model in MODELS}
    assert stats.models["tiny-sd"].oldest_age == 0.0
    assert stats.finished == {}


def test_queued_running_workers_and_finished_per_model(queue: JobQueue, redis: Redis) -> None:
    waiting = [submitted(queue, make_params()) for _ in range(3)]
    submitted(queue, make_params(model="other"))
    queue_key = rq_queue(redis, "tiny-sd").key
    # A worker takes the first waiting job of tiny-sd out of the queue and runs it.
    started = queue.store.claim(
        "w1", [Claim(waiting[0], rq_job_id(waiting[0], 1), queue_key, total_steps=4)]
    )
    assert started == [waiting[0]]
    registry = WorkerRegistry(redis)
    registry.beat("tiny-sd", "w1")
    registry.beat("tiny-sd", "w2")
    # A worker silent for longer than GONE_AFTER_S (by Redis' clock) is not counted.
    registry.beat("other", "gone", now=queue.store.now() - GONE_AFTER_S - 1)
    redis.hincrby(FINISHED_KEY, "tiny-sd|succeeded", 5)
    redis.hincrby(FINISHED_KEY, "stabilityai/sd-turbo|failed", 1)  # a model name with a slash

    stats = read_cluster_stats(redis, MODELS)
    tiny, other = stats.models["tiny-sd"], stats.models["other"]
    assert (tiny.queued, tiny.running, tiny.live_workers) == (2, 1, 2)
    assert (other.queued, other.running, other.live_workers) == (1, 0, 0)
    assert stats.finished == {("tiny-sd", "succeeded"): 5, ("stabilityai/sd-turbo", "failed"): 1}


def test_oldest_age_is_how_long_the_head_of_the_queue_has_waited(
    queue: JobQueue, redis: Redis
) -> None:
    first = submitted(queue, make_params())
    submitted_at = time.time()
    deadline = submitted_at + 10
    # Poll until a second has passed by Redis' clock: the age grows with it.
    while (age := read_cluster_stats(redis, MODELS).models["tiny-sd"].oldest_age) < 1.0:
        assert time.time() < deadline, f"age stuck at {age}"
        time.sleep(0.05)
    submitted(queue, make_params())  # a newer job behind it does not make the queue younger
    age = read_cluster_stats(redis, MODELS).models["tiny-sd"].oldest_age
    assert 1.0 <= age <= time.time() - submitted_at + 0.5
    # Once the head is canceled, the younger job is the oldest waiting.
    queue.cancel(first, "tiny-sd")
    assert read_cluster_stats(redis, MODELS).models["tiny-sd"].oldest_age < 1.0


def test_a_retry_at_the_head_counts_from_the_job_creation(queue: JobQueue, redis: Redis) -> None:
    job_id = submitted(queue, make_params())
    queue_key = rq_queue(redis, "tiny-sd").key
    redis.delete(queue_key)  # a worker took attempt 1, then died: attempt 2 waits
    with redis.pipeline() as pipe:
        queue.enqueue_attempt(job_id, make_params(), pipe, attempt=2)
        pipe.execute()
    assert redis.lindex(queue_key, 0) == rq_job_id(job_id, 2).encode()
    created = datetime.fromtimestamp(queue.store.now() - 100, UTC).isoformat()
    redis.hset(queue.store.key(job_id), "created_at", created)  # submitted 100 s ago
    assert 100 <= read_cluster_stats(redis, MODELS).models["tiny-sd"].oldest_age < 110


def test_a_long_queue_costs_no_more_commands(queue: JobQueue, redis: Redis) -> None:
    submitted(queue, make_params())
    before = _commands_run(redis)
    read_cluster_stats(redis, MODELS)
    few = _commands_run(redis) - before
    for _ in range(20):
        submitted(queue, make_params())
    before = _commands_run(redis)
    read_cluster_stats(redis, MODELS)
    assert _commands_run(redis) - before == few  # none per waiting job


def _commands_run(redis: Redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])
