"""Runs jobs on the resident pipeline, batched when it can, and records how each ended."""

import gc
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from redis.exceptions import RedisError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from app.core.batches import compatible_waiting
from app.core.images import encode_image
from app.core.jobs import CONTENT_TYPES, ImageInfo, JobError, JobParams, image_url
from app.core.limits import ServiceRate
from app.core.logs import bind, unbind
from app.core.queue import rq_queue
from app.core.storage import Storage, image_key, init_image_key
from app.core.store import Claim, JobStore
from worker.finisher import Finisher
from worker.pipeline import InvalidInput, ResidentPipeline, free_memory
from worker.progress import ProgressReporter

log = logging.getLogger(__name__)


# How long a finished job waits for Redis to come back (a failover takes seconds).
REDIS_GRACE_S = 60.0


class JobCanceled(Exception):
    """Raised from the step callback when the client canceled the running job."""


def _is_out_of_memory(exc: BaseException) -> bool:
    # CPU allocators raise a plain RuntimeError where CUDA raises OutOfMemoryError.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


@dataclass
class Task:
    """One job of a batch: its parameters and, for image-to-image, its decoded init image."""

    job_id: str
    params: JobParams
    init_image: Image.Image | None = None


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
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.storage = storage
        self.name = name
        self.service_rate = service_rate
        self.max_batch = max_batch
        self.finisher = finisher  # None: finish each batch before returning
        self.progress = ProgressReporter(store, name)

    def rename(self, name: str) -> None:
        """Run under a new worker name (RQ's worker is made anew after Redis was lost)."""
        self.name = self.progress.worker = name

    def run(self, job_id: str, params: JobParams) -> None:
        """Run the job, with compatible jobs waiting behind it, unless it was canceled first;
        re-raise failures so RQ records them too."""
        token = bind(job_id=job_id)
        try:
            tasks = [self._prepare(task) for task in self._claim(job_id, params)]
            if tasks := [task for task in tasks if task is not None]:
                self._run(tasks)
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

    def _prepare(self, task: Task) -> Task | None:
        """Load and check what a job needs before it joins the batch; fail it if it cannot."""
        try:
            if task.params.mode == "image-to-image":
                data = self.storage.get(init_image_key(task.job_id))
                task.init_image = Image.open(io.BytesIO(data))
                task.init_image.load()  # a bad file fails its own job here, not the batch
            self.pipeline.check(task.params, task.init_image)
            return task
        except InvalidInput as exc:
            self._fail(task.job_id, "invalid_input", str(exc))
        except Exception:
            log.exception("could not prepare job %s", task.job_id)
            self._fail(task.job_id, "internal", "the worker failed to run the job")
        self._clean_up(task)
        return None

    def _run(self, tasks: list[Task]) -> None:
        live = {task.job_id for task in tasks}  # those not canceled mid-run
        if len(tasks) > 1:
            log.info("running %d jobs as one batch", len(tasks))
        outputs = None
        out_of_memory = False
        try:
            outputs = self.pipeline.generate_batch(
                [(task.params, task.init_image) for task in tasks],
                on_step=lambda step: self._on_step(live, step),
            )
        except JobCanceled:
            pass  # each job was marked canceled as its flag was seen
        except JobTimeoutException:
            # The limit travels with the queued job (set by the API that accepted it).
            rq_job = get_current_job()
            limit = f"{rq_job.timeout} s" if rq_job else "its time"
            self._fail_all(live, "timeout", f"the job ran longer than {limit}")
            raise
        except Exception as exc:
            if not _is_out_of_memory(exc):
                self._fail_all(live, "internal", "the worker failed to run the job")
                raise
            out_of_memory = True
            if len(tasks) == 1:  # a batch is split instead: each job may fit alone
                message = "not enough memory; ask for fewer, smaller images"
                self._fail_all(live, "out_of_memory", message)
        except BaseException:
            # A forced shutdown (second SIGTERM, Ctrl-C) mid-job: say so rather than leave it
            # running for ever.
            self._fail_all(live, "worker_lost", "the worker stopped during the job; submit again")
            raise
        finally:
            self.progress.flush()  # no late step write after the final state
            self.progress.forget([task.job_id for task in tasks])
            split = out_of_memory and len(tasks) > 1
            for task in tasks:
                if (outputs is None and not split) or task.job_id not in live:
                    self._clean_up(task)
        if out_of_memory:
            # Only here, outside the except block, are the failed run's tensors unreferenced.
            gc.collect()
            free_memory(self.pipeline.device)
            if split:
                log.warning(
                    "a batch of %d jobs ran out of memory; running them one by one", len(tasks)
                )
                for task in tasks:
                    if task.job_id in live:
                        self._run([task])
        if outputs is not None:
            pairs = zip(tasks, outputs, strict=True)
            done = [(task, images) for task, images in pairs if task.job_id in live]
            if self.finisher is None:
                self._store_results(done)
            else:
                self.finisher.submit(lambda: self._store_results(done))

    def _store_results(self, done: list[tuple[Task, list[Image.Image]]]) -> None:
        """Encode and store each job's images, then record its success."""
        for task, images in done:
            token = bind(job_id=task.job_id)
            try:
                infos = self._store_images(task, images)
                self._durably(self.store.succeed, task.job_id, infos, self.name)
            except Exception:
                log.exception("could not store the images of job %s", task.job_id)
                self._fail(task.job_id, "internal", "the worker could not store the images")
            finally:
                self._clean_up(task)
                unbind(token)

    def _clean_up(self, task: Task) -> None:
        """Once a job has ended: its init image goes, and it counts as served."""
        # Only while the job is still ours: if it was given to another worker (we looked
        # dead), that run needs the init image.
        if task.params.mode == "image-to-image" and self._still_ours(task.job_id):
            self.storage.delete(init_image_key(task.job_id))
        self._count_finished(task.job_id, task.params.model)

    def _fail_all(self, job_ids: set[str], code: str, message: str) -> None:
        for job_id in sorted(job_ids):
            self._fail(job_id, code, message)

    def _still_ours(self, job_id: str) -> bool:
        try:
            return self.store.worker_of(job_id) in (self.name, None)
        except RedisError:
            return False  # keep the file; result expiry removes it later

    def _count_finished(self, job_id: str, model: str) -> None:
        # Feeds the API's Retry-After when the queue is full; losing a count is harmless.
        if self.service_rate is not None:
            try:
                self.service_rate.record(model, job_id)
            except RedisError:
                log.warning("could not count job %s as finished", job_id)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        log.warning("job %s failed: %s", job_id, code)
        try:
            self._durably(self.store.fail, job_id, JobError(code=code, message=message), self.name)
        except RedisError:
            # RQ's failure callback tries again once the exception reaches it.
            log.exception("could not record the failure of job %s", job_id)

    def _on_step(self, live: set[str], step: int) -> None:
        """After each denoising step: hand progress over, end jobs whose cancel was seen."""
        self.progress.report(tuple(live), step)
        for job_id in self.progress.canceled(tuple(live)):
            live.discard(job_id)
            self._durably(self.store.mark_canceled, job_id, self.name)
            log.info("job %s canceled", job_id)
        if not live:
            raise JobCanceled()

    def _durably(self, write: Callable[..., bool], *args: object) -> bool:
        """A terminal write, retried while Redis is away (up to `REDIS_GRACE_S`): the images
        exist, only the record must still say so."""
        deadline = time.monotonic() + REDIS_GRACE_S
        delay = 0.1
        while True:
            try:
                return write(*args)
            except RedisError:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Redis away; retrying in %.1f s", delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _store_images(self, task: Task, images: list[Image.Image]) -> list[ImageInfo]:
        params = task.params
        content_type = CONTENT_TYPES[params.output_format]
        infos = []
        for index, image in enumerate(images):
            data = encode_image(image, params.output_format)
            key = image_key(task.job_id, index, params.output_format)
            self.storage.put(key, data, content_type)
            infos.append(
                ImageInfo(
                    url=image_url(task.job_id, index),
                    width=image.width,
                    height=image.height,
                    seed=params.seed + index,
                    content_type=content_type,
                )
            )
        return infos
