"""OpenAI-compatible image generation: submit a job, wait for it (bounded), answer in
OpenAI's `ImagesResponse` shape. The official `openai` package works against it unchanged.
`Answer` and `ROUTE` serve the edits route (routes/edits.py) as well."""

import asyncio
import base64
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from app.api.deps import Services, ServicesDep, TenantDep
from app.api.openai_errors import INVALID, SERVER, OpenAIProblem, OpenAIRoute, error_responses
from app.api.openai_schemas import ImageData, ImageGenerate, ImageOptions, ImagesResponse
from app.api.openai_stream import ImageStream
from app.api.submit import submit
from app.core.errors import FieldError, InvalidRequest
from app.core.events import wait_finished
from app.core.jobs import Job, JobCreate, JobStatus
from app.core.storage import stored_image_key

_STREAMED: dict[int | str, dict] = {
    200: {
        "description": "The images; with `stream: true`, OpenAI's image events",
        # Before OpenAPI 3.2 (no `itemSchema`), an event stream's `schema` is that of one event.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string", "description": "The event's `type`."},
                        "data": {"type": "string", "description": "The event as JSON."},
                    },
                    "required": ["event", "data"],
                }
            }
        },
    }
}
router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=OpenAIRoute)
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
# Passed on from the OpenAI request to the job as they are.
_JOB_FIELDS = (
    "prompt",
    "model",
    "seed",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
)


def to_job(body: ImageOptions, **inputs: object) -> JobCreate:
    """The job an OpenAI request stands for, with `inputs` (e.g. an edit's `init_image`) as
    further job fields; `InvalidRequest` naming OpenAI's fields."""
    fields = {name: getattr(body, name) for name in _JOB_FIELDS if getattr(body, name) is not None}
    fields |= inputs
    if body.size not in (None, "auto"):
        match = _SIZE.match(body.size)
        if match is None:
            raise InvalidRequest([FieldError("size", 'must be "WIDTHxHEIGHT" or "auto"')])
        fields |= {"width": int(match[1]), "height": int(match[2])}
    if body.n is not None:
        fields["num_images"] = body.n
    if body.output_format is not None:
        fields["output_format"] = body.output_format
    if body.stream and body.partial_images:
        fields["previews"] = True  # partial images are the job's live previews
    try:
        return JobCreate(**fields)
    except ValidationError as exc:
        # Width and height are checked by the job's own rules; the OpenAI name is `size`.
        raise InvalidRequest(
            [FieldError(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
        ) from None


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was read before the route ran)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    """The client closed the connection while its job ran."""


async def _wait(services: Services, request: Request, job_id: str) -> Job | None:
    """The finished job, or None once `sync_wait_timeout` has passed; `ClientGone` if the
    client hangs up first (nobody would read the answer)."""
    timeout = services.settings.sync_wait_timeout
    waiting = asyncio.create_task(wait_finished(services.events, services.store, job_id, timeout))
    gone = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, gone):
            task.cancel()
    if waiting.done() and not waiting.cancelled():
        return waiting.result()
    raise ClientGone


def _give_up(services: Services, job_id: str) -> Job | None:
    """Cancel a job nobody waits for any more; the job if it ended meanwhile after all."""
    job = services.store.get(job_id)
    if job is None:
        return None
    if not job.status.is_terminal():
        before = services.queue.cancel(job_id, job.model, job.attempt)
        if before is None or not before.is_terminal():
            return None  # queued: canceled at once; running: stops at its next step
        job = services.store.get(job_id)
    return job


def _outcome_error(job: Job, timeout: float) -> OpenAIProblem:
    """The OpenAI error for a job that did not succeed (or did not end in time)."""
    # The package retries 5xx and 409 by resubmitting: a new job, which would fare no better
    # (the service already reruns jobs whose worker died), so it is told not to.
    headers = {"X-Job-Id": job.id, "x-should-retry": "false"}
    if job.status is JobStatus.CANCELED:
        return OpenAIProblem(409, f"job {job.id} was canceled", code="canceled", headers=headers)
    if job.status is JobStatus.FAILED and job.error is not None:
        status, kind = (400, INVALID) if job.error.code == "invalid_input" else (500, SERVER)
        return OpenAIProblem(status, job.error.message, kind, code=job.error.code, headers=headers)
    message = (
        f"the images were not ready within {timeout:g} s, so job {job.id} is canceled; "
        "submit through POST /v1/jobs to wait longer"
    )
    return OpenAIProblem(504, message, SERVER, code="timeout", headers=headers)


