"""RQ's own bookkeeping for jobs the engine runs, so `rq info` and rq-dashboard tell the truth:
the worker is registered and beats, each claimed job is STARTED in the started registry while
it runs and ends FINISHED or FAILED in RQ's registries.

None of it is on the step path: RQ's methods take about 20 round trips a job (1.4 ms of a
tiny job's 60), so they run in order on a thread of their own. RQ's records follow the
engine's by milliseconds, and a job is always STARTED before it ends."""

import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue

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
        self._running: dict[str, tuple[RQJob, Execution]] = {}  # the books thread's alone
        self._work: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.worker.name

    def register(self) -> None:
        """Appear in `rq info` as an idle worker of the model's queue."""
        self.worker.register_birth()
        self.worker.set_state(WorkerStatus.IDLE)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rq-books", daemon=True)
            self._thread.start()

    def unregister(self) -> None:
        """Write what is booked, then leave RQ's worker list (on a clean stop)."""
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None
        try:
            self.worker.register_death()
        except RedisError:
            log.warning("could not unregister from RQ; its worker record expires")

    def beat(self) -> None:
        """Keep the worker record alive, and tidy RQ's registries as its own workers do."""
        self.worker.heartbeat()
        clean_registries(self.queue)

    def started(self, rq_id: str) -> None:
        """The job was claimed: it becomes STARTED, in the started registry (soon after)."""
        self._work.put(lambda: self._start(rq_id))

    def ended(self, rq_id: str, error: str | None = None) -> None:
        """The job left the engine: FINISHED (or canceled on request), else FAILED with `error`
        (soon after)."""
        self._work.put(lambda: self._end(rq_id, error))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything booked so far is written; False after `timeout` s."""
        if self._thread is None:
            return True
        written = threading.Event()
        self._work.put(written.set)
        return written.wait(timeout)

    def _loop(self) -> None:
        while (task := self._work.get()) is not None:
            try:
                task()
            except Exception:
                log.exception("RQ bookkeeping failed")  # the thread lives on

    def _start(self, rq_id: str) -> None:
        try:
            job = RQJob.fetch(rq_id, connection=self.worker.connection, serializer=JSONSerializer)
            execution = self.worker.prepare_execution(job)
            self.worker.prepare_job_execution(job)
        except Exception:
            log.warning("could not mark job %s started in RQ", rq_id, exc_info=True)
            return
        self._running[rq_id] = (job, execution)

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
