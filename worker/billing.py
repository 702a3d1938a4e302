"""What a worker books once the owning attempt of a job has ended it: the job's usage to its
tenant (app/core/usage.py) and, for a success, its result to the exact-result cache
(app/core/result_cache.py), in one round trip."""

import logging

from redis.exceptions import RedisError

from app.core.result_cache import ResultCache
from app.core.usage import Counts, Usage

log = logging.getLogger(__name__)


class Billing:
    """Books ended jobs; never raises: a lost count must not fail a job whose images exist."""

    def __init__(self, usage: Usage, cache: ResultCache, model: str, weights: str | None) -> None:
        self.usage = usage
        self.cache = cache
        self.model = model
        self.weights = weights  # the version of the weights this worker runs (None: unknown)

    def publish(self) -> None:
        """Say which weights' version this worker runs (raises `RedisError`: at registration,
        which retries)."""
        if self.weights is not None:
            self.cache.publish(self.model, self.weights)

    def ended(self, job_id: str, used: Counts) -> None:
        """Book `used` to the job's tenant; with images, register the job's result."""
        try:
            with self.usage.redis.pipeline(transaction=False) as pipe:
                self.usage.record(self.cache.store.key(job_id), used, pipe=pipe)
                if used.images and self.weights is not None:
                    self.cache.register(job_id, self.weights, pipe=pipe)
                pipe.execute()
        except RedisError:
            log.warning("could not book the usage of job %s", job_id)
