"""Runs jobs on the resident pipeline, batched when it can, and makes sure each one ends."""

import gc
import io
import logging
import time

import torch
from PIL import Image
from redis.exceptions import RedisError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from app.core.batches import compatible_waiting
from app.core.jobs import JobParams, JobStatus
from app.core.limits import ServiceRate
from app.core.logs import bind, unbind
from app.core.queue import rq_queue
from app.core.storage import Storage, init_image_key
from app.core.store import Claim, JobStore
from worker.finisher import Finisher
from worker.metrics import WorkerMetrics
from worker.outcomes import Outcomes, Task, durably
from worker.pipeline import InvalidInput, ResidentPipeline, free_memory
from worker.progress import ProgressReporter

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """Raised from the step callback once every job of the batch was canceled."""


def _is_out_of_memory(exc: BaseException) -> bool:
    # CPU allocators raise a plain RuntimeError where CUDA raises OutOfMemoryError.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def _failure(exc: BaseException) -> tuple[str, str]:
    """The code and message a job gets when `exc` ends it."""
    if isinstance(exc, JobTimeoutException):
        # The limit travels with the queued job (set by the API that accepted it).
        rq_job = get_current_job()
        return (
            "timeout",
            f"the job ran longer than {f'{rq_job.timeout} s' if rq_job else 'its time'}",
        )
    if isinstance(exc, Exception):
        return "internal", "the worker failed to run the job"
    # A forced shutdown (second SIGTERM, Ctrl-C) mid-job: say so rather than leave it running.
    return "worker_lost", "the worker stopped during the job; submit again"


class Runner:
    """Turns queued jobs into stored images and terminal states, several per call if it can."""

    def __init__(
        self,
        pipeline: ResidentPipeline,
        store: JobStore,
        storage: Storage,
        name: str = "",
        service_rate: ServiceRate | None = None,
        max_batch: int = 1,
        finisher: Finisher | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.storage = storage
        self.name = name
        self.max_batch = max_batch
        self.finisher = finisher  # None: finish each batch before returning
        self.metrics = metrics or WorkerMetrics("")  # unserved unless the caller serves it
        self.outcomes = Outcomes(store, storage, service_rate, self.metrics)
        self.progress = ProgressReporter(store, name)

    def rename(self, name: str) -> None:
        """Run under a new worker name (RQ's worker is made anew after Redis was lost)."""
        self.name = self.progress.worker = name

    def run(self, job_id: str, params: JobParams) -> None:
        """Run the job, with compatible jobs waiting behind it, unless it was canceled first;
        re-raise failures so RQ records them too. Every job started here ends, whatever
        happens: those not handed to the finishing thread fail with the error's code."""
        token = bind(job_id=job_id)
        claimed: list[Task] = []
        handed_off: set[str] = set()
        try:
            claimed = self._claim(job_id, params)
            tasks = [task for task in claimed if self._prepare(task)]
            if tasks:
                self._run(tasks, handed_off)
        except BaseException as exc:
            code, message = _failure(exc)
            for task in claimed:
                if task.job_id not in handed_off:
                    self.outcomes.fail(task.job_id, code, message, self.name)
                    self.outcomes.clean_up(task, self.name)
            raise
        finally:
            unbind(token)

    def _claim(self, job_id: str, params: JobParams) -> list[Task]:
        """Start the job RQ gave us, and compatible jobs already waiting, in one step."""
        waiting = []
        # `max_batch` counts images at native size: larger images fill a batch sooner.
        budget = self.max_batch * self.pipeline.native_size**2 // (params.width * params.height)
        if (room := budget - params.num_images) > 0:
            try:
                waiting = compatible_waiting(self.store.redis, self.store, params, room)
            except RedisError:
                log.warning("could not look for jobs to batch with %s", job_id)
        queue_key = rq_queue(self.store.redis, params.model).key
        claims = [Claim(job_id, "", queue_key, params.denoising_steps)]
        claims += [claim for claim, _ in waiting]
        started = set(self.store.claim(self.name, claims))
        if job_id not in started:
            log.info("job %s was canceled or expired before it started", job_id)
        everyone = [(job_id, params)] + [(claim.job_id, p) for claim, p in waiting]
        return [Task(job, p) for job, p in everyone if job in started]

    def _prepare(self, task: Task) -> bool:
        """Load and check what a job needs before it joins the batch; fail it if it cannot."""
        try:
            if task.params.mode == "image-to-image":
                data = self.storage.get(init_image_key(task.job_id))
                task.init_image = Image.open(io.BytesIO(data))
                task.init_image.load()  # a bad file fails its own job here, not the batch
            self.pipeline.check(task.params, task.init_image)
            return True
        except InvalidInput as exc:
            self.outcomes.fail(task.job_id, "invalid_input", str(exc), self.name)
        except Exception:
            log.exception("could not prepare job %s", task.job_id)
            self.outcomes.fail(
                task.job_id, "internal", "the worker failed to run the job", self.name
            )
        self.outcomes.clean_up(task, self.name)
        return False

    def _run(self, tasks: list[Task], handed_off: set[str]) -> None:
        live = {task.job_id for task in tasks}  # those not canceled mid-run
        if len(tasks) > 1:
            log.info("running %d jobs as one batch", len(tasks))
        outputs = None
        out_of_memory = False
        started = time.perf_counter()
        try:
            outputs = self.pipeline.generate_batch(
                [(task.params, task.init_image) for task in tasks],
                on_step=lambda step: self._on_step(live, step),
            )
            images = sum(task.params.num_images for task in tasks)
            self.metrics.batch_done(images, time.perf_counter() - started)
        except JobCanceled:
            pass  # each job was marked canceled as its flag was seen
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise  # `run` fails the jobs still running
            out_of_memory = True
            if len(tasks) == 1:  # a batch is split instead: each job may fit alone
                message = "not enough memory; ask for fewer, smaller images"
                self.outcomes.fail(tasks[0].job_id, "out_of_memory", message, self.name)
        finally:
            self.progress.flush()  # no late step write after the final state
            self.progress.forget([task.job_id for task in tasks])
        split = out_of_memory and len(tasks) > 1
        for task in tasks:
            if (outputs is None and not split) or task.job_id not in live:
                self.outcomes.clean_up(task, self.name)
        if out_of_memory:
            # Only here, outside the except block, are the failed run's tensors unreferenced.
            gc.collect()
            free_memory(self.pipeline.device)
        if split:
            log.warning("a batch of %d jobs ran out of memory; running them one by one", len(tasks))
            for task in tasks:
                if task.job_id in live:
                    self._run([task], handed_off)
        if outputs is not None:
            pairs = zip(tasks, outputs, strict=True)
            done = [(task, images) for task, images in pairs if task.job_id in live]
            worker = self.name  # as it is now: a rename must not orphan these jobs
            if self.finisher is None:
                self.outcomes.succeed(done, worker)
            else:
                self.finisher.submit(lambda: self.outcomes.succeed(done, worker))
            handed_off.update(task.job_id for task, _ in done)

    def _on_step(self, live: set[str], step: int) -> None:
        """After each denoising step: hand progress over, end jobs whose cancel was seen."""
        self.progress.report(tuple(live), step)
        for job_id in self.progress.canceled(tuple(live)):
            if durably(self.store.mark_canceled, job_id, self.name):
                self.metrics.job_ended(job_id, JobStatus.CANCELED)
            live.discard(job_id)  # only once it says so: else `run` fails it
            log.info("job %s canceled", job_id)
        if not live:
            raise JobCanceled()
