"""Atomic claims from the model's RQ queue, made at step boundaries without blocking.

The engine takes jobs in the policy's order (app/core/waiting.py: priority bands, fair share
between tenants) while they fit its room, passing over jobs whose tenant runs as many as it
may; a job that runs again because its worker died (attempt > 1) runs alone, so a poison job
cannot take others down."""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from redis import Redis
from rq.job import Job as RQJob

from app.core import tracing
from app.core.jobs import JobParams, rq_job_id
from app.core.settings import Settings
from app.core.store import RUNNING_KEY, Claim, JobStore
from app.core.waiting import Waiting
from worker.traces import OFF, JobTrace, begin

# How far down the queue one claim looks: bounded, so a long queue costs no more than a short one.
LOOK_AHEAD = 32
# While jobs run and the last look found the queue empty, look again only this often: a look
# is a round trip, 2-3% of a small model's step on a CPU, and a job that arrives meanwhile
# waits at most this long for its first step.
QUIET_LOOK_S = 0.02
# Read with each waiting job's request, in the same round trip, to begin its trace at the claim.
TRACE_FIELDS = ("traceparent", "created_at")


@dataclass(frozen=True)
class Claimed:
    """A job this worker now runs: its id, its RQ job's id, parameters, attempt and the
    timeout its RQ job carries (None: the worker's own)."""

    job_id: str
    rq_id: str
    params: JobParams
    attempt: int
    timeout: float | None = None
    trace: JobTrace = OFF  # its spans, begun as it was claimed (worker/traces.py)


def _timeout(raw: bytes | None) -> float | None:
    return float(raw) if raw else None


def _traced(claimed: Claimed, record: list[bytes | None]) -> Claimed:
    """The claim with its trace begun from its record's `TRACE_FIELDS` (as is when off)."""
    if not tracing.enabled():
        return claimed
    *_, traceparent, created_at = record
    trace = begin(claimed.job_id, claimed.params, claimed.attempt, traceparent, created_at)
    return replace(claimed, trace=trace)


