"""The worker's main loop: claim jobs at step boundaries, run engine iterations, end jobs.

Each iteration: take what fits from the model's queue (without blocking while anything is
active; blocking on the queue when idle), one engine iteration, the whole active set's
progress and cancel flags in one round trip (on the progress thread), then retire: images
go to storage and final states are written on the finishing thread, while the next step runs.
"""

import io
import logging
import signal
import time
from types import FrameType

from PIL import Image
from redis import Redis
from redis.exceptions import RedisError

from app.core.limits import ServiceRate
from app.core.models import ModelSpec
from app.core.queue import JobQueue, rq_queue
from app.core.recovery import retry_lost
from app.core.settings import Settings
from app.core.storage import Storage, init_image_key, mask_image_key
from app.core.store import JobStore
from worker.billing import Billing
from worker.claims import Claimed, Claims
from worker.engine.loop import Engine
from worker.engine.state import EngineRequest, Outcome
from worker.finisher import Finisher
from worker.metrics import WorkerMetrics
from worker.outcomes import STORE_FAILED, Outcomes, Task
from worker.previews import Previews
from worker.progress import ProgressReporter
from worker.rq_books import RQBooks

log = logging.getLogger(__name__)

RQ_BEAT_EVERY_S = 10.0
IDLE_WAIT_S = 1.0


