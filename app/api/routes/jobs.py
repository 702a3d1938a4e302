"""The /v1/jobs resource: submit, poll, cancel, fetch images."""

import hashlib
import math
import re
from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import RedirectResponse

from app.api.deps import Services, ServicesDep, TenantDep
from app.api.errors import PROBLEM_RESPONSE
from app.core.errors import ImageNotFound, JobConflict, JobNotFound, QueueFull, RateLimited
from app.core.images import decode_init_image, to_png
from app.core.jobs import JOB_ID_PATTERN, Job, JobCreate, JobStatus, new_job_id
from app.core.logs import annotate
from app.core.queue import Idempotency
from app.core.resolve import resolve_request, select_model
from app.core.storage import ObjectNotFound, image_key, init_image_key

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# An id that cannot exist is simply not found (never a 422 that leaks the id format).
JobId = Annotated[str, Path(description="The job id, as returned by submit.")]
IMAGE_CACHE = "private, max-age=86400, immutable"


def _load(services: Services, job_id: str, tenant: str) -> Job:
    """The tenant's job with its live queue position; `JobNotFound` for unknown or malformed
    ids and for other tenants' jobs alike (404, never 403: ids of others do not leak)."""
    valid = re.fullmatch(JOB_ID_PATTERN, job_id)
    if valid:
        annotate(job_id=job_id)
    job = services.store.get(job_id, tenant) if valid else None
    if job is None:
        raise JobNotFound(f"no job {job_id!r}; it never existed or has expired")
    if job.status is JobStatus.QUEUED:
        position = services.queue.position(job_id, job.model, job.attempt)
        # Popped by a worker but not yet started: it is next, not gone.
        job.queue_position = 0 if position is None else position
    return job


def _replay(services: Services, job_id: str, tenant: str, response: Response) -> Job:
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    response.headers["Idempotent-Replayed"] = "true"
    return _load(services, job_id, tenant)


@router.post(
    "",
    status_code=202,
    response_model=Job,
    responses={code: PROBLEM_RESPONSE for code in (400, 401, 413, 415, 422, 429, 503)},
)
def submit_job(
    body: JobCreate,
    services: ServicesDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Job:
    """Submit a text-to-image job, or image-to-image when `init_image` is given.

    With an `Idempotency-Key`, a retry of the same body returns the same job."""
    settings = services.settings
    idempotency = None
    if idempotency_key is not None:
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        idempotency = Idempotency(idempotency_key, fingerprint)
        if earlier := services.queue.find(tenant, idempotency):
            return _replay(services, earlier, tenant, response)
    if services.rate_limiter and (wait := services.rate_limiter.acquire(tenant)) is not None:
        raise RateLimited(
            f"more than {settings.rate_limit:g} submits/s; retry later", math.ceil(wait)
        )
    spec = select_model(body.model, services.models, services.default_model)
    init_image = None
    if body.init_image is not None:
        init_image = decode_init_image(
            body.init_image, settings.max_init_image_bytes, settings.max_init_image_pixels
        )
    params = resolve_request(body, spec, settings, init_image.size if init_image else None)
    if (depth := services.queue.depth(spec.name)) >= settings.max_queue_length:
        # Come back when the queue has drained below the cap at the rate it drains now.
        wait = services.service_rate.retry_after(spec.name, depth - settings.max_queue_length + 1)
        raise QueueFull(f"{spec.name} has {depth} jobs waiting; retry later", wait)
    job_id = new_job_id()
    annotate(job_id=job_id)
    if init_image is not None:
        # Workers read a normalised PNG from storage; the queue payload stays small.
        services.storage.put(init_image_key(job_id), to_png(init_image), "image/png")
    submitted = None
    try:
        submitted = services.queue.accept(job_id, params, tenant, idempotency)
    finally:
        if init_image is not None and (submitted is None or submitted.job_id != job_id):
            services.storage.delete(init_image_key(job_id))  # no job will ever own it
    if submitted.job_id != job_id:  # a concurrent duplicate on another replica won
        return _replay(services, submitted.job_id, tenant, response)
    services.queue.await_replicas(job_id)  # the job (and its init image) stay if this fails
    services.metrics.jobs_submitted.labels(spec.name).inc()
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    # The record just written, as `_load` would read it back (without a round trip).
    return Job(
        id=job_id,
        status=JobStatus.QUEUED,
        model=params.model,
        created_at=submitted.created_at,
        queue_position=submitted.queue_position,
        request=params,
    )


@router.get(
    "/{job_id}", response_model=Job, responses={code: PROBLEM_RESPONSE for code in (401, 404)}
)
def get_job(job_id: JobId, services: ServicesDep, tenant: TenantDep) -> Job:
    """Poll a job: its state, progress, queue position and, once done, its images."""
    return _load(services, job_id, tenant)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    responses={code: PROBLEM_RESPONSE for code in (401, 404, 409)},
)
def cancel_job(job_id: JobId, services: ServicesDep, tenant: TenantDep) -> Job:
    """Cancel a job: a queued one at once, a running one at its next denoising step."""
    job = _load(services, job_id, tenant)
    if job.status.is_terminal():
        raise JobConflict(f"job {job_id} is already {job.status.value}")
    before = services.queue.cancel(job_id, job.model, job.attempt)
    if before is None:
        raise JobNotFound(f"no job {job_id!r}; it never existed or has expired")
    if before.is_terminal():
        raise JobConflict(f"job {job_id} is already {before.value}")
    return _load(services, job_id, tenant)


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        307: {"description": "Redirect to an expiring, signed object-storage URL"},
        401: PROBLEM_RESPONSE,
        404: PROBLEM_RESPONSE,
        422: PROBLEM_RESPONSE,
    },
)
def get_image(job_id: JobId, index: int, services: ServicesDep, tenant: TenantDep) -> Response:
    """Image `index` of a succeeded job: its bytes, or a redirect to a signed storage URL."""
    job = _load(services, job_id, tenant)
    if job.status is not JobStatus.SUCCEEDED:
        raise ImageNotFound(f"job {job_id} is {job.status.value}; images come once it succeeds")
    if not 0 <= index < len(job.images):
        raise ImageNotFound(f"job {job_id} has images 0..{len(job.images) - 1}")
    key = image_key(job_id, index, job.request.output_format)
    url = services.storage.url(key, services.settings.url_ttl)
    if url is not None:
        # Object storage serves the bytes; the signed URL expires, so it must not be cached.
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    try:
        data = services.storage.get(key)
    except ObjectNotFound:
        raise ImageNotFound(f"image {index} of job {job_id} is no longer stored") from None
    content_type = job.images[index].content_type
    return Response(data, media_type=content_type, headers={"Cache-Control": IMAGE_CACHE})
