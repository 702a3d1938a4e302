"""The exact-result cache. Generation is deterministic for a model's weights (and the dtype and
device kind they run in), the full resolved request and the seed: a job identical to one that
succeeded is answered from that job's stored images at once, without a GPU.

An entry maps a hash of the canonical resolved request, its input images and the weights'
version to the job that made the images. Workers publish their weights' version at start;
the API reads it to look up and stamps it on a job it enqueues, and the worker that publishes
the job's images registers the entry, only if its own version is the stamped one. Entries are
per tenant, or shared by all tenants where the operator allows (`LDM_CACHE_SHARED`)."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from app.core.jobs import ImageInfo, JobParams, image_url
from app.core.store import EXPIRY_KEY, JobStore

SHARED_SCOPE = "*"

# A hit: the entry names a job that still holds its images (following a cached job to the job
# whose files it serves); that job, its entry and the event stream live `ARGV[1]` seconds more,
# so the files outlive every job that serves them. Returns {job_id, attempt, images, warnings}.
_HIT = """
local source = redis.call('GET', KEYS[1])
if not source then return nil end
local job_key = 'ldm:job:' .. source
local job = redis.call('HMGET', job_key, 'status', 'attempt', 'images', 'warnings', 'images_from')
if job[1] ~= 'succeeded' then
  redis.call('DEL', KEYS[1])
  return nil
end
local owner, attempt = source, job[2] or '1'
if job[5] then
  owner, attempt = string.match(job[5], '^(.*):(%d+)$')
end
local ttl = tonumber(ARGV[1])
local until_ = tonumber(redis.call('TIME')[1]) + ttl
for _, id in ipairs({source, owner}) do
  redis.call('EXPIRE', 'ldm:job:' .. id, ttl)
  redis.call('ZADD', KEYS[2], 'GT', until_, id)
end
redis.call('EXPIRE', KEYS[1], ttl)
return {owner, attempt, job[3] or '[]', job[4] or '[]'}
"""

# The worker that published job KEYS[1] registers it as the entry its record names, when
# it ran the weights the API looked up with (ARGV[1]); the entry lives ARGV[3] seconds.
_REGISTER = """
local entry = redis.call('HMGET', KEYS[1], 'cache_key', 'cache_weights', 'status')
if not entry[1] or entry[2] ~= ARGV[1] or entry[3] ~= 'succeeded' then return 0 end
redis.call('SET', entry[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def weights_key(model: str) -> str:
    """Where workers serving `model` publish their weights' version."""
    return f"ldm:weights:{model}"


def request_digest(params: JobParams, inputs: Sequence[bytes] = ()) -> str:
    """A hash of everything that decides a job's pixels: the resolved request (the seed
    included; priority and previews change only when and how it is shown) and its input
    images' bytes."""
    canonical = params.model_dump(mode="json", exclude={"priority", "previews"})
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())
    for data in inputs:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    """Where a request's result would be cached, and the weights' version it was looked up at."""

    key: str
    weights: str


@dataclass(frozen=True)
class Hit:
    """A cached result: the job and attempt whose stored files hold the images, and what that
    job recorded of them (JSON lists)."""

    job_id: str
    attempt: int
    images: str
    warnings: str

    def made_for(self, job_id: str) -> tuple[str, list[ImageInfo], str]:
        """What a new job `job_id` answered by this hit records (see `JobStore.create_cached`):
        whose files, its images at its own URLs, the warnings."""
        images = [
            ImageInfo.model_validate(image | {"url": image_url(job_id, index)})
            for index, image in enumerate(json.loads(self.images))
        ]
        return f"{self.job_id}:{self.attempt}", images, self.warnings


class ResultCache:
    """Looks up, and registers, exact results in Redis."""

    def __init__(self, redis: Redis, store: JobStore, shared: bool = False) -> None:
        self.redis = redis
        self.store = store
        self.shared = shared
        self._hit = redis.register_script(_HIT)
        self._register = redis.register_script(_REGISTER)

    def entry(self, tenant: str, params: JobParams, inputs: Sequence[bytes]) -> Entry | None:
        """The entry for this request, None while no worker has published the model's weights'
        version (nothing could be cached for it yet)."""
        weights = self.redis.get(weights_key(params.model))
        if weights is None:
            return None
        scope = SHARED_SCOPE if self.shared else tenant
        digest = hashlib.sha256(f"{request_digest(params, inputs)}|{weights.decode()}".encode())
        return Entry(f"ldm:cache:{scope}:{digest.hexdigest()}", weights.decode())

    def look_up(
        self, tenant: str, params: JobParams, inputs: Sequence[bytes], find: bool = True
    ) -> Entry | Hit | None:
        """The cached result of this request (a `Hit`), else the `Entry` its result will be
        registered at, else None (no worker has published the weights' version yet). With
        `find` false only the entry is made: a request whose seed was just drawn at random
        has not been run before, and its look-up would be a round trip for nothing."""
        entry = self.entry(tenant, params, inputs)
        if entry is None or not find:
            return entry
        return self.find(entry) or entry

    def find(self, entry: Entry) -> Hit | None:
        """The cached result of `entry`, kept alive for another result TTL; None on a miss."""
        found = self._hit(keys=[entry.key, EXPIRY_KEY], args=[self.store.result_ttl])
        if not found:
            return None
        job_id, attempt, images, warnings = (part.decode() for part in found)
        return Hit(job_id, int(attempt), images, warnings)

    @staticmethod
    def stamp(pipe: Pipeline, job_key: str, entry: Entry) -> None:
        """Name the entry on a job's record (in the submit's transaction) for its worker."""
        pipe.hset(job_key, mapping={"cache_key": entry.key, "cache_weights": entry.weights})

    def register(self, job_id: str, weights: str, pipe: Pipeline | None = None) -> bool:
        """After `job_id` succeeded on weights `weights`: make it its request's entry (within
        `pipe`, queued there)."""
        keys, args = [self.store.key(job_id)], [weights, job_id, self.store.result_ttl]
        return bool(self._register(keys=keys, args=args, client=pipe or self.redis))

    def publish(self, model: str, weights: str) -> None:
        """A worker says which weights' version it runs for `model`."""
        self.redis.set(weights_key(model), weights)
