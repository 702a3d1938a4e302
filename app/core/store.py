"""Job records in Redis, and the one place that changes a job's state."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from rq.job import Job as RQJob

from app.core.jobs import ImageInfo, Job, JobError, JobParams, JobStatus, Progress

# Moves a job from one of the allowed states to a new one, atomically, so that a cancel and
# a worker picking the job up can never both win; with a worker named, only while that worker
# owns the job (a worker given up for dead cannot end a job that runs again elsewhere).
# Running jobs are indexed for the lost-job check; a terminal state starts the record's TTL
# and books its files for the expiry sweep. Returns {1, old} or {0, current or ''}.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if not string.find(',' .. ARGV[1] .. ',', ',' .. cur .. ',', 1, true) then return {0, cur} end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[5] then return {0, cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 6))
if ARGV[2] == 'running' then
  redis.call('ZADD', KEYS[3], tonumber(redis.call('TIME')[1]), ARGV[4])
else
  redis.call('ZREM', KEYS[3], ARGV[4])
end
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], tonumber(redis.call('TIME')[1]) + ARGV[3], ARGV[4])
end
return {1, cur}
"""

# A queued job is canceled at once and leaves the queue; a running one gets a flag that the
# worker reads at its next denoising step. Returns the state the job was in ('' if unknown).
_CANCEL = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[4], tonumber(redis.call('TIME')[1]) + ARGV[2], ARGV[3])
  redis.call('LREM', KEYS[2], 0, ARGV[4])
  redis.call('DEL', KEYS[3])
