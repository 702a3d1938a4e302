from redis import Redis

from app.core.workers import GONE_AFTER_S, WorkerRegistry


def test_live_workers_per_model(redis: Redis) -> None:
    registry = WorkerRegistry(redis)
    registry.beat("tiny-sd", "w1", now=1000)
    registry.beat("tiny-sd", "w2", now=1000)
    registry.beat("sd-turbo", "w3", now=1000)
    assert registry.live("tiny-sd", now=1001) == 2
    assert registry.live("sd-turbo", now=1001) == 1
    registry.leave("tiny-sd", "w1")
    assert registry.live("tiny-sd", now=1001) == 1


def test_a_silent_worker_is_gone_within_a_minute(redis: Redis) -> None:
    registry = WorkerRegistry(redis)
    registry.beat("tiny-sd", "dead", now=1000)
    registry.beat("tiny-sd", "alive", now=1000)
    registry.beat("tiny-sd", "alive", now=1000 + GONE_AFTER_S)
    assert GONE_AFTER_S < 60
    assert registry.live("tiny-sd", now=1000 + GONE_AFTER_S + 1) == 1
    assert redis.zscore("ldm:workers:tiny-sd", "dead") is None  # pruned, not kept for ever
