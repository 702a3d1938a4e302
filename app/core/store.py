"""Job records in Redis, and the one place that changes a job's state."""

import json
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline

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


# Job ids by the time their record expires, so that their files can be deleted then too.
EXPIRY_KEY = "ldm:expiry"
# Ids of running jobs, checked for workers that died under them.
RUNNING_KEY = "ldm:running"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class JobStore:
    """Reads and writes job records; every state change goes through `_transition`."""

    def __init__(self, redis: Redis, result_ttl: int) -> None:
        self.redis = redis
        self.result_ttl = result_ttl
        self._transition_script = redis.register_script(_TRANSITION)
        self._cancel_script = redis.register_script(_CANCEL)

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

    def report_progress(self, job_id: str, step: int) -> bool:
        """Record a finished denoising step; True if a cancel was requested (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(job_id), "step", step)
        pipe.hget(self.key(job_id), "cancel")
        _, cancel = pipe.execute()
        return cancel == b"1"

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
