"""Live progress of a job as Server-Sent Events, fed from its Redis event stream (so any API
replica serves any job, and a reconnecting client resumes where it left off)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.api.deps import Services, ServicesDep, TenantDep
from app.api.errors import PROBLEM_RESPONSE
from app.api.routes.jobs import JobId
from app.api.submit import load_job
from app.core.errors import JobNotFound
from app.core.events import is_event_id
from app.core.jobs import Job, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


async def _job(job_id: JobId, services: ServicesDep, tenant: TenantDep) -> Job:
    # A dependency, so that an unknown job is a plain 404 before any event is sent.
    return await asyncio.to_thread(load_job, services, job_id, tenant)


def _status(job: Job, event_id: str | None) -> ServerSentEvent:
    if job.status.is_terminal():
        return ServerSentEvent(event="done", id=event_id, data=job.model_dump(mode="json"))
    return ServerSentEvent(event="status", id=event_id, data=job.model_dump(mode="json"))


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "`status`, `progress`, `preview` and a final `done` event"},
        401: PROBLEM_RESPONSE,
        404: PROBLEM_RESPONSE,
    },
)
async def job_events(
    job: Annotated[Job, Depends(_job)],
    services: ServicesDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Follow a job live: `status` (the job object, on each change and queue move),
    `progress` (step, total_steps), `preview` (step, total_steps, image: a WebP data URL;
    for jobs submitted with `"previews": true`) and a last `done` event with the finished job.

    Reconnect with `Last-Event-ID` to resume without missing a state change."""
    events = services.events
    if job.status.is_terminal():
        yield _status(job, await events.latest(job.id))
        return
    resume = last_event_id and is_event_id(last_event_id)
    if resume and await events.retained_since(job.id, last_event_id):
        after = last_event_id
    else:
        # From the newest event on, with the state as of then or later: nothing in between.
        after = await events.latest(job.id)
        job = await asyncio.to_thread(load_job, services, job.id, tenant)
        yield _status(job, after)
        if job.status.is_terminal():
            return
    async for event in events.follow(job.id, after):
        if event is not None and event.type in ("progress", "preview"):
            data: dict[str, int | str] = {k: int(event.fields[k]) for k in ("step", "total_steps")}
            if event.type == "preview":
                data["image"] = event.fields["image"]
            yield ServerSentEvent(event=event.type, id=event.id, data=data)
            continue
        if event is None and job.status is not JobStatus.QUEUED:
            continue  # quiet while running: only a queued job's position moves unannounced
        update = await _reload(services, job.id, tenant)
        if update is None:
            return  # expired meanwhile
        if event is not None or update.queue_position != job.queue_position:
            yield _status(update, event.id if event else None)
        job = update
        if job.status.is_terminal():
            return


async def _reload(services: Services, job_id: str, tenant: str) -> Job | None:
    try:
        return await asyncio.to_thread(load_job, services, job_id, tenant)
    except JobNotFound:
        return None
