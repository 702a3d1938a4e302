"""Submitting and reading jobs, shared by every route that creates or waits for one."""

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from app.api.deps import Services
from app.core.errors import (
    FieldError,
    InvalidRequest,
    JobNotFound,
    QueueFull,
    RateLimited,
    TooManyQueued,
)
from app.core.eta import eta_seconds
from app.core.images import decode_init_image, decode_mask, to_png
from app.core.jobs import (
    JOB_ID_PATTERN,
    Job,
    JobCreate,
    JobParams,
    JobStatus,
    Webhook,
    new_job_id,
)
from app.core.logs import annotate
from app.core.policy import TenantPolicy, job_cost
from app.core.queue import Idempotency
from app.core.resolve import resolve_request, select_model
from app.core.result_cache import Hit
from app.core.settings import Settings
from app.core.storage import init_image_key, mask_image_key
from app.core.usage import Counts
from app.core.webhooks import check_webhook_url


@dataclass(frozen=True)
class Submission:
    """A submitted job, and whether it is an earlier one returned for an idempotent retry."""

    job: Job
    replayed: bool

    @property
    def location(self) -> str:
        """The job's URL path, for a `Location` header."""
        return f"/v1/jobs/{self.job.id}"


def load_job(services: Services, job_id: str, tenant: str) -> Job:
    """The tenant's job with its live queue position; `JobNotFound` for unknown or malformed
    ids and for other tenants' jobs alike (404, never 403: ids of others do not leak)."""
    valid = re.fullmatch(JOB_ID_PATTERN, job_id)
    if valid:
        annotate(job_id=job_id)
    job = services.store.get(job_id, tenant) if valid else None
    if job is None:
        raise JobNotFound(f"no job {job_id!r}; it never existed or has expired")
    if job.status is JobStatus.QUEUED:
        priority = job.request.priority
        position = services.queue.position(job_id, job.model, job.attempt, priority)
        # Popped by a worker but not yet started: it is next, not gone.
        job.queue_position = 0 if position is None else position
    return with_eta(services, job)


def with_eta(services: Services, job: Job) -> Job:
    """The job with its `eta_seconds` (queued and running jobs; one round trip)."""
    if not job.status.is_terminal():
        pace = services.service_rate.pace(job.model)
        job.eta_seconds = eta_seconds(job, pace, datetime.now(UTC))
    return job


def checked_webhook(body: JobCreate, settings: Settings) -> Webhook | None:
    """The webhook a request asks for, once the service can sign for it and its URL is a
    public http(s) address (or private ones are allowed); `InvalidRequest` otherwise."""
    webhook = body.webhook()
    problem = None
    if webhook is not None and settings.webhook_secret is None:
        problem = "webhooks are off on this server: its operator has not set LDM_WEBHOOK_SECRET"
    elif webhook is not None:
        problem = check_webhook_url(webhook.url, settings.webhook_allow_private)
    if problem:
        raise InvalidRequest([FieldError("body.webhook_url", problem)])
    return webhook


def check_policy(services: Services, tenant: str, policy: TenantPolicy, body: JobCreate) -> None:
    """The tenant's policy allows this job now: its priority (else `InvalidRequest`) and one
    more waiting job (else `TooManyQueued`, a 429). The cap is checked before the submit's
    transaction, so concurrent submits on several replicas can pass it by one each."""
    if not policy.allows(body.priority):
        message = f"this API key may ask for priority {policy.max_priority!r} at most"
        raise InvalidRequest([FieldError("body.priority", message)])
    if policy.max_queued is not None:
        queued = services.queue.waiting.tenant_counts([tenant], running=False)[tenant]
        if queued >= policy.max_queued:
            model = body.model or services.default_model
            wait = services.service_rate.retry_after(model, queued - policy.max_queued + 1)
            raise TooManyQueued(
                f"{queued} of your jobs are waiting, the most allowed; retry later", wait
            )