elseif cur == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return cur
"""

# Starts a batch in one step: the job the worker took from the queue through RQ (rq id '')
# and compatible jobs still waiting, each taken only if it is still in the queue (so no
# other worker and no cancel got it) and still queued. Returns the ids of the jobs started,
# counting those already running on this worker: a client that retries the script after a
# lost reply must not disown what the first run started.
_CLAIM = """
local started = {}
local now = tonumber(redis.call('TIME')[1])
for i = 0, #KEYS / 2 - 2 do
  local job_key, rq_key = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local job_id, rq_id = ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  local taken = rq_id == '' or redis.call('LREM', KEYS[2], 1, rq_id) == 1
  if taken and rq_id ~= '' then redis.call('DEL', rq_key) end
  local state = redis.call('HMGET', job_key, 'status', 'worker')
  if taken and state[1] == 'queued' then
    redis.call('HSET', job_key, 'status', 'running', 'started_at', ARGV[2], 'step', '0',
               'total_steps', ARGV[5 + 3 * i], 'worker', ARGV[1])
    redis.call('ZADD', KEYS[1], now, job_id)
    started[#started + 1] = job_id
  elseif state[1] == 'running' and state[2] == ARGV[1] then
    started[#started + 1] = job_id
  end
end
return started
"""

# Records a finished step for each job of a batch still running on this worker, and reads
# their cancel flags, in one round trip. Returns a 1 per job whose cancel was requested.
_PROGRESS = """
local canceled = {}
for i, key in ipairs(KEYS) do
  local state = redis.call('HMGET', key, 'status', 'worker', 'cancel')
  if state[1] == 'running' and (ARGV[2] == '' or state[2] == ARGV[2]) then
    redis.call('HSET', key, 'step', ARGV[1])
  end
  canceled[i] = state[3] == '1' and 1 or 0
end
return canceled
"""

# Job ids by the time their record expires, so that their files can be deleted then too.
EXPIRY_KEY = "ldm:expiry"
# Ids of running jobs, checked for workers that died under them.
RUNNING_KEY = "ldm:running"


@dataclass(frozen=True)
class Claim:
    """A job to start as part of a batch: `rq_id` names its RQ job to take from the queue at
    `queue_key`, or is empty for the job the worker already took through RQ."""

    job_id: str
    rq_id: str
    queue_key: str
    total_steps: int


def _now() -> str:
    return datetime.now(UTC).isoformat()


class JobStore:
    """Reads and writes job records; every state change goes through `_transition`."""

    def __init__(self, redis: Redis, result_ttl: int) -> None:
        self.redis = redis
        self.result_ttl = result_ttl
        self._transition_script = redis.register_script(_TRANSITION)
        self._cancel_script = redis.register_script(_CANCEL)
        self._claim_script = redis.register_script(_CLAIM)
        self._progress_script = redis.register_script(_PROGRESS)

    @staticmethod
    def key(job_id: str) -> str:
        """The Redis hash of a job."""
        return f"ldm:job:{job_id}"

    def create(self, job_id: str, params: JobParams, tenant: str, pipe: Pipeline) -> None:
        """Write a new `queued` record (as part of the caller's submit transaction)."""
        pipe.hset(
            self.key(job_id),
            mapping={
                "status": JobStatus.QUEUED.value,
                "model": params.model,
                "created_at": _now(),
                "request": params.model_dump_json(),
                "tenant": tenant,
            },
        )

    def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job as clients see it (without queue position); None if unknown or, when
        `tenant` is given, another tenant's."""
        fields = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key(job_id)).items()}
        if "status" not in fields or (tenant is not None and fields.get("tenant") != tenant):
            return None
        progress = None
        if "total_steps" in fields:
            progress = Progress(step=int(fields["step"]), total_steps=int(fields["total_steps"]))
        return Job(
            id=job_id,
            status=JobStatus(fields["status"]),
            model=fields["model"],
            created_at=fields["created_at"],
            started_at=fields.get("started_at"),
            finished_at=fields.get("finished_at"),
            progress=progress,
            cancel_requested=fields.get("cancel") == "1",
            worker=fields.get("worker") or None,
            attempt=int(fields.get("attempt", 1)),
            request=JobParams.model_validate_json(fields["request"]),
            images=json.loads(fields.get("images", "[]")),
            error=json.loads(fields["error"]) if "error" in fields else None,
        )

    def _transition(
        self,
        job_id: str,
        allowed: tuple[JobStatus, ...],
        to: JobStatus,
        owner: str = "",
        **fields: str,
    ) -> bool:
        ttl = self.result_ttl if to.is_terminal() else 0
        args = [",".join(s.value for s in allowed), to.value, ttl, job_id, owner]
        for name, value in fields.items():
            args += [name, value]
        keys = [self.key(job_id), EXPIRY_KEY, RUNNING_KEY]
        moved, _ = self._transition_script(keys=keys, args=args)
        return bool(moved)

    def start(self, job_id: str, total_steps: int, worker: str = "") -> bool:
        """queued → running on `worker`; False if the job was canceled (or vanished) meanwhile."""
        return self._transition(
            job_id,
            (JobStatus.QUEUED,),
            JobStatus.RUNNING,
            started_at=_now(),
            step="0",
            total_steps=str(total_steps),
            worker=worker,
        )

    def claim(self, worker: str, jobs: Sequence[Claim]) -> list[str]:
        """Start a batch on `worker` in one round trip: queued → running for each job still
        there to take (see `Claim`); returns the ids of the jobs started, in order."""
        keys = [RUNNING_KEY, jobs[0].queue_key]
        args = [worker, _now()]
        for job in jobs:
            keys += [self.key(job.job_id), RQJob.key_for(job.rq_id) if job.rq_id else ""]
            args += [job.job_id, job.rq_id, job.total_steps]
        return [raw.decode() for raw in self._claim_script(keys=keys, args=args)]

    def report_progress(self, job_ids: Sequence[str], step: int, worker: str = "") -> set[str]:
        """Record a finished denoising step for jobs running on `worker`; returns those whose
        cancel was requested (one round trip for a whole batch)."""
        keys = [self.key(job_id) for job_id in job_ids]
        flags = self._progress_script(keys=keys, args=[step, worker])
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}

    def succeed(self, job_id: str, images: list[ImageInfo], worker: str = "") -> bool:
        """running → succeeded, with its images (only while `worker`, if named, owns it)."""
        payload = json.dumps([image.model_dump() for image in images])
        return self._transition(
            job_id,
            (JobStatus.RUNNING,),
            JobStatus.SUCCEEDED,
            worker,
            finished_at=_now(),
            images=payload,
        )

    def fail(self, job_id: str, error: JobError, worker: str = "") -> bool:
        """queued or running → failed, with a short code and message (see `succeed`)."""
        return self._transition(
            job_id,
            (JobStatus.QUEUED, JobStatus.RUNNING),
            JobStatus.FAILED,
            worker,
            finished_at=_now(),
            error=error.model_dump_json(),
        )

    def mark_canceled(self, job_id: str, worker: str = "") -> bool:
        """running → canceled, once the worker has stopped at a step boundary."""
        return self._transition(
            job_id, (JobStatus.RUNNING,), JobStatus.CANCELED, worker, finished_at=_now()
        )

    def worker_of(self, job_id: str) -> str | None:
        """The worker the job is (or was last) on; None once its record has expired."""
        worker = self.redis.hget(self.key(job_id), "worker")
        return None if worker is None else worker.decode()

    def running(self) -> list[str]:
        """Ids of the jobs running now, on whatever worker."""
        return [raw.decode() for raw in self.redis.zrange(RUNNING_KEY, 0, -1)]

    def expired(self, now: float, limit: int = 100) -> list[str]:
        """Ids of jobs whose records have expired, oldest first, whose files are still booked."""
        return [raw.decode() for raw in self.redis.zrangebyscore(EXPIRY_KEY, 0, now, 0, limit)]

    def exists(self, job_id: str) -> bool:
        """Whether the job's record is still there (not expired)."""
        return bool(self.redis.exists(self.key(job_id)))

    def now(self) -> float:
        """Redis' clock, the one record expiry follows (not this host's)."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def forget(self, job_id: str) -> None:
        """Unbook a job once its files are gone."""
        self.redis.zrem(EXPIRY_KEY, job_id)

    def cancel(self, job_id: str, queue_key: str, rq_job_key: str, rq_id: str) -> JobStatus | None:
        """Cancel a queued job now or flag a running one; the state it was in, None if unknown."""
        before = self._cancel_script(
            keys=[self.key(job_id), queue_key, rq_job_key, EXPIRY_KEY],
            args=[_now(), self.result_ttl, job_id, rq_id],
        )
        return JobStatus(before.decode()) if before else None
