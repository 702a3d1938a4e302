"""The worker serves a model's queue through the step engine: real Redis, real storage, the
real tiny-sd pipeline. Jobs of any steps, guidance, size and scheduler share forwards, join a
running batch at a step boundary, and each gets the images it gets alone."""

import io

import pytest
from PIL import Image

from app.core.images import encode_image
from app.core.jobs import JobStatus
from app.core.limits import ServiceRate
from app.core.queue import JobQueue, rq_queue
from app.core.storage import LocalStorage, ObjectNotFound, init_image_key
from tests.factories import make_params, max_diff, stored_image, submitted
from tests.worker.conftest import Forwards, ServerFactory
from worker.pipeline import ResidentPipeline

MODEL = "tiny-sd"


def put_init_image(storage: LocalStorage, job_id: str, color: str, size=(64, 64)) -> Image.Image:
    """What the API stores for an image-to-image job."""
    image = Image.new("RGB", size, color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    storage.put(init_image_key(job_id), buffer.getvalue(), "image/png")
    return image


def test_mixed_jobs_share_forwards_and_each_gets_its_own_images(
    queue: JobQueue,
    resident: ResidentPipeline,
    storage: LocalStorage,
    forwards: Forwards,
    make_server: ServerFactory,
) -> None:
    red = Image.new("RGB", (64, 64), "red")
    jobs = {
        "guided": make_params(seed=10, num_images=2),
        "unguided_ddim": make_params(
            prompt="a blue square", seed=5, num_inference_steps=6, guidance_scale=1.0,
            scheduler="ddim",
        ),
        "dpmpp": make_params(
            prompt="a green triangle", negative_prompt="blurry", seed=9, num_inference_steps=3,
            guidance_scale=5.0, scheduler="dpmpp_2m",
        ),
        "wide_ancestral": make_params(
            width=96, height=64, seed=3, num_inference_steps=2, scheduler="euler_a",
            output_format="jpeg",
        ),
        "img2img": make_params(mode="image-to-image", strength=0.5, seed=7),
    }  # fmt: skip
    ids = {name: submitted(queue, params) for name, params in jobs.items()}
    put_init_image(storage, ids["img2img"], "red")
    server = make_server(max_batch=8)
    server.serve(burst=True)

    for name, params in jobs.items():
        job = queue.store.get(ids[name])
        assert job.status is JobStatus.SUCCEEDED, (name, job.error)
        assert job.worker == server.name
        steps = params.denoising_steps
        assert (job.progress.step, job.progress.total_steps) == (steps, steps), name
        assert [image.seed for image in job.images] == [
            params.seed + i for i in range(params.num_images)
        ]
        assert {(i.width, i.height) for i in job.images} == {(params.width, params.height)}
    assert queue.store.get(ids["wide_ancestral"]).images[0].content_type == "image/jpeg"

    # Shared forwards: fewer than the steps of all jobs, and jobs of different steps,
    # guidance and schedulers side by side (the 96x64 job is a latent shape of its own).
    assert len(forwards.ran) < sum(p.denoising_steps for p in jobs.values())
    together = {ids["guided"], ids["unguided_ddim"], ids["dpmpp"], ids["img2img"]}
    assert any(together <= set(batch) for batch in forwards.ran)
    assert all(len(batch) == 1 for batch in forwards.with_job(ids["wide_ancestral"]))

    # Each job's images are what it gets alone, to float noise (batched sums in another order).
    for name, params in jobs.items():
        init = red if params.mode == "image-to-image" else None
        for index, alone in enumerate(resident.generate(params, init)):
            made = stored_image(storage, ids[name], index, params.output_format)
            encoded = Image.open(io.BytesIO(encode_image(alone, params.output_format)))
            assert max_diff(encoded, made) <= 2, (name, index)
    # ...and carry the job's own prompt and seed.
    first = stored_image(storage, ids["guided"], 0)
    assert max_diff(first, stored_image(storage, ids["guided"], 1)) > 10
    assert max_diff(stored_image(storage, ids["dpmpp"]), stored_image(storage, ids["img2img"])) > 10

    with pytest.raises(ObjectNotFound):  # the init image goes once its job has ended
        storage.get(init_image_key(ids["img2img"]))
    assert ServiceRate(queue.redis).per_second(MODEL) > 0  # counted for the API's Retry-After
    assert ServiceRate(queue.redis).pace(MODEL).step_s > 0  # and its ETAs
    assert queue.depth(MODEL) == 0 and server.engine.idle


def test_a_job_joins_a_running_batch_at_a_step_boundary(
    queue: JobQueue,
    resident: ResidentPipeline,
    storage: LocalStorage,
    forwards: Forwards,
    make_server: ServerFactory,
) -> None:
    # Room for two guided native-size jobs: the third waits until the short one leaves,
    # then joins the long one mid-way, at another timestep.
    long = submitted(queue, make_params(seed=1, num_inference_steps=6))
    short = submitted(queue, make_params(seed=2, num_inference_steps=2, scheduler="euler_a"))
    late = submitted(queue, make_params(seed=3, num_inference_steps=3, scheduler="ddim"))
    make_server(max_batch=2).serve(burst=True)

    assert forwards.ran[:2] == [[long, short]] * 2
    # `late` joined while `long` was at step 3, and rode along: no forward of its own.
    assert [set(batch) for batch in forwards.ran[2:5]] == [{long, late}] * 3
    assert len(forwards.ran) == 6 and len(forwards.with_job(long)) == 6
    for job_id in (long, short, late):
        job = queue.store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED
        (alone,) = resident.generate(job.request)
        assert max_diff(alone, stored_image(storage, job_id)) <= 2


def test_the_budget_counts_rows_times_pixels(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    # max_batch=2: two guided 64x64 images per latent shape. A guided 128x128 job fills its
    # shape alone, without holding back the 64x64 jobs; unguided ones (one row each) fit
    # four to a forward.
    big = submitted(queue, make_params(width=128, height=128, num_inference_steps=2))
    small = [
        submitted(queue, make_params(seed=s, guidance_scale=1.0, num_inference_steps=2))
        for s in range(5)
    ]
    make_server(max_batch=2).serve(burst=True)
    assert forwards.with_job(big) == [[big]] * 2
    beside = [batch for batch in forwards.ran if big not in batch]
    assert beside == [small[:4], small[:4], small[4:], small[4:]]
    last_big = max(i for i, batch in enumerate(forwards.ran) if big in batch)
    assert forwards.ran.index(small[:4]) < last_big  # they ran while it still did
    for job_id in (big, *small):
        assert queue.store.get(job_id).status is JobStatus.SUCCEEDED


def test_max_batch_one_runs_jobs_one_at_a_time_in_queue_order(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    ids = [submitted(queue, make_params(seed=s, num_inference_steps=2)) for s in range(3)]
    make_server(max_batch=1).serve(burst=True)
    assert forwards.ran == [[ids[0]], [ids[0]], [ids[1]], [ids[1]], [ids[2]], [ids[2]]]
    started = [queue.store.get(job_id).started_at for job_id in ids]
    assert started == sorted(started)
    assert all(queue.store.get(job_id).status is JobStatus.SUCCEEDED for job_id in ids)


def test_a_job_canceled_while_queued_never_runs(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    canceled, kept = submitted(queue, make_params()), submitted(queue, make_params(seed=2))
    queue.cancel(canceled, MODEL)
    make_server().serve(burst=True)
    assert queue.store.get(canceled).status is JobStatus.CANCELED
    assert queue.store.get(kept).status is JobStatus.SUCCEEDED
    assert not forwards.with_job(canceled)


def test_a_long_prompt_says_on_the_job_that_it_was_cut(
    queue: JobQueue, make_server: ServerFactory
) -> None:
    long = submitted(queue, make_params(prompt=" ".join(["red circle"] * 60)))
    short = submitted(queue, make_params())
    make_server().serve(burst=True)
    warned = queue.store.get(long)
    assert warned.status is JobStatus.SUCCEEDED
    assert len(warned.warnings) == 1 and "prompt is longer" in warned.warnings[0]
    assert queue.store.get(short).warnings == []


def test_an_empty_queue_ends_a_burst_at_once(queue: JobQueue, make_server: ServerFactory) -> None:
    server = make_server()
    server.serve(burst=True)
    assert server.engine.idle and server.engine.iteration == 0
    assert rq_queue(queue.redis, MODEL).count == 0
