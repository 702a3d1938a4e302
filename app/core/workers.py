"""Live workers per model: each beats every few seconds; a silent one drops out within a minute."""

from redis import Redis

BEAT_EVERY_S = 10.0
# A worker that missed three beats is gone (killed, or cut off from Redis), well within a minute.
GONE_AFTER_S = 30.0


def _key(model: str) -> str:
    return f"ldm:workers:{model}"


class WorkerRegistry:
    """Who serves which model, from heartbeats kept in one sorted set per model."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def key(model: str) -> str:
        """The sorted set of `model`'s workers, scored by their last beat (Redis' clock)."""
        return _key(model)

    def beat(self, model: str, worker: str, now: float | None = None) -> None:
        """Say `worker` is alive and serving `model`; also drops workers long silent."""
        now = self._now() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(_key(model), {worker: now})
        pipe.zremrangebyscore(_key(model), "-inf", now - GONE_AFTER_S)
        pipe.execute()

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
