"""Cluster-wide job figures read from Redis: what every API replica reports at a scrape."""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from redis import Redis
from rq import Queue

from app.core.models import queue_name
from app.core.store import RUNNING_KEY, JobStore
from app.core.workers import GONE_AFTER_S, WorkerRegistry

# Jobs that reached a terminal state, by "<model>|<status>" (incremented by the store's Lua
# scripts on every terminal transition, wherever it happens).
FINISHED_KEY = "ldm:stats:finished"


@dataclass(frozen=True)
class ModelStats:
    """One model's queue and workers right now."""

    queued: int = 0
    running: int = 0
    # Seconds the job at the head of the queue has waited since it was created: 0 when the
    # queue is empty, None when its head's record is gone (it vanished between reads).
    oldest_age: float | None = 0.0
    live_workers: int = 0


@dataclass(frozen=True)
class ClusterStats:
    """Per-model figures for the models asked about, and finished-job counts of every model."""

    models: dict[str, ModelStats] = field(default_factory=dict)
    finished: dict[tuple[str, str], int] = field(default_factory=dict)


def _created(raw: bytes | None) -> float | None:
    return None if raw is None else datetime.fromisoformat(raw.decode()).timestamp()


def read_cluster_stats(redis: Redis, models: list[str]) -> ClusterStats:
    """Everything in two pipelined round trips, however many models and jobs; ages follow
    Redis' clock, so every replica reports the same figures. Raises `RedisError`."""
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(FINISHED_KEY)
    pipe.zrange(RUNNING_KEY, 0, -1)
    for model in models:
        key = Queue.redis_queue_namespace_prefix + queue_name(model)
        pipe.llen(key)
        pipe.lindex(key, 0)  # RQ pops from the left: the head has waited longest
        # The whole (small: stale beats are trimmed) set, counted here against Redis' time.
        pipe.zrange(WorkerRegistry.key(model), 0, -1, withscores=True)
    (seconds, micros), finished_raw, running_raw, *per_model = pipe.execute()
    now = seconds + micros / 1e6

    running_ids = [raw.decode() for raw in running_raw]
    heads: dict[str, str] = {}
    for model, head in zip(models, per_model[1::3], strict=True):
        if head is not None:
            heads[model] = head.decode().split("-", 1)[0]  # "<job>-<attempt>" for retries
    pipe = redis.pipeline(transaction=False)
    for job_id in heads.values():
        pipe.hget(JobStore.key(job_id), "created_at")
    for job_id in running_ids:
        pipe.hget(JobStore.key(job_id), "model")
    answers = pipe.execute() if heads or running_ids else []
    created = dict(zip(heads, answers[: len(heads)], strict=True))
    running = Counter(raw.decode() for raw in answers[len(heads) :] if raw is not None)

    stats = {}
    for index, model in enumerate(models):
        queued, _, beats = per_model[3 * index : 3 * index + 3]
        created_at = _created(created.get(model))
        if model not in heads:
            oldest_age: float | None = 0.0  # nothing waits
        else:
            oldest_age = None if created_at is None else max(0.0, now - created_at)
        stats[model] = ModelStats(
            queued=int(queued),
            running=running.get(model, 0),
            oldest_age=oldest_age,
            live_workers=sum(1 for _, beat in beats if beat > now - GONE_AFTER_S),
        )
    finished = {}
    for name, count in finished_raw.items():
        model, _, status = name.decode().rpartition("|")
        finished[(model, status)] = int(count)
    return ClusterStats(stats, finished)
