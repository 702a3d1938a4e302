"""The queue protocol: one RQ queue per model, a JSON payload, the task named by dotted path."""

from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from app.core.jobs import JobParams, JobStatus
from app.core.models import ModelSpec
from app.core.store import JobStore

# Workers import this by name; the API never imports worker code.
TASK = "worker.tasks.run_job"


class JobQueue:
    """Submits, locates and cancels jobs across the job store and the models' RQ queues."""

    def __init__(self, redis: Redis, store: JobStore, job_timeout: int) -> None:
        self.redis = redis
        self.store = store
        self.job_timeout = job_timeout

    def rq_queue(self, model: ModelSpec | str) -> Queue:
        """The RQ queue serving `model`."""
        name = model.queue_name if isinstance(model, ModelSpec) else model
        return Queue(name, connection=self.redis, serializer=JSONSerializer)

    def submit(self, job_id: str, params: JobParams, spec: ModelSpec) -> None:
        """Write the record and enqueue the job in one transaction: both or neither."""
        with self.redis.pipeline() as pipe:
            # RQ calls MULTI itself, so it goes first; EXEC makes both writes one step.
            self.rq_queue(spec).enqueue_call(
                TASK,
                args=[job_id, params.model_dump(mode="json")],
                job_id=job_id,
                timeout=self.job_timeout,
                # The job store keeps results; RQ need not keep its copy of a finished job.
                result_ttl=0,
                failure_ttl=self.store.result_ttl,
                pipeline=pipe,
            )
            self.store.create(job_id, params, pipe)
            pipe.execute()

    def position(self, job_id: str, spec: ModelSpec) -> int | None:
        """0-based place among the jobs waiting for this model; None if not waiting."""
        position = self.redis.lpos(self.rq_queue(spec).key, job_id)
        return None if position is None else int(position)

    def cancel(self, job_id: str, spec: ModelSpec) -> JobStatus | None:
        """Cancel a job; returns the state it was in before, None if unknown."""
        return self.store.cancel(job_id, self.rq_queue(spec).key, RQJob.key_for(job_id))

    def depth(self, spec: ModelSpec) -> int:
        """How many jobs wait for this model."""
        return int(self.redis.llen(self.rq_queue(spec).key))
