"""The queue protocol: one RQ queue per model, a JSON payload, the task named by dotted path."""

import hashlib
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Callback, Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from app.core import tracing
from app.core.errors import FieldError, InvalidRequest, NotDurable
from app.core.jobs import PRIORITIES, JobParams, JobStatus, Priority, Webhook, rq_job_id
from app.core.models import queue_name
from app.core.result_cache import Entry, Hit, ResultCache
from app.core.store import JobStore
from app.core.waiting import Waiting

# Workers import these by name; the API never imports worker code.
TASK = "worker.tasks.run_job"
ON_FAILURE = "worker.tasks.on_failure"
RQ_RESULT_TTL = 60


def rq_queue(redis: Redis, model: str) -> Queue:
    """The RQ queue of the model named `model`, with the JSON payload both sides expect."""
    return Queue(queue_name(model), connection=redis, serializer=JSONSerializer)


@dataclass(frozen=True)
class Idempotency:
    """A client's `Idempotency-Key` and the fingerprint of the body it came with."""

    key: str
    fingerprint: str

    def redis_key(self, tenant: str) -> str:
        """Per tenant, hashed: keys are the client's, of any length and content."""
        return f"ldm:idem:{tenant}:{hashlib.sha256(self.key.encode()).hexdigest()}"

    def record(self, job_id: str) -> str:
        return f"{job_id} {self.fingerprint}"

    def earlier_job(self, stored: bytes | None) -> str | None:
        """The job of an earlier request with this key; `InvalidRequest` if its body differed."""
        if stored is None:
            return None
        job_id, fingerprint = stored.decode().split(" ", 1)
        if fingerprint != self.fingerprint:
            raise InvalidRequest(
                [
                    FieldError(
                        "header.Idempotency-Key",
                        "already used with a different body; use a new key for a new job",
                    )
                ]
            )
        return job_id


@dataclass(frozen=True)
class Submitted:
    """What a submit came to: the job the request names and, when the submit made it, when
    that job was created and its 0-based place in the queue just after (None for an earlier job
    that an idempotency key named)."""

    job_id: str
    created_at: str | None = None
    queue_position: int | None = None


