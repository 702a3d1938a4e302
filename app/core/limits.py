"""Backpressure: a per-tenant rate limit and the observed service rate that sizes Retry-After."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

# A token bucket per tenant: refills at `rate` per second up to `burst`; one token a submit.
# Returns {allowed (1/0), seconds until a token is there, as a string}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(math.max(0, (1 - tokens) / rate))}
"""

WINDOW_S = 60  # the service rate is measured over the last minute

# Seconds per denoising step of a model's jobs, claim to stored images (a job's whole run over
# its steps), as an exponentially weighted mean of the jobs that finished lately: the pace
# behind ETAs, at whatever load and batch sizes the workers have now. ARGV: the new figures.
_PACE = """
local mean = tonumber(redis.call('HGET', KEYS[1], 'step_s'))
for _, value in ipairs(ARGV) do
  mean = mean and (0.9 * mean + 0.1 * tonumber(value)) or tonumber(value)
end
redis.call('HSET', KEYS[1], 'step_s', tostring(mean))
redis.call('EXPIRE', KEYS[1], 3600)
"""

# The pace and how many jobs finished in the window, over how long (since the window's first
# finish, so that a service busy only for the last seconds is not read as slow).
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local since = now - ARGV[1]
local first = redis.call('ZRANGEBYSCORE', KEYS[2], since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local count = redis.call('ZCOUNT', KEYS[2], since, '+inf')
local span = first[2] and (now - tonumber(first[2])) or 0
return {redis.call('HGET', KEYS[1], 'step_s') or '', count, tostring(span)}
"""


@dataclass(frozen=True)
class Pace:
    """How fast a model's jobs go now: seconds per denoising step (None before any finished)
    and jobs finished per second."""

    step_s: float | None
    per_second: float


class RateLimiter:
    """Submits per second per tenant, with bursts; shared by every API replica through Redis."""

    def __init__(self, redis: Redis, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._take = redis.register_script(_TAKE)

    def acquire(self, tenant: str) -> float | None:
        """None if the tenant may submit now, else the seconds until it may."""
        allowed, wait = self._take(keys=[f"ldm:rate:{tenant}"], args=[self.rate, self.burst])
        return None if allowed else float(wait)


class ServiceRate:
    """Jobs each model finished in the last minute: how fast its queue drains."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pace = redis.register_script(_PACE)
        self._read = redis.register_script(_READ)

    @staticmethod
    def _key(model: str) -> str:
        return f"ldm:finished:{model}"

    @staticmethod
    def _pace_key(model: str) -> str:
        return f"ldm:pace:{model}"

    def record(self, model: str, *job_ids: str, step_s: Sequence[float] = ()) -> None:
        """Count finished jobs (any terminal state that took a worker's time), with the
        seconds per step of those that ran to the end."""
        now = self._now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self._key(model), dict.fromkeys(job_ids, now))
        pipe.zremrangebyscore(self._key(model), "-inf", now - WINDOW_S)
        pipe.expire(self._key(model), WINDOW_S * 2)
        if step_s:
            self._pace(keys=[self._pace_key(model)], args=list(step_s), client=pipe)
        pipe.execute()

    def pace(self, model: str) -> Pace:
        """The model's pace now (one round trip)."""
        step_s, count, span = self._read(
            keys=[self._pace_key(model), self._key(model)], args=[WINDOW_S]
        )
        # A single finish tells no rate; over less than a second, count it as one.
        per_second = (int(count) - 1) / max(1.0, float(span)) if int(count) > 1 else 0.0
        return Pace(float(step_s) if step_s else None, per_second)

    def per_second(self, model: str) -> float:
        """Finished jobs per second over the last minute."""
        return self.redis.zcount(self._key(model), self._now() - WINDOW_S, "+inf") / WINDOW_S

    def retry_after(self, model: str, excess: int, floor: int = 1, ceiling: int = 600) -> int:
        """Seconds until `excess` more jobs have drained at the observed rate (bounded)."""
        rate = self.per_second(model)
        if rate <= 0:
            return ceiling if excess > 0 else floor
        return max(floor, min(ceiling, math.ceil(excess / rate)))

    def _now(self) -> float:
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6
