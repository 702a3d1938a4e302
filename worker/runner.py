"""Runs one job on the resident pipeline and records how it ended, whatever happens."""

import gc
import io
import logging
import time
from collections.abc import Callable

import torch
from PIL import Image
from redis.exceptions import RedisError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from app.core.images import encode_image
from app.core.jobs import CONTENT_TYPES, ImageInfo, JobError, JobParams, image_url
from app.core.limits import ServiceRate
from app.core.logs import bind, unbind
from app.core.storage import Storage, image_key, init_image_key
from app.core.store import JobStore
from worker.pipeline import InvalidInput, ResidentPipeline, free_memory

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


class Runner:
    """Turns a queued job into stored images and a terminal state."""

    def __init__(
        self,
        pipeline: ResidentPipeline,
        store: JobStore,
        storage: Storage,
        name: str = "",
        service_rate: ServiceRate | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.storage = storage
        self.name = name
        self.service_rate = service_rate

    def run(self, job_id: str, params: JobParams) -> None:
        """Run the job unless it was canceled first; re-raise failures so RQ records them too."""
        token = bind(job_id=job_id)
        try:
            self._run(job_id, params)
        finally:
            unbind(token)

    def _run(self, job_id: str, params: JobParams) -> None:
        if not self.store.start(job_id, params.denoising_steps, self.name):
            log.info("job %s was canceled or expired before it started", job_id)
            return
        out_of_memory = False
        try:
            self._generate_and_store(job_id, params)
        except JobCanceled:
            self._durably(self.store.mark_canceled, job_id, self.name)
            log.info("job %s canceled", job_id)
        except JobTimeoutException:
            # The limit travels with the queued job (set by the API that accepted it).
            rq_job = get_current_job()
            limit = f"{rq_job.timeout} s" if rq_job else "its time"
            self._fail(job_id, "timeout", f"the job ran longer than {limit}")
            raise
        except InvalidInput as exc:
            self._fail(job_id, "invalid_input", str(exc))
        except Exception as exc:
            if not _is_out_of_memory(exc):
                self._fail(job_id, "internal", "the worker failed to run the job")
                raise
            out_of_memory = True
            self._fail(job_id, "out_of_memory", "not enough memory; ask for fewer, smaller images")
        except BaseException:
            # A forced shutdown (second SIGTERM, Ctrl-C) mid-job: say so rather than leave it
            # running for ever.
            self._fail(job_id, "worker_lost", "the worker stopped during the job; submit again")
            raise
        finally:
            # Only while the job is still ours: if it was given to another worker (we looked
            # dead), that run needs the init image.
            if params.mode == "image-to-image" and self._still_ours(job_id):
                self.storage.delete(init_image_key(job_id))
            self._count_finished(job_id, params.model)
        if out_of_memory:
            # Only here, outside the except block, are the failed run's tensors unreferenced.
            gc.collect()
            free_memory(self.pipeline.device)

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

    def _on_step(self, job_id: str, step: int) -> None:
        try:
            canceled = self.store.report_progress(job_id, step)
        except RedisError:
            # Redis is away (a restart, a failover): denoise on; progress resumes after it.
            log.warning("progress of job %s not recorded at step %s", job_id, step)
            return
        if canceled:
            raise JobCanceled(job_id)

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

    def _generate_and_store(self, job_id: str, params: JobParams) -> None:
        init_image = None
        if params.mode == "image-to-image":
            init_image = Image.open(io.BytesIO(self.storage.get(init_image_key(job_id))))
        images = self.pipeline.generate(
            params, init_image, on_step=lambda step: self._on_step(job_id, step)
        )
        content_type = CONTENT_TYPES[params.output_format]
        infos = []
        for index, image in enumerate(images):
            data = encode_image(image, params.output_format)
            self.storage.put(image_key(job_id, index, params.output_format), data, content_type)
            infos.append(
                ImageInfo(
                    url=image_url(job_id, index),
                    width=image.width,
                    height=image.height,
                    seed=params.seed + index,
                    content_type=content_type,
                )
            )
        self._durably(self.store.succeed, job_id, infos, self.name)
