"""The /v1/jobs resource: submit, poll, cancel, fetch images."""

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import RedirectResponse

from app.api.deps import ServicesDep, TenantDep
from app.api.errors import PROBLEM_RESPONSE
from app.api.submit import load_job, submit
from app.core.errors import ImageNotFound, JobConflict, JobNotFound
from app.core.jobs import Job, JobCreate, JobStatus
from app.core.storage import ObjectNotFound, stored_image_key

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# An id that cannot exist is simply not found (never a 422 that leaks the id format).
JobId = Annotated[str, Path(description="The job id, as returned by submit.")]
IMAGE_CACHE = "private, max-age=86400, immutable"


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
    submission = submit(services, tenant, body, idempotency_key)
    response.headers["Location"] = submission.location
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submission.job


@router.get(
    "/{job_id}", response_model=Job, responses={code: PROBLEM_RESPONSE for code in (401, 404)}
)
def get_job(job_id: JobId, services: ServicesDep, tenant: TenantDep) -> Job:
    """Poll a job: its state, progress, queue position and, once done, its images."""
    return load_job(services, job_id, tenant)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    responses={code: PROBLEM_RESPONSE for code in (401, 404, 409)},
)
def cancel_job(job_id: JobId, services: ServicesDep, tenant: TenantDep) -> Job:
    """Cancel a job: a queued one at once, a running one at its next denoising step."""
    job = load_job(services, job_id, tenant)
    if job.status.is_terminal():
        raise JobConflict(f"job {job_id} is already {job.status.value}")
    before = services.queue.cancel(job_id, job.model, job.attempt)
    if before is None:
        raise JobNotFound(f"no job {job_id!r}; it never existed or has expired")
    if before.is_terminal():
        raise JobConflict(f"job {job_id} is already {before.value}")
    return load_job(services, job_id, tenant)


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
    job = load_job(services, job_id, tenant)
    if job.status is not JobStatus.SUCCEEDED:
        raise ImageNotFound(f"job {job_id} is {job.status.value}; images come once it succeeds")
    if not 0 <= index < len(job.images):
        raise ImageNotFound(f"job {job_id} has images 0..{len(job.images) - 1}")
    key = stored_image_key(job, index)
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
