"""Micro-batching and overlapped finishing: real Redis, real storage, the tiny real pipeline."""

import io
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.core.jobs import JobStatus
from app.core.queue import JobQueue, rq_queue
from app.core.storage import LocalStorage, image_key, init_image_key
from tests.factories import make_params, submitted
from worker.finisher import Finisher
from worker.pipeline import ResidentPipeline
from worker.runner import Runner

MODEL = "tiny-sd"


def take(queue: JobQueue, job_id: str) -> None:
    """What RQ's dequeue does to the job a worker takes."""
    rq_queue(queue.redis, MODEL).remove(job_id)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def stored(storage: LocalStorage, job_id: str, index: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(storage.get(image_key(job_id, index, "png"))))


def assert_same_within_float_noise(a: Image.Image, b: Image.Image) -> None:
    # One 8-bit level: batched matrix products sum in another order, nothing more.
    assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_a_batched_job_gets_the_images_it_gets_alone(resident: ResidentPipeline) -> None:
    jobs = [
        make_params(prompt="a red circle", negative_prompt="green", seed=1),
        make_params(prompt="a blue square", negative_prompt="blurry", seed=5, num_images=2),
        make_params(prompt="a green triangle", negative_prompt="red", seed=9),
    ]
    batched = resident.generate_batch([(params, None) for params in jobs])
    assert [len(images) for images in batched] == [1, 2, 1]
    for params, images in zip(jobs, batched, strict=True):
        for alone, together in zip(resident.generate(params), images, strict=True):
            assert_same_within_float_noise(alone, together)
    # And the batch really carries each job's own prompt and seed.
    assert np.abs(pixels(batched[0][0]) - pixels(batched[2][0])).max() > 10


def test_image_to_image_jobs_batch_with_their_own_init_images(
    resident: ResidentPipeline,
) -> None:
    params = make_params(mode="image-to-image", strength=0.5)
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    batched = resident.generate_batch([(params, red), (params, blue)])
    assert_same_within_float_noise(resident.generate(params, red)[0], batched[0][0])
    assert_same_within_float_noise(resident.generate(params, blue)[0], batched[1][0])


