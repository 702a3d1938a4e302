"""RQ's own bookkeeping for jobs the engine runs, so `rq info` and rq-dashboard tell the truth:
the worker is registered and beats, each claimed job is STARTED in the started registry while
it runs and ends FINISHED or FAILED in RQ's registries. All of it happens when a job joins or
leaves, never per denoising step."""

import logging
import threading

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

log = logging.getLogger(__name__)


class RQBooks:
    """An RQ worker record for this engine worker, and the executions of its active jobs."""

    def __init__(self, redis: Redis, queue: Queue) -> None:
        self.queue = queue
        self.worker = SimpleWorker([queue], connection=redis, serializer=JSONSerializer)
        self._running: dict[str, tuple[RQJob, Execution]] = {}
        self._lock = threading.Lock()  # jobs start on the engine's thread, end on the finisher's

    @property
    def name(self) -> str:
        return self.worker.name

    def register(self) -> None:
        """Appear in `rq info` as an idle worker of the model's queue."""
        self.worker.register_birth()
        self.worker.set_state(WorkerStatus.IDLE)

    def unregister(self) -> None:
        """Leave RQ's worker list (on a clean stop)."""
        try:
            self.worker.register_death()
        except RedisError:
            log.warning("could not unregister from RQ; its worker record expires")

    def beat(self) -> None:
        """Keep the worker record alive, and tidy RQ's registries as its own workers do."""
        self.worker.heartbeat()
        clean_registries(self.queue)

    def started(self, rq_id: str) -> float | None:
        """The job was claimed: STARTED, in the started registry. Returns its timeout (s)."""
        job = RQJob.fetch(rq_id, connection=self.worker.connection, serializer=JSONSerializer)
        with self._lock:
            execution = self.worker.prepare_execution(job)
            self.worker.prepare_job_execution(job)
            self._running[rq_id] = (job, execution)
        return job.timeout

    def ended(self, rq_id: str, error: str | None = None) -> None:
        """The job left the engine: FINISHED (or canceled on request), else FAILED with `error`."""
        with self._lock:
            self._end(rq_id, error)

    def _end(self, rq_id: str, error: str | None) -> None:
        entry = self._running.pop(rq_id, None)
        if entry is None:
            return
        job, execution = entry
        job.ended_at = now()
        try:
            if error is None:
                self.worker.handle_job_success(
                    job, self.queue, self.queue.started_job_registry, execution
                )
            else:
                self.worker.handle_job_failure(
                    job, self.queue, self.queue.started_job_registry, error, execution
                )
        except RedisError:
            log.warning("could not record job %s in RQ's registries", rq_id)
        if not self._running:
            self.worker.set_state(WorkerStatus.IDLE)