class JobQueue:
    """Submits, locates and cancels jobs across the job store and the models' RQ queues."""

    def __init__(self, redis: Redis, store: JobStore, job_timeout: int, replicas: int = 0) -> None:
        self.redis = redis
        self.store = store
        self.job_timeout = job_timeout
        self.replicas = replicas
        self.waiting = Waiting(redis)
        # One RQ Queue per model, made once: making one costs more than the enqueue it serves
        # (RQ checks its serializer against a runtime Protocol each time).
        self._queues: dict[str, Queue] = {}

    def _queue(self, model: str) -> Queue:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues.setdefault(model, rq_queue(self.redis, model))
        return queue

    def submit(
        self,
        job_id: str,
        params: JobParams,
        tenant: str,
        idempotency: Idempotency | None = None,
        share: float = 1.0,
    ) -> str:
        """Write the record and enqueue the job in one transaction: both or neither.

        With an idempotency key, the key is claimed in the same transaction, so concurrent
        duplicates on any replicas make one job; returns the id of the job the key names.
        `share` is the job's cost over its tenant's weight (see app/core/waiting.py).
        """
        return self.accept(job_id, params, tenant, idempotency, share=share).job_id

    def accept(
        self,
        job_id: str,
        params: JobParams,
        tenant: str,
        idempotency: Idempotency | None = None,
        webhook: Webhook | None = None,
        share: float = 1.0,
        cache: Entry | Hit | None = None,
    ) -> Submitted:
        """`submit`, telling also what the transaction wrote: the new job's creation time and
        its place in the queue right after it joined (so the caller need not read them back).
        With a cache `Hit` the job is written succeeded with its images, never queued; with
        an `Entry`, the worker that runs it registers its result there."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    if idempotency is not None:
                        pipe.watch(idempotency.redis_key(tenant))
                        earlier = idempotency.earlier_job(pipe.get(idempotency.redis_key(tenant)))
                        if earlier is not None:
                            return Submitted(earlier)
                    if isinstance(cache, Hit):
                        pipe.multi()
                        made = cache.made_for(job_id)
                        self.store.create_cached(job_id, params, tenant, made, pipe, webhook)
                    else:
                        self.enqueue_attempt(job_id, params, pipe)
                        self.store.create(job_id, params, tenant, pipe, webhook)
                        if traceparent := tracing.traceparent():  # its worker's spans join in
                            pipe.hset(self.store.key(job_id), "traceparent", traceparent)
                        self.waiting.add(pipe, job_id, job_id, params, share)
                    if isinstance(cache, Entry):
                        ResultCache.stamp(pipe, self.store.key(job_id), cache)
                    if idempotency is not None:
                        pipe.set(
                            idempotency.redis_key(tenant),
                            idempotency.record(job_id),
                            ex=self.store.result_ttl,
                        )
                    # Read inside the transaction: where the job stands as it joins.
                    pipe.hget(self.store.key(job_id), "created_at")
                    self.waiting.count_ahead(pipe, job_id, params.model, params.priority)
                    replies = pipe.execute()
                    count = 1 + PRIORITIES.index(params.priority)
                    created_at, ahead = replies[-count - 1], replies[-count:]
                    return Submitted(job_id, created_at.decode(), self.waiting.ahead(ahead))
                except WatchError:
                    continue  # another replica claimed the key meanwhile: read its job

    def await_replicas(self, job_id: str) -> None:
        """With replicas configured, fail with `NotDurable` unless a replica has the job."""
        # A failover promotes a replica: a job only the old primary had would be lost.
        if self.replicas and self.redis.wait(self.replicas, 2000) < self.replicas:
            raise NotDurable(
                f"job {job_id} is not yet on a replica; retry (with the same Idempotency-Key)", 1
            )

    def find(self, tenant: str, idempotency: Idempotency) -> str | None:
        """The job an idempotency key already names, if any (raises on a different body)."""
        return idempotency.earlier_job(self.redis.get(idempotency.redis_key(tenant)))

    def enqueue_attempt(
        self, job_id: str, params: JobParams, pipe: Pipeline, attempt: int = 1
    ) -> None:
        """Queue one attempt of a job as its own RQ job (within the caller's transaction)."""
        # RQ calls MULTI itself, so it goes first; EXEC makes all the writes one step.
        self._queue(params.model).enqueue_call(
            TASK,
            args=[job_id, params.model_dump(mode="json")],
            job_id=rq_job_id(job_id, attempt),
            # RQ logs the description of every job it runs: the id only, never the prompt.
            description=f"job {job_id}",
            timeout=self.job_timeout,
            # The job store keeps results; RQ's copy of a finished job only briefly: letting it
            # expire costs RQ one EXPIRE, deleting it (ttl 0) a scan of the whole queue.
            result_ttl=RQ_RESULT_TTL,
            failure_ttl=self.store.result_ttl,
            # Runs where the job failed outside the runner too (worker died, bad payload).
            on_failure=Callback(ON_FAILURE),
            pipeline=pipe,
        )

    def position(
        self, job_id: str, model: str, attempt: int = 1, priority: Priority = "normal"
    ) -> int | None:
        """How many of this model's waiting jobs will start before this one (the policy's
        order: app/core/waiting.py); None if not waiting."""
        return self.waiting.position(rq_job_id(job_id, attempt), model, priority)

    def cancel(self, job_id: str, model: str, attempt: int = 1) -> JobStatus | None:
        """Cancel a job; returns the state it was in before, None if unknown."""
        rq_id = rq_job_id(job_id, attempt)
        return self.store.cancel(job_id, self._queue(model).key, RQJob.key_for(rq_id), rq_id)

    def depth(self, model: str) -> int:
        """How many jobs wait for this model."""
        return int(self.redis.llen(self._queue(model).key))