def test_the_worker_runs_waiting_compatible_jobs_in_one_call(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    first = submitted(queue, make_params(seed=1))
    others = [submitted(queue, make_params(seed=s, prompt=f"shape {s}")) for s in (2, 3)]
    bigger = submitted(queue, make_params(width=128, height=128))
    fourth = submitted(queue, make_params(seed=4, num_images=2))
    take(queue, first)
    calls = []
    real = resident.generate_batch

    def counting(jobs: list, on_step: object = None) -> list:
        calls.append(len(jobs))
        return real(jobs, on_step)

    resident.generate_batch = counting  # type: ignore[method-assign]
    try:
        Runner(resident, queue.store, storage, "w1", max_batch=4).run(first, make_params(seed=1))
    finally:
        del resident.generate_batch
    assert calls == [3]  # 1 + 2 images; the 2-image job would have made 5
    for job_id, seed in zip([first, *others], (1, 2, 3), strict=True):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.worker == "w1"
        assert job.images[0].seed == seed and job.progress.step == 4
        alone = resident.generate(job.request)[0]
        assert_same_within_float_noise(alone, stored(storage, job_id))
    assert queue.store.get(bigger).status is JobStatus.QUEUED
    assert queue.store.get(fourth).status is JobStatus.QUEUED
    assert rq_queue(queue.redis, MODEL).job_ids == [bigger, fourth]


def test_max_batch_one_runs_jobs_one_by_one(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    first, second = submitted(queue, make_params()), submitted(queue, make_params(seed=2))
    take(queue, first)
    Runner(resident, queue.store, LocalStorage(tmp_path), max_batch=1).run(first, make_params())
    assert queue.store.get(first).status is JobStatus.SUCCEEDED
    assert queue.store.get(second).status is JobStatus.QUEUED


def test_a_job_canceled_mid_batch_ends_alone(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    params = make_params(num_inference_steps=40)
    first, victim, third = (
        submitted(queue, params.model_copy(update={"seed": s})) for s in (1, 2, 3)
    )
    take(queue, first)
    real_report = queue.store.report_progress

    def cancel_once_running(jobs: list[str], step: int, worker: str) -> set[str]:
        if step >= 2 and not queue.store.get(victim).cancel_requested:
            queue.cancel(victim, MODEL)  # the API's cancel, while the batch runs
        return real_report(jobs, step, worker)

    queue.store.report_progress = cancel_once_running  # type: ignore[method-assign]
    Runner(resident, queue.store, storage, max_batch=8).run(first, params)
    canceled = queue.store.get(victim)
    assert canceled.status is JobStatus.CANCELED and not canceled.images
    assert canceled.progress.step < 40
    for job_id in (first, third):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.progress.step == 40
        assert stored(storage, job_id).size == (64, 64)


class UndeletableStorage(LocalStorage):
    def delete(self, key: str) -> None:
        raise OSError("storage down")


def test_a_job_that_cannot_be_prepared_fails_alone(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    storage = UndeletableStorage(tmp_path)  # clean-up failing must not strand the batch
    params = make_params(mode="image-to-image", strength=0.5)
    first, second = submitted(queue, params), submitted(queue, params)
    for job_id in (first, second):
        storage.put(init_image_key(job_id), b"not an image", "image/png")
    # A broken init image fails its own job only; a good one still runs.
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(good, format="PNG")
    storage.put(init_image_key(second), good.getvalue(), "image/png")
    take(queue, first)
    Runner(resident, queue.store, storage, max_batch=8).run(first, params)
    assert queue.store.get(first).status is JobStatus.FAILED
    assert queue.store.get(second).status is JobStatus.SUCCEEDED


def test_finishing_overlaps_the_next_job_and_loses_nothing(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    finisher = Finisher()
    runner = Runner(resident, queue.store, storage, "w1", finisher=finisher)
    first, second = submitted(queue, make_params(seed=1)), submitted(queue, make_params(seed=2))
    for job_id in (first, second):
        take(queue, job_id)
        runner.run(job_id, make_params())
    finisher.close()  # what the worker does before it exits
    for job_id in (first, second):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and stored(storage, job_id).size == (64, 64)


def test_a_storage_failure_after_denoising_fails_that_job_only(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    class FlakyStorage(LocalStorage):
        def put(self, key: str, data: bytes, content_type: str) -> None:
            if broken in key:
                raise OSError("disk full")
            super().put(key, data, content_type)

    storage = FlakyStorage(tmp_path)
    finisher = Finisher()
    runner = Runner(resident, queue.store, storage, finisher=finisher)
    broken, fine = submitted(queue, make_params()), submitted(queue, make_params(seed=3))
    for job_id in (broken, fine):
        take(queue, job_id)
        runner.run(job_id, make_params())
    finisher.close()
    job = queue.store.get(broken)
    assert job.status is JobStatus.FAILED and job.error.code == "internal"
    assert "disk" not in job.error.message
    assert queue.store.get(fine).status is JobStatus.SUCCEEDED


def test_larger_images_fill_a_batch_sooner(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    # max_batch counts native-size images: at twice the side, 4 of them make 1.
    params = make_params(width=128, height=128, num_inference_steps=2)
    first, second = submitted(queue, params), submitted(queue, params)
    take(queue, first)
    Runner(resident, queue.store, LocalStorage(tmp_path), max_batch=4).run(first, params)
    assert queue.store.get(first).status is JobStatus.SUCCEEDED
    assert queue.store.get(second).status is JobStatus.QUEUED


def test_a_batch_out_of_memory_runs_its_jobs_one_by_one(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    real = resident.generate_batch

    def small_card(jobs: list, on_step: object = None) -> list:
        if len(jobs) > 1:  # room for one job's activations, not two
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(jobs, on_step)

    params = make_params()
    first, second = submitted(queue, params), submitted(queue, make_params(seed=9))
    take(queue, first)
    resident.generate_batch = small_card  # type: ignore[method-assign]
    try:
        Runner(resident, queue.store, LocalStorage(tmp_path), max_batch=8).run(first, params)
    finally:
        del resident.generate_batch
    for job_id in (first, second):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.progress.step == 4


def test_images_finished_after_a_rename_are_still_recorded(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    finisher = Finisher()
    released = threading.Event()
    finisher.submit(released.wait)  # storage is slow: the job's finishing waits its turn
    runner = Runner(resident, queue.store, LocalStorage(tmp_path), "w1", finisher=finisher)
    job_id = submitted(queue, make_params())
    take(queue, job_id)
    runner.run(job_id, make_params())
    runner.rename("w1-after-redis-came-back")  # what the worker does after losing Redis
    released.set()
    finisher.close()
    job = queue.store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.worker == "w1"