class Server:
    """Serves one model's queue with one engine until asked to stop."""

    def __init__(
        self,
        settings: Settings,
        spec: ModelSpec,
        engine: Engine,
        redis: Redis,
        storage: Storage,
        metrics: WorkerMetrics | None = None,
        billing: Billing | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = JobStore(redis, settings.result_ttl)
        self.storage = storage
        self.metrics = metrics or WorkerMetrics(spec.name)
        queue = rq_queue(redis, spec.name)
        self.books = RQBooks(redis, queue)
        self.name = self.books.name
        self.claims = Claims(redis, self.store, queue.key, self.name, spec.name, settings)
        self.progress = ProgressReporter(self.store, self.name)
        self.outcomes = Outcomes(self.store, storage, ServiceRate(redis), self.metrics, billing)
        self.finisher = Finisher()
        self.previews = Previews(redis, engine.family, settings, self.name)
        self.tasks: dict[str, Task] = {}
        self.alone: str | None = None  # a retried job runs by itself
        self.draining = False
        self.stop_now = False
        self._beaten_at = 0.0
        self._retired = True  # a job left since the last claim: there may be room
        self._lost_redis = False
        self._lost: set[str] = set()  # jobs found running again elsewhere, being dropped
        # Denoised, their images and final state still being written (on the finishing
        # thread): still running in Redis, but not orphans to adopt and run again.
        self._finishing: set[str] = set()

    def serve(self, burst: bool = False) -> None:
        """Run until SIGTERM/SIGINT (the active jobs finish first; a second signal stops at
        once) or, with `burst`, until the queue and the engine are empty."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._register()
            while not self.stop_now and not (self.draining and self.engine.idle):
                if not self._take(burst):
                    break
                self.engine.last_forward = None
                outcomes = self.engine.iterate()
                if self.engine.last_forward is not None:
                    self.metrics.batch_done(*self.engine.last_forward)
                self._report(outcomes)
                self._resumed()
                self.previews.offer(self.engine.active)
                self._retire(outcomes)
            self._hand_back()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.finisher.close()  # the last images are stored before we leave
            self.previews.close()
            self.books.unregister()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.draining:
            self.stop_now = True
        self.draining = True
        log.info("signal %d: finishing %d active jobs, taking no more", signum, len(self.tasks))

    def _hand_back(self) -> None:
        """A forced stop: the jobs still running go back to the queue, as if this worker had
        been killed (a bounded number of attempts), without waiting to be found lost."""
        self.progress.flush()  # a step write in flight would void each hand-back's transaction
        queue = JobQueue(self.store.redis, self.store, self.settings.job_timeout)
        attempts = self.settings.max_attempts
        for task in list(self.tasks.values()):
            try:
                outcome = retry_lost(queue, task.job_id, task.params, self.name, attempts)
            except RedisError:
                # It stays ours in Redis; once we leave the registry it is found lost.
                log.warning("could not hand job %s back; it is found lost soon", task.job_id)
                continue
            log.warning("job %s handed back on a forced stop: %s", task.job_id, outcome)
            self.books.ended(task.rq_id, "worker_lost: the worker stopped")
            task.trace.end("worker_lost: handed back")
        self.tasks.clear()

    def _register(self) -> None:
        while not self.stop_now:
            try:
                self.books.register()
                if self.outcomes.billing is not None:
                    self.outcomes.billing.publish()  # the weights it runs: the API caches by
                return
            except RedisError:
                # Redis is away (a restart, a failover): keep the loaded pipeline and retry.
                log.warning("could not register with Redis; retrying in 1 s")
                time.sleep(1)

    def _take(self, burst: bool) -> bool:
        """Claim what fits; False when a burst run has nothing left to do."""
        try:
            if self._lost_redis or time.monotonic() - self._beaten_at > RQ_BEAT_EVERY_S:
                self.books.beat()
                self._beaten_at = time.monotonic()
                for job in self.claims.orphans(set(self.tasks) | self._finishing):
                    log.warning("job %s was claimed by a lost reply; running it", job.job_id)
                    self._start(job)
                self._lost_redis = False
            if self.draining or self.alone is not None:
                return True
            if self.engine.idle and not self.claims.wait(IDLE_WAIT_S):
                return not burst
            empty = self.engine.idle
            if not empty and self.claims.quiet():
                return True  # the queue was empty a moment ago
            if not empty and not self._retired and self.claims.still_blocked():
                return True  # nothing left the engine, and the next job still does not fit
            self._retired = False
            claimed = self.claims.take(self.engine.admission().take, empty)
            if self.claims.blocked_params and (
                paused := self.engine.preempt(self.claims.blocked_params)
            ):
                log.info("paused %s for a higher-priority job", ", ".join(paused))
                # Their last steps, which the coalescing progress thread may not have written.
                frozen = {s.job_id: (s.index, s.total_steps) for s in self.engine.paused}
                self.progress.report({job_id: frozen[job_id] for job_id in paused})
                self.progress.flush()  # before `paused`: a client never sees a stale step
                self.store.set_paused(paused, True, self.name)
                claimed += self.claims.take(self.engine.admission().take, False)
        except RedisError:
            log.warning("lost Redis; taking jobs again in 1 s")
            self._lost_redis = True  # a claim in flight may have taken jobs: look for them
            time.sleep(0 if self.engine.active else 1)
            return True
        for job in claimed:
            self._start(job)
        return True

    def _start(self, job: Claimed) -> None:
        if job.job_id in self.tasks:
            # A claim retried after a lost reply names it again. (A rerun of a job this worker
            # still holds cannot be claimed here: reruns only go into an empty engine.)
            return
        task = Task(job.job_id, job.params, rq_id=job.rq_id, attempt=job.attempt, trace=job.trace)
        self.tasks[job.job_id] = task
        task.timeout = job.timeout or self.settings.job_timeout
        self.books.started(job.rq_id)
        try:
            if job.params.mode != "text-to-image":
                task.init_image = self._input(init_image_key(job.job_id))
            if job.params.mode == "inpainting":
                task.mask = self._input(mask_image_key(job.job_id))
        except Exception:
            log.warning("could not load the input images of job %s", job.job_id, exc_info=True)
            self._retire([Outcome(job.job_id, error=("invalid_input", "unreadable init image"))])
            return
        if job.attempt > 1:
            log.info("job %s runs again (attempt %d), alone", job.job_id, job.attempt)
            self.alone = job.job_id
        deadline = time.monotonic() + task.timeout
        request = EngineRequest(job.job_id, job.params, task.init_image, deadline, task.mask)
        request.trace = job.trace  # its engine stages join its trace
        self.engine.submit(request)

    def _input(self, key: str) -> Image.Image:
        image = Image.open(io.BytesIO(self.storage.get(key)))
        image.load()  # a bad file fails its own job here, nothing else
        return image

    def _resumed(self) -> None:
        """Say so of the paused jobs that went on in the last iteration."""
        if not self.engine.resumed:
            return
        resumed, self.engine.resumed = self.engine.resumed, []
        try:
            self.store.set_paused(resumed, False, self.name)
        except RedisError:
            log.warning("could not mark %d jobs resumed", len(resumed))

    def _report(self, outcomes: list[Outcome]) -> None:
        steps = self.engine.progress()
        finished = {
            o.job_id: (o.steps, o.steps) for o in outcomes if o.ok and o.job_id in self.tasks
        }
        paused = [state.job_id for state in self.engine.paused]
        if steps or finished or paused:
            # Written before their final state; paused jobs only have their cancel flags read.
            self.progress.report(steps | finished, watch=paused)
        for job_id in self.progress.canceled(self.tasks):
            self.engine.cancel(job_id)
        for job_id in self.progress.lost(self.tasks) - self._lost:
            # Given up for dead (Redis was away from us, or we froze): it runs again elsewhere.
            log.warning("job %s is no longer this worker's; dropping it", job_id)
            self._lost.add(job_id)
            self.engine.cancel(job_id)

    def _retire(self, outcomes: list[Outcome]) -> None:
        """End the jobs that left the engine. Those that succeeded are stored and recorded
        together on the finishing thread, while the next steps run: one hand-over for all of
        them, so the engine waits for storage (and their last progress write) only when two
        such groups are still pending."""
        succeeded: list[tuple[Task, list[Image.Image]]] = []
        for outcome in outcomes:
            task = self.tasks.pop(outcome.job_id, None)
            if task is None:
                continue
            self._retired = True
            if self.alone == task.job_id:
                self.alone = None
            task.ended_as(outcome)
            if task.job_id in self._lost:
                self._lost.discard(task.job_id)
                if not outcome.ok:  # dropped: it is another attempt's to end, not ours
                    self.progress.forget([task.job_id])
                    self.books.ended(task.rq_id, "worker_lost: it runs again")
                    task.trace.end("worker_lost: it runs again")
                    continue
            if outcome.ok:
                # Counted by the chaos bench: a job denoised twice ran twice, whoever published.
                log.info("job %s denoised on attempt %d", task.job_id, task.attempt)
                succeeded.append((task, outcome.images))
            else:
                self.progress.forget([task.job_id])  # no late step write after the final state
                self._end_unfinished(task, outcome.error or ("internal", ""))
        if succeeded:
            worker = self.name
            ids = {task.job_id for task, _ in succeeded}
            self._finishing |= ids

            def finish() -> None:
                # Their last step (reported, never again) is written before their final state.
                self.progress.flush()
                self.progress.forget(ids)
                try:
                    failed = self.outcomes.succeed(succeeded, worker)
                finally:
                    self._finishing -= ids
                for task, _ in succeeded:
                    error = f"internal: {STORE_FAILED}" if task.job_id in failed else None
                    self.books.ended(task.rq_id, error)

            self.finisher.submit(finish)

    def _end_unfinished(self, task: Task, error: tuple[str, str]) -> None:
        self.progress.flush()
        code, message = error
        worker = self.name
        if code == "canceled":
            self.outcomes.cancel(task, worker)
            self.books.ended(task.rq_id)
        else:
            if code == "timeout":
                message = f"the job ran longer than {task.timeout:g} s"
            self.outcomes.fail(task.job_id, code, message, worker, task.attempt, task)
            self.books.ended(task.rq_id, f"{code}: {message}")
        self.outcomes.clean_up(task, worker)
