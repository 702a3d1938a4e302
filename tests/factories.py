"""Valid objects for tests to vary, and small helpers to read what a worker made."""

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from app.core.jobs import JobParams, new_job_id
from app.core.queue import JobQueue
from app.core.storage import Storage, image_key
from app.core.store import JobStore


def make_params(**changes: object) -> JobParams:
    """A small, fast text-to-image job on tiny-sd; `changes` override any field."""
    base = dict(
        prompt="a red circle",
        negative_prompt=None,
        mode="text-to-image",
        strength=None,
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        num_images=1,
        seed=42,
        output_format="png",
        model="tiny-sd",
    )
    return JobParams(**(base | changes))


def submitted(queue: JobQueue, params: JobParams) -> str:
    """Submit a job as the API does (record and RQ job in one transaction); its id."""
    job_id = new_job_id()
    queue.submit(job_id, params, "t1")
    return job_id


def cancel_at_step(
    queue: JobQueue, job_id: str, step: int = 3, store: JobStore | None = None
) -> None:
    """Have the API's cancel of `job_id` arrive once the job has run `step` steps.

    `store` is the one whose progress reports are watched: a worker's own (`Server.store`),
    or by default the queue's. Reports carry one step for all jobs or one per job."""
    store = store or queue.store
    real_report = store.report_progress

    def report(jobs: list[str], done: int | Sequence[int], *args: Any, **kwargs: Any) -> set[str]:
        steps = [done] * len(jobs) if isinstance(done, int) else list(done)
        mine = dict(zip(jobs, steps, strict=True)).get(job_id)
        if mine is not None and mine >= step and not queue.store.get(job_id).cancel_requested:
            queue.cancel(job_id, queue.store.get(job_id).model)
        return real_report(jobs, done, *args, **kwargs)

    store.report_progress = report  # type: ignore[method-assign]


def stored_image(
    storage: Storage, job_id: str, index: int = 0, fmt: str = "png", attempt: int = 1
) -> Image.Image:
    """Image `index` of a job (its `attempt`), as the worker stored it."""
    image = Image.open(io.BytesIO(storage.get(image_key(job_id, index, fmt, attempt=attempt))))
    image.load()
    return image


def max_diff(a: Image.Image, b: Image.Image) -> int:
    """The largest difference of any pixel channel, in 8-bit levels."""
    assert a.size == b.size
    pa = np.asarray(a.convert("RGB"), dtype=np.int16)
    pb = np.asarray(b.convert("RGB"), dtype=np.int16)
    return int(np.abs(pa - pb).max())


def max_difference(ours: Sequence[Image.Image], theirs: Sequence[Image.Image]) -> int:
    """The largest pixel difference (8-bit levels) between two lists of images, pairwise."""
    assert len(ours) == len(theirs)
    return max(
        int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())
        for a, b in zip(ours, theirs, strict=True)
    )
