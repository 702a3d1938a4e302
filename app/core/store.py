"""Job records in Redis, and the one place that changes a job's state."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from rq.job import Job as RQJob

from app.core import store_scripts
from app.core.jobs import ImageInfo, Job, JobError, JobParams, JobStatus, Progress, Webhook

# Job ids by the time their record expires, so that their files can be deleted then too.
EXPIRY_KEY = "ldm:expiry"
# Ids of running jobs, checked for workers that died under them.
RUNNING_KEY = "ldm:running"


@dataclass(frozen=True)
class Flags:
    """What a progress write learnt of the jobs: those whose cancel was requested, and those
    no longer running on the worker that wrote (given up for dead, so running again)."""

    canceled: set[str]
    lost: set[str]


@dataclass(frozen=True)
class Claim:
    """A job to start as part of a batch: `rq_id` names its RQ job to take from the queue at
    `queue_key`, or is empty for the job the worker already took through RQ; `max_running`
    caps its tenant's running jobs (None: no cap)."""

    job_id: str
    rq_id: str
    queue_key: str
    total_steps: int
    max_running: int | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat()


class JobStore:
    """Reads and writes job records; every state change goes through `_transition`."""

    def __init__(self, redis: Redis, result_ttl: int) -> None:
        self.redis = redis
        self.result_ttl = result_ttl
        self._transition_script = redis.register_script(store_scripts.TRANSITION)
        self._cancel_script = redis.register_script(store_scripts.CANCEL)
        self._claim_script = redis.register_script(store_scripts.CLAIM)
        self._progress_script = redis.register_script(store_scripts.PROGRESS)
        self._pause_script = redis.register_script(store_scripts.PAUSE)

    @staticmethod
    def key(job_id: str) -> str:
        """The Redis hash of a job."""
        return f"ldm:job:{job_id}"

    @staticmethod
    def events_key(job_id: str) -> str:
        """The Redis stream of a job's events (see `store_scripts`)."""
        return f"ldm:job:{job_id}:events"

    def create(
        self,
        job_id: str,
        params: JobParams,
        tenant: str,
        pipe: Pipeline,
        webhook: Webhook | None = None,
    ) -> None:
        """Write a new `queued` record (as part of the caller's submit transaction)."""
        record = {
            "status": JobStatus.QUEUED.value,
            "model": params.model,
            "created_at": _now(),
            "request": params.model_dump_json(),
            "tenant": tenant,
        }
        if webhook is not None:
            record |= {"webhook_url": webhook.url, "webhook_events": ",".join(webhook.events)}
        pipe.hset(self.key(job_id), mapping=record)
        self.note_status(job_id, JobStatus.QUEUED, pipe)

    def create_cached(
        self,
        job_id: str,
        params: JobParams,
        tenant: str,
        made: tuple[str, list[ImageInfo], str],
        pipe: Pipeline,
        webhook: Webhook | None = None,
    ) -> None:
        """Write a job the result cache answers, in the caller's transaction: succeeded at once
        with images `made` (by "<job>:<attempt>", whose files they are; warnings JSON)."""
        images_from, images, warnings = made
        self.create(job_id, params, tenant, pipe, webhook)
        now = _now()
        marks = {"cached": "1", "images_from": images_from, "started_at": now}
        pipe.hset(self.key(job_id), mapping=marks)
        payload = json.dumps([image.model_dump() for image in images])
        done = {"finished_at": now, "images": payload, "warnings": warnings}
        self._transition(job_id, (JobStatus.QUEUED,), JobStatus.SUCCEEDED, pipe=pipe, **done)

    def note_status(self, job_id: str, status: JobStatus, pipe: Pipeline) -> None:
        """Announce a state change made outside the Lua steps (submit, a rerun after a lost
        worker) on the job's event stream, in the caller's transaction."""
        key = self.events_key(job_id)
        pipe.xadd(key, {"type": "status", "status": status.value}, maxlen=200, approximate=True)
        pipe.expire(key, self.result_ttl)

    def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job as clients see it (without queue position); None if unknown or, when
        `tenant` is given, another tenant's."""
        fields = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key(job_id)).items()}
        if "status" not in fields or (tenant is not None and fields.get("tenant") != tenant):
            return None
        progress = None
        if "total_steps" in fields:
            progress = Progress(step=int(fields["step"]), total_steps=int(fields["total_steps"]))
        job = Job(
            id=job_id,
            status=JobStatus(fields["status"]),
            model=fields["model"],
            created_at=fields["created_at"],
            started_at=fields.get("started_at"),
            finished_at=fields.get("finished_at"),
            progress=progress,
            paused=fields.get("paused") == "1" and fields["status"] == JobStatus.RUNNING,
            cancel_requested=fields.get("cancel") == "1",
            worker=fields.get("worker") or None,
            attempt=int(fields.get("attempt", 1)),
            request=JobParams.model_validate_json(fields["request"]),
            images=json.loads(fields.get("images", "[]")),
            error=json.loads(fields["error"]) if "error" in fields else None,
            warnings=json.loads(fields.get("warnings", "[]")),
            cached=fields.get("cached") == "1",
        )
        if "images_from" in fields:
            owner, attempt = fields["images_from"].rsplit(":", 1)
            job._images_from = (owner, int(attempt))
        return job

    def _transition(
        self,
        job_id: str,
        allowed: tuple[JobStatus, ...],
        to: JobStatus,
        owner: str = "",
        attempt: int | None = None,
        pipe: Pipeline | None = None,
        **fields: str,
    ) -> bool:
        ttl = self.result_ttl if to.is_terminal() else 0
        args = [",".join(s.value for s in allowed), to.value, ttl, job_id, owner, self.result_ttl]
        args.append("" if attempt is None else str(attempt))
        for name, value in fields.items():
            args += [name, value]
        keys = [self.key(job_id), EXPIRY_KEY, RUNNING_KEY]
        if pipe is not None:
            self._transition_script(keys=keys, args=args, client=pipe)
            return True
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
        args = [worker, _now(), self.result_ttl]
        for job in jobs:
            keys += [self.key(job.job_id), RQJob.key_for(job.rq_id) if job.rq_id else ""]
            cap = "" if job.max_running is None else job.max_running
            args += [job.job_id, job.rq_id, job.total_steps, cap]
        return [raw.decode() for raw in self._claim_script(keys=keys, args=args)]

    def report_progress(
        self,
        job_ids: Sequence[str],
        step: int | Sequence[int | str],
        worker: str = "",
        totals: Sequence[int | str] | None = None,
    ) -> Flags:
        """Record finished denoising steps for jobs running on `worker` (one step for all, or
        one per job, with the totals their schedulers run when given; a step of "" records
        nothing); returns their flags (see `Flags`), in one round trip."""
        steps = [step] * len(job_ids) if isinstance(step, int) else list(step)
        keys = [self.key(job_id) for job_id in job_ids]
        args: list[object] = [worker, self.result_ttl]
        for job_id, done, total in zip(job_ids, steps, totals or [""] * len(job_ids), strict=True):
            args += [job_id, done, total]
        flags = list(zip(job_ids, self._progress_script(keys=keys, args=args), strict=True))
        return Flags(
            canceled={job_id for job_id, flag in flags if flag == 1},
            lost={job_id for job_id, flag in flags if flag == 2},
        )

    def set_paused(self, job_ids: Sequence[str], paused: bool, worker: str) -> None:
        """Mark jobs running on `worker` paused for a higher priority (progress frozen), or
        resumed, in one round trip."""
        keys = [self.key(job_id) for job_id in job_ids]
        self._pause_script(keys=keys, args=[worker, self.result_ttl, int(paused), *job_ids])

    def succeed(
        self,
        job_id: str,
        images: list[ImageInfo],
        worker: str = "",
        warnings: Sequence[str] = (),
        attempt: int | None = None,
    ) -> bool:
        """running → succeeded, with its images and what the worker noted about their
        fidelity (only while `worker` and `attempt`, if named, own it)."""
        payload = json.dumps([image.model_dump() for image in images])
        return self._transition(
            job_id,
            (JobStatus.RUNNING,),
            JobStatus.SUCCEEDED,
            worker,
            attempt,
            finished_at=_now(),
            images=payload,
            warnings=json.dumps(list(warnings)),
        )

    def fail(
        self, job_id: str, error: JobError, worker: str = "", attempt: int | None = None
    ) -> bool:
        """queued or running → failed, with a short code and message (see `succeed`)."""
        return self._transition(
            job_id,
            (JobStatus.QUEUED, JobStatus.RUNNING),
            JobStatus.FAILED,
            worker,
            attempt,
            finished_at=_now(),
            error=error.model_dump_json(),
        )

    def mark_canceled(self, job_id: str, worker: str = "", attempt: int | None = None) -> bool:
        """running → canceled, once the worker has stopped at a step boundary (see `succeed`)."""
        return self._transition(
            job_id, (JobStatus.RUNNING,), JobStatus.CANCELED, worker, attempt, finished_at=_now()
        )

    def owner_of(self, job_id: str) -> tuple[str, int] | None:
        """The worker and attempt the job is (or was last) on; None once its record has
        expired."""
        worker, attempt = self.redis.hmget(self.key(job_id), "worker", "attempt")
        if worker is None:
            return None
        return worker.decode(), int(attempt or 1)

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