def answer_from_cache(
    services: Services,
    tenant: str,
    job_id: str,
    params: JobParams,
    hit: Hit,
    idempotency: Idempotency | None,
    webhook: Webhook | None,
) -> Submission:
    """A job the result cache answers: written succeeded with the images of the identical job
    that ran, and booked to the tenant's usage as a cached job (no steps, no worker time)."""
    submitted = services.queue.accept(job_id, params, tenant, idempotency, webhook, cache=hit)
    if submitted.job_id != job_id:  # a concurrent duplicate on another replica won
        return Submission(load_job(services, submitted.job_id, tenant), replayed=True)
    services.queue.await_replicas(job_id)
    services.metrics.jobs_submitted.labels(params.model).inc()
    used = Counts(images=params.num_images, cached_jobs=1)
    services.usage.record(services.store.key(job_id), used)
    return Submission(load_job(services, job_id, tenant), replayed=False)


def submit(
    services: Services, tenant: str, body: JobCreate, idempotency_key: str | None = None
) -> Submission:
    """Validate, resolve and enqueue a job for `tenant` (blocking: Redis and storage calls).

    With an idempotency key, a retry of the same body returns the same job, never a second
    one. Raises `ServiceError`s (invalid request, rate limited, queue full, not durable)."""
    settings = services.settings
    idempotency = None
    if idempotency_key is not None:
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        idempotency = Idempotency(idempotency_key, fingerprint)
        if earlier := services.queue.find(tenant, idempotency):
            return Submission(load_job(services, earlier, tenant), replayed=True)
    if services.rate_limiter and (wait := services.rate_limiter.acquire(tenant)) is not None:
        raise RateLimited(
            f"more than {settings.rate_limit:g} submits/s; retry later", math.ceil(wait)
        )
    policy = settings.tenant_policy(tenant)
    check_policy(services, tenant, policy, body)
    spec = select_model(body.model, services.models, services.default_model)
    init_image = mask = None
    limits = (settings.max_init_image_bytes, settings.max_init_image_pixels)
    if body.init_image is not None:
        init_image = decode_init_image(body.init_image, *limits)
    if body.mask_image is not None:
        mask = decode_mask(body.mask_image, *limits)
    params = resolve_request(
        body,
        spec,
        settings,
        init_image.size if init_image else None,
        mask.size if mask else None,
        services.loras.adapters(spec.name) if body.loras else None,
    )
    webhook = checked_webhook(body, settings)
    job_id = new_job_id()
    annotate(job_id=job_id)
    inputs = {init_image_key(job_id): init_image, mask_image_key(job_id): mask}
    # Workers read normalised PNGs from storage; the queue payload stays small.
    inputs = {key: to_png(image) for key, image in inputs.items() if image is not None}
    cache = None
    if body.cache and settings.result_cache:
        asked = body.seed is not None  # a seed drawn just now cannot have run before
        cache = services.cache.look_up(tenant, params, list(inputs.values()), find=asked)
        if isinstance(cache, Hit):
            return answer_from_cache(services, tenant, job_id, params, cache, idempotency, webhook)
    if (depth := services.queue.depth(spec.name)) >= settings.max_queue_length:
        # Come back when the queue has drained below the cap at the rate it drains now.
        wait = services.service_rate.retry_after(spec.name, depth - settings.max_queue_length + 1)
        raise QueueFull(f"{spec.name} has {depth} jobs waiting; retry later", wait)
    for key, data in inputs.items():
        services.storage.put(key, data, "image/png")
    submitted = None
    try:
        share = job_cost(params) / policy.weight
        submitted = services.queue.accept(
            job_id, params, tenant, idempotency, webhook, share, cache
        )
    finally:
        if submitted is None or submitted.job_id != job_id:
            for key in inputs:
                services.storage.delete(key)  # no job will ever own it
    if submitted.job_id != job_id:  # a concurrent duplicate on another replica won
        return Submission(load_job(services, submitted.job_id, tenant), replayed=True)
    services.queue.await_replicas(job_id)  # the job (and its init image) stay if this fails
    services.metrics.jobs_submitted.labels(spec.name).inc()
    # The record just written, as `load_job` would read it back (without a round trip).
    job = Job(
        id=job_id,
        status=JobStatus.QUEUED,
        model=params.model,
        created_at=submitted.created_at,
        queue_position=submitted.queue_position,
        request=params,
    )
    return Submission(with_eta(services, job), replayed=False)
