"""What goes wrong in a running batch ends the job it belongs to, never its batch-mates or the
worker: cancel, timeout, a retried (poison) job, out of memory, bad input, bugs, storage.
Real Redis, real storage, the real tiny-sd pipeline; faults are put into its forward."""

import io
import time

from PIL import Image

from app.core.jobs import JobStatus
from app.core.queue import JobQueue, rq_queue
from app.core.recovery import retry_lost
from app.core.storage import LocalStorage, image_key, init_image_key
from app.core.store import Claim
from tests.factories import cancel_at_step, make_params, max_diff, stored_image, submitted
from tests.worker.conftest import Forwards, ServerFactory
from worker.engine.state import JobState
from worker.pipeline import ResidentPipeline

MODEL = "tiny-sd"
OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes"


def status_of(queue: JobQueue, job_id: str) -> tuple[JobStatus, str | None]:
    job = queue.store.get(job_id)
    return job.status, job.error.code if job.error else None


def test_a_canceled_job_leaves_its_batch_at_a_step_boundary(
    queue: JobQueue, storage: LocalStorage, forwards: Forwards, make_server: ServerFactory
) -> None:
    params = make_params(num_inference_steps=20)
    first, victim, third = (
        submitted(queue, params.model_copy(update={"seed": s})) for s in (1, 2, 3)
    )
    server = make_server()
    cancel_at_step(queue, victim, step=3, store=server.store)  # the API's cancel, mid-batch
    server.serve(burst=True)
    canceled = queue.store.get(victim)
    assert canceled.status is JobStatus.CANCELED and not canceled.images
    # Progress travels on its own thread: the flag is seen a few steps after it was set.
    assert 3 <= canceled.progress.step < 20
    assert canceled.progress.step <= len(forwards.with_job(victim)) < 20  # it left the batch
    for job_id in (first, third):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.progress.step == 20
        assert stored_image(storage, job_id).size == (64, 64)
    assert len(forwards.ran) == 20


