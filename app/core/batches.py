"""Micro-batching: which queued jobs can share one pipeline call with the job a worker took."""

from redis import Redis

from app.core.jobs import JobParams
from app.core.queue import rq_queue
from app.core.store import Claim, JobStore

# How far down the queue a worker looks for jobs to batch: bounded, so a long queue costs no
# more than a short one, and a job far back never jumps many incompatible ones.
LOOK_AHEAD = 32


def batch_key(params: JobParams) -> tuple:
    """Jobs with equal keys run as one pipeline call: everything but prompts, seeds, image
    counts and output format must match (the model is the queue's). Having a negative prompt
    or not matters too: some pipelines (SDXL) give no negative prompt zero embeddings."""
    return (
        params.mode,
        params.negative_prompt is not None,
        params.width,
        params.height,
        params.num_inference_steps,
        params.guidance_scale,
        params.strength,
    )


def compatible_waiting(
    redis: Redis, store: JobStore, first: JobParams, room: int, look_ahead: int = LOOK_AHEAD
) -> list[tuple[Claim, JobParams]]:
    """Jobs waiting now behind the head of `first`'s queue that can join its batch, oldest
    first, with at most `room` images in all. Nothing waits for jobs yet to come."""
    queue_key = rq_queue(redis, first.model).key
    rq_ids = [raw.decode() for raw in redis.lrange(queue_key, 0, look_ahead - 1)]
    if not rq_ids:
        return []
    job_ids = [rq_id.split("-", 1)[0] for rq_id in rq_ids]  # "<job>-<attempt>" for retries
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(store.key(job_id), "request")
    requests = pipe.execute()
    wanted = batch_key(first)
    picked: list[tuple[Claim, JobParams]] = []
    for job_id, rq_id, request in zip(job_ids, rq_ids, requests, strict=True):
        if request is None:
            continue  # canceled or expired meanwhile
        params = JobParams.model_validate_json(request)
        if batch_key(params) != wanted or params.num_images > room:
            continue
        picked.append((Claim(job_id, rq_id, queue_key, params.denoising_steps), params))
        room -= params.num_images
        if room == 0:
            break
    return picked
