"""Live workers per model: each beats every few seconds; a silent one drops out within a minute.

A worker is silent, too, while Redis is away (restarted, failed over, cut off from everyone).
So every beat and every lost-job round also ticks one clock in Redis: a gap between ticks
longer than `OUTAGE_AFTER_S` means nobody could reach Redis, and silence only counts once
Redis has been reachable ("calm") for `GONE_AFTER_S` (see `calm_for`)."""

from redis import Redis

BEAT_EVERY_S = 10.0
# A worker that missed three beats is gone (killed, or cut off from Redis), well within a minute.
GONE_AFTER_S = 30.0
# Ticks come at least every beat of any worker and every housekeeping round of any API replica
# (at most 10 s apart, `Settings.sweep_interval`): a longer gap is an outage of Redis.
OUTAGE_AFTER_S = 15.0
CLOCK_KEY = "ldm:clock"

# KEYS: the clock. ARGV: the outage gap. Returns how long (s) Redis has been calm.
# With an append-only file a restarted Redis keeps its last tick, so the gap shows; without
# one the clock is gone and starts calm now.
TICK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local last = tonumber(redis.call('HGET', KEYS[1], 'tick'))
local calm = tonumber(redis.call('HGET', KEYS[1], 'calm_since'))
if not last or not calm or now - last > tonumber(ARGV[1]) then
  calm = now
  redis.call('HSET', KEYS[1], 'calm_since', tostring(now))
end
redis.call('HSET', KEYS[1], 'tick', tostring(now))
return tostring(now - calm)
"""


def _key(model: str) -> str:
    return f"ldm:workers:{model}"


class WorkerRegistry:
    """Who serves which model, from heartbeats kept in one sorted set per model."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._tick = redis.register_script(TICK)

    @staticmethod
    def key(model: str) -> str:
        """The sorted set of `model`'s workers, scored by their last beat (Redis' clock)."""
        return _key(model)

    def beat(self, model: str, worker: str, now: float | None = None) -> None:
        """Say `worker` is alive and serving `model`; also drops workers long silent."""
        now = self._now() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(_key(model), {worker: now})
        # A live worker pruned here after an outage beats again before anyone may call it
        # gone (`calm_for`).
        pipe.zremrangebyscore(_key(model), "-inf", now - GONE_AFTER_S)
        self._tick(keys=[CLOCK_KEY], args=[OUTAGE_AFTER_S], client=pipe)
        pipe.execute()

    def calm_for(self) -> float:
        """Seconds since Redis was last away (for everyone), ticking the clock. Until that
        reaches `GONE_AFTER_S` a silent worker may only have been unable to beat."""
        return float(self._tick(keys=[CLOCK_KEY], args=[OUTAGE_AFTER_S]))

    def _now(self) -> float:
        # Redis' clock: workers and API replicas on other hosts may disagree about the time.
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def leave(self, model: str, worker: str) -> None:
        """A worker stopping cleanly leaves at once."""
        self.redis.zrem(_key(model), worker)

    def is_live(self, model: str, worker: str) -> bool:
        """Whether `worker` beat for `model` within the last `GONE_AFTER_S` seconds."""
        last = self.redis.zscore(_key(model), worker)
        return last is not None and last > self._now() - GONE_AFTER_S

    def live(self, model: str, now: float | None = None) -> int:
        """How many workers serving `model` beat within the last `GONE_AFTER_S` seconds."""
        now = self._now() if now is None else now
        return int(self.redis.zcount(_key(model), now - GONE_AFTER_S, "+inf"))
