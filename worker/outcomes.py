"""How a job ends, written so that it sticks: images stored, then the final state, durably."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image
from redis.exceptions import RedisError

from app.core.images import encode_image
from app.core.jobs import CONTENT_TYPES, ImageInfo, JobError, JobParams, JobStatus, image_url
from app.core.limits import ServiceRate
from app.core.logs import bind, unbind
from app.core.storage import Storage, image_key, init_image_key, mask_image_key
from app.core.store import JobStore
from app.core.usage import Counts
from worker.billing import Billing
from worker.engine.state import Outcome
from worker.metrics import WorkerMetrics
from worker.traces import OFF, JobTrace

log = logging.getLogger(__name__)

# How long a finished job waits for Redis to come back (a failover takes seconds).
REDIS_GRACE_S = 60.0
STORE_FAILED = "the worker could not store the images"


@dataclass
class Task:
    """One job the worker runs: its parameters, its RQ job, for image-to-image its decoded
    init image, and what the engine noted about its images' fidelity."""

    job_id: str
    params: JobParams
    init_image: Image.Image | None = None
    mask: Image.Image | None = None  # inpainting: white repaints
    rq_id: str = ""
    attempt: int = 1  # which run of the job this is: only the owning attempt publishes
    timeout: float | None = None
    trace: JobTrace = OFF  # its spans (worker/traces.py), ended with it
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)  # when the worker claimed it
    step_s: float | None = None  # seconds per step, claim to stored images, once it succeeded
    steps: int = 0  # denoising steps it ran
    worker_s: float = 0.0  # its share of the engine's time, then its own storing (usage)

    def ended_as(self, outcome: Outcome) -> None:
        """Take what the engine found and spent on the job."""
        self.warnings, self.steps, self.worker_s = outcome.warnings, outcome.steps, outcome.worker_s


def durably(write: Callable[..., bool], *args: object) -> bool:
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


class Outcomes:
    """Records each job's end for the worker (named per call: it changes after Redis was lost,
    and a finishing thread may still be writing for the old name)."""

    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        service_rate: ServiceRate | None = None,
        metrics: WorkerMetrics | None = None,
        billing: Billing | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.service_rate = service_rate
        self.metrics = metrics or WorkerMetrics("")
        self.billing = billing

    def fail(
        self,
        job_id: str,
        code: str,
        message: str,
        worker: str,
        attempt: int | None = None,
        task: Task | None = None,
    ) -> None:
        """Fail the job if it is still running on `worker` (and `attempt`); a no-op once it
        has ended or runs again. The `task` that ran, if any, is billed."""
        try:
            error = JobError(code=code, message=message)
            if durably(self.store.fail, job_id, error, worker, attempt):
                log.warning("job %s failed: %s", job_id, code)
                self.metrics.job_ended(job_id, JobStatus.FAILED)
                self._bill(task)
        except RedisError:
            # RQ's failure callback tries again for the job RQ gave us.
            log.exception("could not record the failure of job %s", job_id)
        if task is not None:
            task.trace.end(f"{code}: {message}")

    def cancel(self, task: Task, worker: str) -> None:
        """The job stopped at a step boundary on request: canceled (if still ours)."""
        job_id = task.job_id
        try:
            if durably(self.store.mark_canceled, job_id, worker, task.attempt):
                log.info("job %s canceled", job_id)
                self.metrics.job_ended(job_id, JobStatus.CANCELED)
                self._bill(task)
        except RedisError:
            log.exception("could not record the cancel of job %s", job_id)
        task.trace.end("canceled: on request")

    def succeed(self, done: list[tuple[Task, list[Image.Image]]], worker: str) -> set[str]:
        """Encode and store each job's images, then record its success; returns the ids of
        jobs that failed instead (their images could not be stored)."""
        failed: set[str] = set()
        for task, images in done:
            token = bind(job_id=task.job_id)
            try:
                storing = time.perf_counter()
                with task.trace.stage("encode.upload", {"ldm.images": len(images)}):
                    infos = self._store_images(task, images)
                task.worker_s += time.perf_counter() - storing
                published = durably(
                    self.store.succeed, task.job_id, infos, worker, task.warnings, task.attempt
                )
                if published:
                    self.metrics.job_ended(task.job_id, JobStatus.SUCCEEDED)
                    task.step_s = (time.monotonic() - task.started) / task.params.denoising_steps
                    self._bill(task, len(infos))
                else:
                    log.warning("job %s ended elsewhere meanwhile; images unused", task.job_id)
            except Exception:
                log.exception("could not store the images of job %s", task.job_id)
                self.fail(task.job_id, "internal", STORE_FAILED, worker, task.attempt)
                failed.add(task.job_id)
            finally:
                self._drop_init_image(task, worker)
                unbind(token)
                task.trace.end(f"internal: {STORE_FAILED}" if task.job_id in failed else None)
        self._count([task for task, _ in done])
        return failed

    def _bill(self, task: Task | None, images: int = 0) -> None:
        if self.billing is not None and task is not None:
            self.billing.ended(task.job_id, Counts(0, images, task.steps, task.worker_s))

    def clean_up(self, task: Task, worker: str) -> None:
        """Once a job has ended: its init image goes, and it counts as served. Never raises:
        a leftover file goes with the job's expiry."""
        self._drop_init_image(task, worker)
        self._count([task])

    def _drop_init_image(self, task: Task, worker: str) -> None:
        try:
            # Only while the job is still ours: if it was given to another worker (we looked
            # dead), that run needs the init image.
            inputs = {
                "image-to-image": [init_image_key(task.job_id)],
                "inpainting": [init_image_key(task.job_id), mask_image_key(task.job_id)],
            }.get(task.params.mode, [])
            if inputs and self._still_ours(task, worker):
                for key in inputs:
                    self.storage.delete(key)
        except Exception:
            log.exception("could not delete the init image of job %s", task.job_id)

    def _count(self, tasks: list[Task]) -> None:
        if self.service_rate is None or not tasks:
            return
        # Feeds the API's Retry-After when the queue is full; losing a count is harmless.
        models: dict[str, list[Task]] = {}
        for task in tasks:
            models.setdefault(task.params.model, []).append(task)
        for model, ended in models.items():
            job_ids = [task.job_id for task in ended]
            paces = [task.step_s for task in ended if task.step_s is not None]
            try:
                self.service_rate.record(model, *job_ids, step_s=paces)
            except RedisError:
                log.warning("could not count %d finished jobs", len(job_ids))

    def _still_ours(self, task: Task, worker: str) -> bool:
        try:
            return self.store.owner_of(task.job_id) in ((worker, task.attempt), None)
        except RedisError:
            return False  # keep the file; result expiry removes it later

    def _store_images(self, task: Task, images: list[Image.Image]) -> list[ImageInfo]:
        params = task.params
        content_type = CONTENT_TYPES[params.output_format]
        infos = []
        for index, image in enumerate(images):
            data = encode_image(image, params.output_format)
            key = image_key(task.job_id, index, params.output_format, attempt=task.attempt)
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
