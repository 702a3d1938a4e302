"""Per-tenant usage that a bill can be made from: jobs, images, denoising steps and worker
seconds, per model and per (UTC) day.

Each job is counted once, when its owning attempt ends it (or when the result cache answers
it): the worker that published counts the steps it ran and its share of the engine's time
(a batch's seconds shared by its members' rows). Runs given up for dead are not billed."""

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta

from pydantic import BaseModel, Field
from redis import Redis
from redis.client import Pipeline

MEASURES = ("jobs", "images", "steps", "worker_seconds", "cached_jobs")
TOTALS_KEY = "ldm:usage:totals"
# Days kept: a year and a bit, so last year's invoices can still be checked.
KEEP_DAYS = 400
MAX_RANGE_DAYS = 366

# Counts job KEYS[1] once (its record's `billed` flag) into its tenant's day and the all-time
# totals. ARGV: day, images, steps, worker seconds, cached (0/1), seconds the day is kept.
_RECORD = """
if redis.call('HSETNX', KEYS[1], 'billed', '1') == 0 then return 0 end
local job = redis.call('HMGET', KEYS[1], 'tenant', 'model')
if not job[1] or not job[2] then return 0 end
local day = 'ldm:usage:' .. job[1] .. ':' .. ARGV[1]
local totals = job[1] .. '|' .. job[2] .. '|'
local counts = {jobs = 1, images = ARGV[2], steps = ARGV[3], cached_jobs = ARGV[5]}
for measure, n in pairs(counts) do
  redis.call('HINCRBY', day, job[2] .. '|' .. measure, n)
  redis.call('HINCRBY', KEYS[2], totals .. measure, n)
end
redis.call('HINCRBYFLOAT', day, job[2] .. '|worker_seconds', ARGV[4])
redis.call('HINCRBYFLOAT', KEYS[2], totals .. 'worker_seconds', ARGV[4])
redis.call('EXPIRE', day, ARGV[6])
return 1
"""


@dataclass(frozen=True)
class Counts:
    """What one job (or many, summed) used."""

    jobs: int = 0
    images: int = 0
    steps: int = 0
    worker_seconds: float = 0.0
    cached_jobs: int = 0


class UsageRow(BaseModel):
    """One tenant's use of one model on one day."""

    day: date
    model: str
    jobs: int = Field(description="Jobs ended (succeeded, failed or canceled), cached included.")
    images: int = Field(description="Images delivered.")
    steps: int = Field(description="Denoising steps run (0 for cached jobs).")
    worker_seconds: float = Field(
        description="Worker time, a batch's time shared by its members' rows."
    )
    cached_jobs: int = Field(description="Jobs answered from the result cache, without a GPU.")


class UsageReport(BaseModel):
    """A tenant's usage over a range of days (UTC), per day and model, and its total."""

    tenant: str
    start: date
    end: date
    days: list[UsageRow]
    total: Counts


def today() -> date:
    """The UTC day usage is booked to now."""
    return datetime.now(UTC).date()


class Usage:
    """Books jobs' usage in Redis and reads it back per tenant."""

    def __init__(self, redis: Redis, keep_days: int = KEEP_DAYS) -> None:
        self.redis = redis
        self.keep_s = keep_days * 86400
        self._record = redis.register_script(_RECORD)

    @staticmethod
    def day_key(tenant: str, day: date) -> str:
        return f"ldm:usage:{tenant}:{day.isoformat()}"

    def record(
        self, job_key: str, used: Counts, day: date | None = None, pipe: Pipeline | None = None
    ) -> bool:
        """Book the job whose record is `job_key` (once: False if it already was, or is gone;
        within `pipe`, queued there)."""
        args = [
            (day or today()).isoformat(),
            used.images,
            used.steps,
            f"{used.worker_seconds:.6f}",
            used.cached_jobs,
            self.keep_s,
        ]
        return bool(self._record(keys=[job_key, TOTALS_KEY], args=args, client=pipe or self.redis))

    def report(self, tenant: str, start: date, end: date) -> UsageReport:
        """The tenant's rows from `start` to `end` (inclusive), oldest first."""
        days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self.day_key(tenant, day))
            replies = pipe.execute()
        rows = []
        for day, reply in zip(days, replies, strict=True):
            for model, counts in sorted(_by_model(reply).items()):
                rows.append(UsageRow(day=day, model=model, **counts))
        total = _sum(Counts(**row.model_dump(include=set(MEASURES))) for row in rows)
        return UsageReport(tenant=tenant, start=start, end=end, days=rows, total=total)

    def totals(self) -> dict[tuple[str, str], dict[str, float]]:
        """All-time counts per (tenant, model): what the Prometheus counters show."""
        out: dict[tuple[str, str], dict[str, float]] = {}
        for raw, value in self.redis.hgetall(TOTALS_KEY).items():
            tenant, model, measure = raw.decode().rsplit("|", 2)
            out.setdefault((tenant, model), {})[measure] = float(value)
        return out


def _by_model(reply: dict[bytes, bytes]) -> dict[str, dict[str, float]]:
    counts: dict[str, dict[str, float]] = {}
    for raw, value in reply.items():
        model, measure = raw.decode().rsplit("|", 1)
        number = float(value)
        counts.setdefault(model, {})[measure] = (
            number if measure == "worker_seconds" else int(number)
        )
    return counts


def _sum(rows: Iterable[Counts]) -> Counts:
    totals = {f.name: 0 for f in fields(Counts)}
    for row in rows:
        for name in totals:
            totals[name] += getattr(row, name)
    totals["worker_seconds"] = round(totals["worker_seconds"], 6)
    return Counts(**totals)
