"""The runner records how every job ends: real Redis and storage, real or stand-in pipeline."""

import io
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from redis import Redis
from rq import SimpleWorker
from rq.job import JobStatus as RQJobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from app.core.jobs import JobStatus
from app.core.limits import ServiceRate
from app.core.queue import JobQueue, rq_queue
from app.core.storage import LocalStorage, ObjectNotFound, image_key, init_image_key
from tests.factories import cancel_at_step, make_params, submitted
from worker.pipeline import ResidentPipeline
from worker.runner import Runner

MODEL = "tiny-sd"


class Failing:
    """A stand-in pipeline that fails the way a real one can (the model is beside the point)."""

    device = torch.device("cpu")
    native_size = 64

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def check(self, *args: object) -> None:
        pass

    def generate_batch(self, *args: object, **kwargs: object) -> list[list[Image.Image]]:
        raise self.error


def test_success_stores_every_image_and_records_it(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    params = make_params(num_images=2, seed=10, output_format="jpeg")
    job_id = submitted(queue, params)
    rate = ServiceRate(queue.redis)
    Runner(resident, queue.store, storage, name="worker-1", service_rate=rate).run(job_id, params)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.worker == "worker-1"
    assert rate.per_second("tiny-sd") > 0  # counted for the API's Retry-After
    assert (job.progress.step, job.progress.total_steps) == (4, 4)
    assert [(i.seed, i.content_type, i.url) for i in job.images] == [
        (10, "image/jpeg", f"/v1/jobs/{job_id}/images/0"),
        (11, "image/jpeg", f"/v1/jobs/{job_id}/images/1"),
    ]
    stored = Image.open(io.BytesIO(storage.get(image_key(job_id, 1, "jpeg"))))
    assert stored.format == "JPEG" and stored.size == (64, 64)


def test_cancel_flag_stops_at_the_next_step(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    params = make_params(num_inference_steps=40)
    job_id = submitted(queue, params)
    store = queue.store
    runner = Runner(resident, store, LocalStorage(tmp_path))
    cancel_at_step(queue, job_id)
    runner.run(job_id, params)
    job = store.get(job_id)
    # Progress travels on its own thread: the flag is seen at the step after it was read.
    assert job.status is JobStatus.CANCELED and 3 <= job.progress.step < 40 and not job.images


def test_job_canceled_before_start_is_skipped(queue: JobQueue, tmp_path: Path) -> None:
    params = make_params()
    job_id = submitted(queue, params)
    queue.cancel(job_id, MODEL)
    Runner(Failing(AssertionError("must not run")), queue.store, LocalStorage(tmp_path)).run(
        job_id, params
    )
    assert queue.store.get(job_id).status is JobStatus.CANCELED


@pytest.mark.parametrize(
    ("error", "code", "reraised"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), "out_of_memory", False),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory"), "out_of_memory", False),
        (JobTimeoutException("too long"), "timeout", True),
        (KeyError("secret internals"), "internal", True),
    ],
)
def test_failures_get_a_code_and_the_worker_goes_on(
    queue: JobQueue,
    resident: ResidentPipeline,
    tmp_path: Path,
    error: BaseException,
    code: str,
    reraised: bool,
) -> None:
    params = make_params()
    job_id = submitted(queue, params)
    runner = Runner(Failing(error), queue.store, LocalStorage(tmp_path))
    if reraised:  # so that RQ's failed-job registry agrees with the job record
        with pytest.raises(type(error)):
            runner.run(job_id, params)
    else:
        runner.run(job_id, params)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == code
    assert "secret" not in job.error.message
    # The same worker serves the next job.
    runner.pipeline = resident
    next_id = submitted(queue, params)
    runner.run(next_id, params)
    assert queue.store.get(next_id).status is JobStatus.SUCCEEDED


def test_every_job_of_a_failed_batch_gets_the_failure(queue: JobQueue, tmp_path: Path) -> None:
    params = make_params()
    first, second = (
        submitted(queue, params),
        submitted(queue, params.model_copy(update={"seed": 7})),
    )
    rq_queue(queue.redis, MODEL).remove(first)  # taken by RQ; the second waits behind it
    error = torch.OutOfMemoryError("CUDA out of memory")
    Runner(Failing(error), queue.store, LocalStorage(tmp_path), max_batch=8).run(first, params)
    for job_id in (first, second):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.FAILED and job.error.code == "out_of_memory"


def test_an_error_mid_batch_ends_every_job_of_it(queue: JobQueue, tmp_path: Path) -> None:
    params = make_params()
    first, second = (
        submitted(queue, params),
        submitted(queue, params.model_copy(update={"seed": 7})),
    )
    rq_queue(queue.redis, MODEL).remove(first)
    runner = Runner(Failing(KeyError("bug")), queue.store, LocalStorage(tmp_path), max_batch=8)
    with pytest.raises(KeyError):
        runner.run(first, params)
    for job_id in (first, second):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.FAILED and job.error.code == "internal"


def test_a_forced_shutdown_mid_job_ends_it_as_worker_lost(queue: JobQueue, tmp_path: Path) -> None:
    params = make_params()
    job_id = submitted(queue, params)
    runner = Runner(Failing(SystemExit(1)), queue.store, LocalStorage(tmp_path))
    with pytest.raises(SystemExit):
        runner.run(job_id, params)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "worker_lost"


def test_the_init_image_is_removed_once_the_job_ends(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    params = make_params(mode="image-to-image", strength=0.5)
    job_id = submitted(queue, params)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    storage.put(init_image_key(job_id), buffer.getvalue(), "image/png")
    Runner(resident, queue.store, storage).run(job_id, params)
    assert queue.store.get(job_id).status is JobStatus.SUCCEEDED
    with pytest.raises(ObjectNotFound):
        storage.get(init_image_key(job_id))
    assert storage.get(image_key(job_id, 0, "png"))


def test_a_job_whose_worker_died_ends_as_worker_lost(queue: JobQueue, redis: Redis) -> None:
    params = make_params()
    job_id = submitted(queue, params)
    rq = rq_queue(redis, MODEL)
    worker = SimpleWorker([rq], connection=redis, serializer=JSONSerializer)
    worker.register_birth()
    # The worker takes the job and starts it, then dies without a word (kill -9).
    rq_job = rq.fetch_job(job_id)
    rq.remove(rq_job)
    worker.prepare_execution(rq_job)
    rq_job.set_status(RQJobStatus.STARTED)
    queue.store.start(job_id, params.denoising_steps)
    # Later, RQ's registry maintenance finds the job abandoned and runs its failure callback.
    StartedJobRegistry(queue=rq).cleanup(timestamp=time.time() + 10 * 24 * 3600)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "worker_lost"
