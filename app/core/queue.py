"""The queue protocol: one RQ queue per model, a JSON payload, the task named by dotted path."""

from redis import Redis
from rq import Callback, Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from app.core.jobs import JobParams, JobStatus
from app.core.models import queue_name
from app.core.store import JobStore

# Workers import these by name; the API never imports worker code.
TASK = "worker.tasks.run_job"
ON_FAILURE = "worker.tasks.on_failure"


def rq_queue(redis: Redis, model: str) -> Queue:
    """The RQ queue of the model named `model`, with the JSON payload both sides expect."""
    return Queue(queue_name(model), connection=redis, serializer=JSONSerializer)


class JobQueue:
    """Submits, locates and cancels jobs across the job store and the models' RQ queues."""

    def __init__(self, redis: Redis, store: JobStore, job_timeout: int) -> None:
        self.redis = redis
        self.store = store
        self.job_timeout = job_timeout

    def submit(self, job_id: str, params: JobParams, tenant: str) -> None:
        """Write the record and enqueue the job in one transaction: both or neither."""
        with self.redis.pipeline() as pipe:
            # RQ calls MULTI itself, so it goes first; EXEC makes both writes one step.
            rq_queue(self.redis, params.model).enqueue_call(
                TASK,
                args=[job_id, params.model_dump(mode="json")],
                job_id=job_id,
                timeout=self.job_timeout,
                # The job store keeps results; RQ need not keep its copy of a finished job.
                result_ttl=0,
                failure_ttl=self.store.result_ttl,
                # Runs where the job failed outside the runner too (worker died, bad payload).
                on_failure=Callback(ON_FAILURE),
                pipeline=pipe,
            )
            self.store.create(job_id, params, tenant, pipe)
            pipe.execute()

    def position(self, job_id: str, model: str) -> int | None:
        """0-based place among the jobs waiting for this model; None if not waiting."""
        position = self.redis.lpos(rq_queue(self.redis, model).key, job_id)
        return None if position is None else int(position)

    def cancel(self, job_id: str, model: str) -> JobStatus | None:
        """Cancel a job; returns the state it was in before, None if unknown."""
        return self.store.cancel(job_id, rq_queue(self.redis, model).key, RQJob.key_for(job_id))

    def depth(self, model: str) -> int:
        """How many jobs wait for this model."""
        return int(self.redis.llen(rq_queue(self.redis, model).key))