class Claims:
    """Takes jobs off one model's queue for one worker."""

    def __init__(
        self,
        redis: Redis,
        store: JobStore,
        queue_key: str,
        worker: str = "",
        model: str = "",
        settings: Settings | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.queue_key = queue_key
        self.worker = worker
        self.model = model
        self.settings = settings or Settings()
        self.waiting = Waiting(redis)
        # The job at the head that did not fit last time: until it leaves the head or the
        # engine frees room, peeking again would only parse the same requests again.
        self.blocked: str | None = None
        # Its request, when it waits for room (not for a rerun's turn): preemption may make some.
        self.blocked_params: JobParams | None = None
        self._empty_at: float | None = None  # when a look last found the queue empty

    def wait(self, timeout: float) -> bool:
        """Block until the queue has a job (or `timeout` s pass), taking nothing: a left-to-left
        BLMOVE of a list onto itself rotates nothing, it only wakes when there is work."""
        return (
            self.redis.blmove(self.queue_key, self.queue_key, timeout, "LEFT", "LEFT") is not None
        )

    def still_blocked(self) -> bool:
        """Whether the job that did not fit is still first in line (one cheap round trip)."""
        if self.blocked is None:
            return False
        head = self.waiting.head(self.model, 1)
        return head == [self.blocked]

    def quiet(self) -> bool:
        """Whether a look less than `QUIET_LOOK_S` ago found the queue empty (no round trip)."""
        return self._empty_at is not None and time.monotonic() - self._empty_at < QUIET_LOOK_S

    def take(self, fits: Callable[[JobParams], bool], engine_empty: bool) -> list[Claimed]:
        """Claim waiting jobs in queue order while they `fit` (the engine's admission, which
        counts each job it lets in); a retried job only into an empty engine, and alone."""
        self.blocked, self.blocked_params = None, None
        rq_ids = self.waiting.head(self.model, LOOK_AHEAD)
        self._empty_at = None if rq_ids else time.monotonic()
        if not rq_ids:
            return []
        job_ids = [rq_id.split("-", 1)[0] for rq_id in rq_ids]  # "<job>-<attempt>" for retries
        pipe = self.redis.pipeline(transaction=False)
        for job_id, rq_id in zip(job_ids, rq_ids, strict=True):
            pipe.hmget(self.store.key(job_id), "request", "attempt", "tenant", *TRACE_FIELDS)
            pipe.hget(RQJob.key_for(rq_id), "timeout")
        replies = pipe.execute()
        tenants = [(tenant or b"public").decode() for _, _, tenant, *_ in replies[::2]]
        room = self._room(tenants)
        picked: list[Claimed] = []
        caps: dict[str, int | None] = {}
        for job_id, rq_id, tenant, (request, attempt, *_), timeout in zip(
            job_ids, rq_ids, tenants, replies[::2], replies[1::2], strict=True
        ):
            if request is None:
                continue  # canceled or expired meanwhile
            if room.get(tenant, 1) <= 0:
                continue  # its tenant runs as many as it may: later jobs go first
            params = JobParams.model_validate_json(request)
            claimed = Claimed(job_id, rq_id, params, int(attempt or 1), _timeout(timeout))
            caps[job_id] = self.settings.tenant_policy(tenant).max_running
            empty = engine_empty and not picked
            if claimed.attempt > 1:
                if empty:
                    picked.append(claimed)
                else:
                    self.blocked = rq_id
                break  # it runs alone, and nothing passes it meanwhile
            if not fits(claimed.params):
                self.blocked, self.blocked_params = rq_id, claimed.params
                break  # in order: it waits for room rather than let later jobs pass it
            picked.append(claimed)
            if tenant in room:
                room[tenant] -= 1
        if not picked:
            return []
        claims = [
            Claim(c.job_id, c.rq_id, self.queue_key, c.params.denoising_steps, caps[c.job_id])
            for c in picked
        ]
        started = set(self.store.claim(self.worker, claims))
        records = dict(zip(job_ids, replies[::2], strict=True))
        return [_traced(c, records[c.job_id]) for c in picked if c.job_id in started]

    def _room(self, tenants: list[str]) -> dict[str, int]:
        """How many more jobs each capped tenant may start (one round trip, only when some
        tenant is capped; the claim itself checks again, atomically)."""
        if not self.settings.caps_running:
            return {}
        caps = {t: self.settings.tenant_policy(t).max_running for t in set(tenants)}
        capped = [t for t, cap in caps.items() if cap is not None]
        running = self.waiting.tenant_counts(capped, running=True) if capped else {}
        return {t: (caps[t] or 0) - n for t, n in running.items()}

    def orphans(self, known: set[str]) -> list[Claimed]:
        """Jobs Redis says run on this worker that it does not hold: a claim whose reply was
        lost (Redis failed over or restarted mid-call) took them. The worker adopts them, or
        nobody would ever run them (the worker still beats, so nobody thinks them lost)."""
        running = [raw.decode() for raw in self.redis.zrange(RUNNING_KEY, 0, -1)]
        candidates = [job_id for job_id in running if job_id not in known]
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in candidates:
            pipe.hmget(self.store.key(job_id), "status", "worker", "request", "attempt")
        adopted = []
        for job_id, (status, worker, request, attempt) in zip(
            candidates, pipe.execute(), strict=True
        ):
            if status == b"running" and worker and worker.decode() == self.worker and request:
                params = JobParams.model_validate_json(request)
                attempt = int(attempt or 1)
                rq_id = rq_job_id(job_id, attempt)
                timeout = _timeout(self.redis.hget(RQJob.key_for(rq_id), "timeout"))
                adopted.append(Claimed(job_id, rq_id, params, attempt, timeout))
        return adopted
