"""Cluster-wide figures on every API replica's /metrics, read from Redis at scrape time.

Every replica reports the same values (they come from Redis, ages on Redis' clock), so
dashboards aggregate them with max(), never sum().
"""

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from app.core.stats import ClusterStats, read_cluster_stats

log = logging.getLogger(__name__)


class ClusterCollector(Collector):
    """Jobs finished by model and status, queue length and age of its oldest job, running
    jobs and live workers per model; `ldm_redis_up` says whether Redis answered the scrape."""

    def __init__(self, redis: Redis, models: list[str]) -> None:
        self.redis = redis
        self.models = list(models)

    def collect(self) -> Iterator[Metric]:
        try:
            stats = read_cluster_stats(self.redis, self.models)
        except RedisError:
            # A scrape must not fail because Redis is down: the figures are left out (absent,
            # not zero) and readyz answers 503.
            log.warning("metrics: Redis does not answer; cluster figures left out")
            stats = None
        up = GaugeMetricFamily("ldm_redis_up", "1 when this scrape could read Redis, else 0")
        up.add_metric([], 0 if stats is None else 1)
        yield up
        if stats is not None:
            yield from _families(stats)


def _families(stats: ClusterStats) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "ldm_jobs_finished",
        "Jobs that reached a terminal state, cluster-wide (from Redis)",
        labels=["model", "status"],
    )
    for (model, status), count in sorted(stats.finished.items()):
        finished.add_metric([model, status], count)
    yield finished

    gauges = {
        "queued": GaugeMetricFamily(
            "ldm_queue_depth", "Jobs waiting in the model's queue", labels=["model"]
        ),
        "running": GaugeMetricFamily(
            "ldm_jobs_running", "Jobs running on some worker", labels=["model"]
        ),
        "oldest_age": GaugeMetricFamily(
            "ldm_queue_oldest_age_seconds",
            "How long the job at the head of the queue has waited since it was created "
            "(0 when nothing waits)",
            labels=["model"],
        ),
        "live_workers": GaugeMetricFamily(
            "ldm_live_workers", "Workers that sent a heartbeat within 30 s", labels=["model"]
        ),
    }
    for model, figures in sorted(stats.models.items()):
        for name, family in gauges.items():
            value = getattr(figures, name)
            if value is not None:
                family.add_metric([model], value)
    yield from gauges.values()
