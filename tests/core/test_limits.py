"""Backpressure on a real Redis: token buckets per tenant, and the observed service rate."""

import pytest
from redis import Redis

from app.core.limits import WINDOW_S, RateLimiter, ServiceRate


def test_bursts_pass_then_the_rate_holds(redis: Redis) -> None:
    limiter = RateLimiter(redis, rate=2, burst=3)
    assert [limiter.acquire("alice") for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("alice")
    assert wait is not None and 0 < wait <= 0.5  # one token comes back every 1/rate s
    assert limiter.acquire("bob") is None  # tenants do not share a bucket


def test_retry_after_follows_the_drain_rate(redis: Redis) -> None:
    rate = ServiceRate(redis)
    assert rate.retry_after("tiny-sd", excess=1) == 600  # nothing drains: come back much later
    for i in range(20):
        rate.record("tiny-sd", f"j{i}")
    rate.record("tiny-sd", *[f"batch-{i}" for i in range(10)])  # a worker's finished group
    assert rate.per_second("tiny-sd") == pytest.approx(30 / WINDOW_S)
    assert rate.retry_after("tiny-sd", excess=3) == 6  # 3 jobs at 0.5 jobs/s
    assert rate.retry_after("other", excess=1) == 600
