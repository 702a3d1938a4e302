"""Per-tenant usage as Prometheus counters, read from Redis at each scrape (every replica shows
the whole service's totals, which only grow). Tenants are labels only when configured (keys
in LDM_API_KEYS, or `public` on an open service): the rest are summed as `other`, so the
label set stays bounded whatever ends up in Redis."""

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from app.core.usage import MEASURES, Usage

OTHER = "other"
HELP = {
    "jobs": "Jobs ended (cached ones included), per tenant",
    "images": "Images delivered, per tenant",
    "steps": "Denoising steps run, per tenant",
    "worker_seconds": "Worker seconds used (a batch's time shared by its rows), per tenant",
    "cached_jobs": "Jobs answered from the exact-result cache, per tenant",
}


class UsageCollector(Collector):
    """`ldm_usage_<measure>_total{tenant, model}` for every measure of app/core/usage.py."""

    def __init__(self, usage: Usage, tenants: Iterable[str]) -> None:
        self.usage = usage
        self.tenants = set(tenants)

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            totals = self.usage.totals()
        except RedisError:
            return  # ldm_redis_up says so; a missing sample is better than a wrong one
        summed: dict[tuple[str, str, str], float] = {}
        for (tenant, model), counts in totals.items():
            label = tenant if tenant in self.tenants else OTHER
            for measure, value in counts.items():
                key = (measure, label, model)
                summed[key] = summed.get(key, 0.0) + value
        for measure in MEASURES:
            family = CounterMetricFamily(
                f"ldm_usage_{measure}", HELP[measure], labels=["tenant", "model"]
            )
            for (name, tenant, model), value in sorted(summed.items()):
                if name == measure:
                    family.add_metric([tenant, model], value)
            yield family