def _images(services: Services, request: Request, job: Job, b64: bool) -> list[ImageData]:
    """The job's images as URLs (signed storage URLs where storage has them) or base64."""
    data = []
    for index in range(len(job.images)):
        key = stored_image_key(job, index)
        if b64:
            data.append(ImageData(b64_json=base64.b64encode(services.storage.get(key)).decode()))
            continue
        url = services.storage.url(key, services.settings.url_ttl)
        if url is None:
            url = str(request.url_for("get_image", job_id=job.id, index=str(index)))
        data.append(ImageData(url=url))
    return data


class Answer:
    """What answers an OpenAI images request (generations, edits): submits its job, waits
    for it (bounded) or streams it, and answers with its images or an OpenAI error."""

    def __init__(
        self,
        request: Request,
        response: Response,
        services: ServicesDep,
        tenant: TenantDep,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    ) -> None:
        self.request, self.response, self.services = request, response, services
        self.tenant, self.idempotency_key = tenant, idempotency_key

    async def __call__(
        self, body: ImageOptions, job: JobCreate, kind: str = "image_generation"
    ) -> ImagesResponse | StreamingResponse:
        """Submit `job` and answer with its images once they are ready (or stream them as
        `kind` events with `stream: true`); the job is canceled if nobody waits any more."""
        services = self.services
        submission = await asyncio.to_thread(
            submit, services, self.tenant, job, self.idempotency_key
        )
        job_id = submission.job.id
        self.response.headers["X-Job-Id"] = job_id
        if body.stream:
            stream = ImageStream(services, body, submission.job, _give_up, _outcome_error, kind)
            return stream.response()
        timeout = services.settings.sync_wait_timeout
        try:
            finished = submission.job
            if not finished.status.is_terminal():
                finished = await _wait(services, self.request, job_id)
        except ClientGone:
            await asyncio.to_thread(_give_up, services, job_id)
            raise OpenAIProblem(499, "client closed the request", code="client_closed") from None
        except asyncio.CancelledError:
            # The server is shutting down: nobody will read the images.
            await asyncio.shield(asyncio.to_thread(_give_up, services, job_id))
            raise
        if finished is None:
            finished = await asyncio.to_thread(_give_up, services, job_id)
        if finished is None or finished.status is not JobStatus.SUCCEEDED:
            raise _outcome_error(finished or submission.job, timeout)
        b64 = body.response_format == "b64_json"
        data = await asyncio.to_thread(_images, services, self.request, finished, b64)
        params = finished.request
        return ImagesResponse(
            created=int((finished.finished_at or finished.created_at).timestamp()),
            data=data,
            output_format=params.output_format,
            size=f"{params.width}x{params.height}",
        )


AnswerDep = Annotated[Answer, Depends()]
# How the OpenAI images routes declare themselves: their answers and errors.
ROUTE: dict[str, Any] = {
    "response_model": ImagesResponse,
    "response_model_exclude_none": True,
    "responses": error_responses() | _STREAMED,
}


@router.post("/generations", **ROUTE)
async def generate_images(
    body: ImageGenerate, answer: AnswerDep
) -> ImagesResponse | StreamingResponse:
    """Generate images and answer once they are ready, in OpenAI's Images API shape.

    With `stream: true` the answer is `text/event-stream`, as OpenAI streams images:
    `partial_images` (0..3) `image_generation.partial_image` events from the job's live
    previews, then one `image_generation.completed` per image (`b64_json`), or an `error`.

    Waits at most `LDM_SYNC_WAIT_TIMEOUT` seconds (504 after that, the job canceled); a
    client that hangs up cancels its job too. Errors come in OpenAI's shape
    `{"error": {"message", "type", "param", "code"}}`. The header `X-Job-Id` names the job
    behind the answer (see `/v1/jobs/{id}`)."""
    return await answer(body, to_job(body))
