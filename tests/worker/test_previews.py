"""Live previews from a real worker: real Redis, the real tiny-sd pipeline and its VAE's fit."""

import base64
import io

import torch
from PIL import Image
from redis import Redis

from app.core.jobs import JobStatus
from app.core.queue import JobQueue
from app.core.settings import Settings
from app.core.storage import LocalStorage, image_key
from app.core.store import JobStore
from tests.factories import make_params, submitted
from tests.worker.conftest import ServerFactory
from worker.previews import Shot


def previews_of(redis: Redis, job_id: str) -> list[dict[str, str]]:
    """The preview entries of a job's event stream, oldest first."""
    entries = redis.xrange(f"ldm:job:{job_id}:events")
    events = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    return [event for event in events if event["type"] == "preview"]


def webp(data_url: str) -> Image.Image:
    prefix = "data:image/webp;base64,"
    assert data_url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_url.removeprefix(prefix))))
    assert image.format == "WEBP"
    image.load()
    return image


def test_previews_come_every_n_steps_for_the_jobs_that_ask(
    queue: JobQueue, settings: Settings, make_server: ServerFactory
) -> None:
    settings.preview_interval, settings.preview_every = 0, 3
    euler = submitted(queue, make_params(num_inference_steps=20, previews=True))
    # A multistep scheduler gives no clean estimate: its preview shows the noisy latents.
    wide = submitted(
        queue,
        make_params(
            num_inference_steps=20, width=96, height=64, scheduler="dpmpp_2m", previews=True
        ),
    )
    plain = submitted(queue, make_params(num_inference_steps=20))
    make_server().serve(burst=True)

    # At latent resolution (tiny-sd's VAE: 1/8), the job's aspect ratio.
    for job_id, size in ((euler, (8, 8)), (wide, (12, 8))):
        assert queue.store.get(job_id).status is JobStatus.SUCCEEDED
        previews = previews_of(queue.redis, job_id)
        assert previews, "a 20-step job gets previews"
        steps = [int(p["step"]) for p in previews]
        # Due after the first step, then every 3 steps (a newer one may replace an unsent one),
        # never at the last step (the image follows at once).
        assert set(steps) <= {1, 4, 7, 10, 13, 16, 19} and steps == sorted(steps)
        assert {p["total_steps"] for p in previews} == {"20"}
        assert {webp(p["image"]).size for p in previews} == {size}
    assert previews_of(queue.redis, plain) == []


def test_previews_leave_the_image_unchanged(
    queue: JobQueue, storage: LocalStorage, make_server: ServerFactory
) -> None:
    made = {}
    for previews in (False, True):
        job_id = submitted(queue, make_params(seed=7, num_inference_steps=8, previews=previews))
        make_server().serve(burst=True)
        made[previews] = storage.get(image_key(job_id, 0, "png", attempt=1))
        assert bool(previews_of(queue.redis, job_id)) is previews
    assert made[True] == made[False]


def test_a_preview_is_written_only_while_its_job_runs_on_this_worker(
    queue: JobQueue, make_server: ServerFactory
) -> None:
    job_id = submitted(queue, make_params(num_inference_steps=4))  # queued, never run
    server = make_server()
    previews = server.previews
    shot = {job_id: Shot(torch.zeros(4, 8, 8), 1, 4, 64, 64)}
    # What the previews thread writes for a job that has ended meanwhile (or not started).
    previews._send(shot)
    assert previews_of(queue.redis, job_id) == []
    # Or for one that another worker runs now (this one lost it: the rerun is the other's).
    record = JobStore.key(job_id)
    queue.redis.hset(record, mapping={"status": "running", "worker": "another-worker"})
    previews._send(shot)
    assert previews_of(queue.redis, job_id) == []
    queue.redis.hset(record, "worker", server.name)
    previews._send(shot)
    assert [p["step"] for p in previews_of(queue.redis, job_id)] == ["1"]
    previews.close()