def test_a_job_past_its_timeout_fails_alone(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    slow = submitted(queue, make_params(num_inference_steps=100))
    quick = [submitted(queue, make_params(seed=s)) for s in (1, 2)]
    rq_job = rq_queue(queue.redis, MODEL).fetch_job(slow)
    rq_job.timeout = 1  # what the API's job_timeout sets on every job
    rq_job.save()

    def sluggish(states: list[JobState]) -> None:
        if any(state.job_id == slow for state in states):
            time.sleep(0.05)  # at least 5 s for its 100 steps

    forwards.hook = sluggish
    make_server().serve(burst=True)
    job = queue.store.get(slow)
    assert job.status is JobStatus.FAILED and job.error.code == "timeout"
    assert job.error.message == "the job ran longer than 1 s"
    assert job.progress.step < 100 and len(forwards.with_job(slow)) < 100
    for job_id in quick:
        assert status_of(queue, job_id) == (JobStatus.SUCCEEDED, None)


def test_a_retried_job_runs_alone_and_nothing_passes_it(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    params = make_params(num_inference_steps=2)
    before = [submitted(queue, params.model_copy(update={"seed": s})) for s in (1, 2)]
    poison = submitted(queue, params)
    # A worker took it and died (kill -9); recovery queued it again as attempt 2.
    key = rq_queue(queue.redis, MODEL).key
    assert queue.store.claim("w-dead", [Claim(poison, poison, key, 2)]) == [poison]
    assert retry_lost(queue, poison, params, "w-dead", max_attempts=3) == "requeued"
    after = [submitted(queue, params.model_copy(update={"seed": s})) for s in (3, 4)]
    make_server().serve(burst=True)

    assert forwards.with_job(poison) == [[poison]] * 2  # with nobody else
    runs = [set(batch) for batch in forwards.ran]
    assert runs == [set(before)] * 2 + [{poison}] * 2 + [set(after)] * 2
    job = queue.store.get(poison)
    assert job.status is JobStatus.SUCCEEDED and job.attempt == 2
    for job_id in before + after:
        assert status_of(queue, job_id) == (JobStatus.SUCCEEDED, None)


def test_an_out_of_memory_forward_splits_the_batch(
    queue: JobQueue,
    resident: ResidentPipeline,
    storage: LocalStorage,
    forwards: Forwards,
    make_server: ServerFactory,
) -> None:
    def small_card(states: list[JobState]) -> None:
        if len(states) > 1:  # room for one job's activations, not two
            raise RuntimeError(OOM)

    forwards.hook = small_card
    ids = [submitted(queue, make_params(seed=s, num_inference_steps=3)) for s in (1, 2, 3)]
    make_server().serve(burst=True)
    assert any(len(batch) == 3 for batch in forwards.tried)
    assert forwards.ran and all(len(batch) == 1 for batch in forwards.ran)
    for job_id in ids:
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.progress.step == 3
        (alone,) = resident.generate(job.request)
        assert max_diff(alone, stored_image(storage, job_id)) <= 2  # the split lost nothing


def test_a_job_out_of_memory_even_alone_fails_and_its_batch_mates_go_on(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    ids = [submitted(queue, make_params(seed=s, num_inference_steps=3)) for s in (1, 2, 3)]
    huge = ids[1]

    def too_big(states: list[JobState]) -> None:
        if any(state.job_id == huge for state in states):
            raise RuntimeError(OOM)

    forwards.hook = too_big
    make_server().serve(burst=True)
    job = queue.store.get(huge)
    assert job.status is JobStatus.FAILED and job.error.code == "out_of_memory"
    assert "fewer, smaller images" in job.error.message
    for job_id in (ids[0], ids[2]):
        assert status_of(queue, job_id) == (JobStatus.SUCCEEDED, None)


def test_an_unreadable_init_image_fails_only_its_job(
    queue: JobQueue, tmp_path, make_server: ServerFactory
) -> None:
    class UndeletableStorage(LocalStorage):
        def delete(self, key: str) -> None:
            raise OSError("storage down")  # clean-up failing must not strand anyone

    storage = UndeletableStorage(tmp_path / "undeletable")
    params = make_params(mode="image-to-image", strength=0.5)
    bad, good, text = (
        submitted(queue, params),
        submitted(queue, params),
        submitted(queue, make_params()),
    )
    storage.put(init_image_key(bad), b"not an image", "image/png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    storage.put(init_image_key(good), buffer.getvalue(), "image/png")
    make_server(storage=storage).serve(burst=True)
    job = queue.store.get(bad)
    assert job.status is JobStatus.FAILED and job.error.code == "invalid_input"
    assert "init image" in job.error.message
    for job_id in (good, text):
        assert status_of(queue, job_id) == (JobStatus.SUCCEEDED, None)


def test_a_bug_in_a_forward_fails_its_jobs_and_the_worker_goes_on(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    def broken_once(states: list[JobState]) -> None:
        if len(forwards.tried) == 1:
            raise KeyError("secret internals")

    forwards.hook = broken_once
    ids = [submitted(queue, make_params(seed=s, num_inference_steps=2)) for s in range(4)]
    make_server(max_batch=2).serve(burst=True)  # two jobs to a forward
    assert forwards.tried[0] == ids[:2]
    for job_id in ids[:2]:
        job = queue.store.get(job_id)
        assert job.status is JobStatus.FAILED and job.error.code == "internal"
        assert "secret" not in job.error.message
    for job_id in ids[2:]:
        assert status_of(queue, job_id) == (JobStatus.SUCCEEDED, None)


def test_a_storage_failure_after_denoising_fails_that_job_only(
    queue: JobQueue, tmp_path, make_server: ServerFactory
) -> None:
    class FlakyStorage(LocalStorage):
        def put(self, key: str, data: bytes, content_type: str) -> None:
            if key == image_key(broken, 0, "png", attempt=1):
                raise OSError("disk full")
            super().put(key, data, content_type)

    broken, fine = submitted(queue, make_params()), submitted(queue, make_params(seed=3))
    make_server(storage=FlakyStorage(tmp_path / "flaky")).serve(burst=True)
    job = queue.store.get(broken)
    assert job.status is JobStatus.FAILED and job.error.code == "internal"
    assert "disk" not in job.error.message
    assert status_of(queue, fine) == (JobStatus.SUCCEEDED, None)
    # RQ agrees with the record (rq info, rq-dashboard).
    rq = rq_queue(queue.redis, MODEL)
    assert broken in rq.failed_job_registry.get_job_ids()
    assert broken not in rq.finished_job_registry.get_job_ids()


def test_a_job_claimed_by_a_lost_reply_is_adopted_and_runs(
    queue: JobQueue, make_server: ServerFactory
) -> None:
    # Redis failed over mid-claim: the claim took the job (it runs "on" this worker, off the
    # queue), but its reply never came back. Nobody else will run it: the worker must.
    server = make_server()
    job_id = submitted(queue, make_params(seed=3))
    key = rq_queue(queue.redis, "tiny-sd").key
    assert queue.store.claim(server.name, [Claim(job_id, job_id, key, 4)]) == [job_id]
    assert queue.redis.llen(key) == 0
    server._lost_redis = True  # what the failed claim's RedisError leaves behind
    server.serve(burst=True)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.worker == server.name
