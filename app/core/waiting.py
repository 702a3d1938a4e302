"""Who runs next: the order in which a model's waiting jobs are taken.

Jobs still go on the model's RQ queue (so `rq info` and rq-dashboard count them), and also
into one sorted set per priority band. Bands are strict: high before normal before low.
Within a band, tenants share the model by weight through start-time fair queuing (Goyal et
al., 1996). Each job gets a tag when it joins:

    tag = max(V, F[tenant])      F[tenant] = tag + cost / weight

Here V is the tag of the job a worker took last, and jobs are taken in tag order. A flood
from one tenant spaces its own tags apart, so a newcomer's job gets a tag near V and goes
ahead of the flood. A tenant that was idle starts at V: it cannot bank its idle time. A
job's queue position is then one O(log n) rank, whatever the queue length.

A job that runs again after its worker died takes the tag V (`front`). It goes to the front
of its band, because it has waited once already.
"""

from redis import Redis
from redis.client import Pipeline

from app.core.jobs import PRIORITIES, JobParams, Priority
from app.core.models import queue_name

# Each band's V, under the band's key, and each tenant's F, under "<band key>|<tenant>".
FAIR_KEY = "ldm:fair"

# In the submit's (or rerun's) transaction, after the job's record is written.
# KEYS: the job's record, the band. ARGV: RQ job id, job id, cost / weight, front (1/0).
# Returns the job's tag.
ADD = """
local tenant = redis.call('HGET', KEYS[1], 'tenant') or 'public'
local tag = tonumber(redis.call('HGET', 'ldm:fair', KEYS[2])) or 0
if ARGV[4] ~= '1' then
  local finish = tonumber(redis.call('HGET', 'ldm:fair', KEYS[2] .. '|' .. tenant)) or 0
  if finish > tag then tag = finish end
  redis.call('HSET', 'ldm:fair', KEYS[2] .. '|' .. tenant, tostring(tag + tonumber(ARGV[3])))
end
local before = redis.call('HMGET', KEYS[1], 'wait_key', 'wait_id')
if before[1] then redis.call('ZREM', before[1], before[2]) end  -- an earlier attempt's place
redis.call('ZADD', KEYS[2], tag, ARGV[1])
redis.call('HSET', KEYS[1], 'wait_key', KEYS[2], 'wait_id', ARGV[1])
redis.call('SADD', 'ldm:tenant:' .. tenant .. ':queued', ARGV[2])
redis.call('SREM', 'ldm:tenant:' .. tenant .. ':running', ARGV[2])
return tostring(tag)
"""


def band_key(model: str, priority: Priority) -> str:
    """The sorted set of a model's waiting jobs of one priority, by tag."""
    return f"ldm:wait:{queue_name(model)}:{priority}"


def queued_key(tenant: str) -> str:
    """The set of a tenant's waiting jobs, for its queued cap."""
    return f"ldm:tenant:{tenant}:queued"


def running_key(tenant: str) -> str:
    """The set of a tenant's running jobs (paused ones too), for its running cap."""
    return f"ldm:tenant:{tenant}:running"


class Waiting:
    """The waiting order of every model's jobs."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._add = redis.register_script(ADD)

    def add(
        self,
        pipe: Pipeline,
        job_id: str,
        rq_id: str,
        params: JobParams,
        share: float,
        front: bool = False,
    ) -> None:
        """Put a job in line (in the caller's transaction, after its record is written):
        `share` is its cost over its tenant's weight; `front` for a job that runs again."""
        keys = [f"ldm:job:{job_id}", band_key(params.model, params.priority)]
        self._add(keys=keys, args=[rq_id, job_id, share, int(front)], client=pipe)

    @staticmethod
    def count_ahead(pipe: Pipeline, rq_id: str, model: str, priority: Priority) -> None:
        """Queue, on `pipe`, what `position` reads: each higher band's size and the rank."""
        for higher in PRIORITIES[: PRIORITIES.index(priority)]:
            pipe.zcard(band_key(model, higher))
        pipe.zrank(band_key(model, priority), rq_id)

    @staticmethod
    def ahead(replies: list) -> int | None:
        """The 0-based position from `count_ahead`'s replies; None if the job is not waiting."""
        *higher, rank = replies
        return None if rank is None else sum(int(n) for n in higher) + int(rank)

    def position(self, rq_id: str, model: str, priority: Priority) -> int | None:
        """How many waiting jobs will be taken before this one (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        self.count_ahead(pipe, rq_id, model, priority)
        return self.ahead(pipe.execute())

    def head(self, model: str, n: int) -> list[str]:
        """The RQ job ids of the next `n` jobs to take, in order (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for priority in PRIORITIES:
            pipe.zrange(band_key(model, priority), 0, n - 1)
        return [raw.decode() for band in pipe.execute() for raw in band][:n]

    def tenant_counts(self, tenants: list[str], running: bool) -> dict[str, int]:
        """How many jobs each tenant has running (or waiting), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.scard(running_key(tenant) if running else queued_key(tenant))
        return dict(zip(tenants, (int(n) for n in pipe.execute()), strict=True))
