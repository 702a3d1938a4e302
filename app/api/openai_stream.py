"""`stream: true` of the OpenAI-compatible image generation and edits: OpenAI's Images API
events as Server-Sent Events, `image_generation.partial_image` (`image_edit.partial_image`)
from the job's live previews, then one `image_generation.completed` (`image_edit.completed`)
per image (an `error` event if the job does not succeed)."""

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from PIL import Image
from starlette.responses import StreamingResponse

from app.api.deps import Services
from app.api.openai_errors import OpenAIProblem
from app.api.openai_schemas import ImageOptions
from app.core.images import encode_image
from app.core.jobs import Job, JobStatus
from app.core.storage import stored_image_key

_QUALITIES = {"low", "medium", "high", "auto"}
# This service counts no tokens; the event's `usage` is required, so it says zero.
_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def partial_due(step: int, total: int, sent: int, wanted: int) -> bool:
    """Whether a preview at `step` of `total` is the next of `wanted` partial images, spread
    over the run: the k-th (1-based) from step k * total / (wanted + 1) on."""
    return sent < wanted and step * (wanted + 1) >= (sent + 1) * total


def _full_size(data_url: str, job: Job) -> bytes:
    """A preview (a small WebP data URL) at the job's size, in its output format."""
    raw = base64.b64decode(data_url.split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as small:
        size = (job.request.width, job.request.height)
        image = small.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    return encode_image(image, job.request.output_format)


class ImageStream:
    """The events of one streamed request, following its job on the event stream."""

    def __init__(
        self,
        services: Services,
        body: ImageOptions,
        job: Job,
        give_up: Callable[[Services, str], Job | None],
        outcome_error: Callable[[Job, float], OpenAIProblem],
        kind: str = "image_generation",
    ) -> None:
        self.services = services
        self.kind = kind  # the events' prefix: image_generation or image_edit
        self.job = job
        self.partial_images = body.partial_images or 0
        self.give_up = give_up
        self.outcome_error = outcome_error
        self.common = {
            "background": "opaque" if body.background == "opaque" else "auto",
            "quality": body.quality if body.quality in _QUALITIES else "auto",
            "output_format": job.request.output_format,
            "size": f"{job.request.width}x{job.request.height}",
        }

    def response(self) -> StreamingResponse:
        headers = {"X-Job-Id": self.job.id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(self.events(), media_type="text/event-stream", headers=headers)

    async def events(self) -> AsyncIterator[bytes]:
        """Partial images while the job runs, then its images (or an error); a client that
        hangs up (or a server that stops) cancels the job, as without streaming."""
        ended = False
        try:
            async for chunk in self._follow():
                yield chunk
            finished = await asyncio.to_thread(self.services.store.get, self.job.id)
            if finished is None or not finished.status.is_terminal():
                finished = await asyncio.to_thread(self.give_up, self.services, self.job.id)
            ended = True
            if finished is None or finished.status is not JobStatus.SUCCEEDED:
                timeout = self.services.settings.sync_wait_timeout
                problem = self.outcome_error(finished or self.job, timeout)
                error = problem.detail.model_dump()
                yield _sse("error", {"type": "error", "error": error})
                return
            for index in range(len(finished.images)):
                yield await asyncio.to_thread(self._completed, finished, index)
        finally:
            if not ended:
                await asyncio.shield(asyncio.to_thread(self.give_up, self.services, self.job.id))

    async def _follow(self) -> AsyncIterator[bytes]:
        """Partial images until the job ends, its record expires or the wait times out;
        a comment while it is quiet keeps proxies from closing the connection."""
        events, store = self.services.events, self.services.store
        loop = asyncio.get_running_loop()
        until = loop.time() + self.services.settings.sync_wait_timeout
        after = await events.latest(self.job.id)
        job = await asyncio.to_thread(store.get, self.job.id)
        if job is None or job.status.is_terminal():
            return
        sent = 0
        async for event in events.follow(self.job.id, after, until=until):
            if event is None:
                if not await events.aredis.exists(store.key(self.job.id)):
                    return
                yield b": ping\n\n"
            elif event.status is not None and event.status.is_terminal():
                return
            elif event.type == "preview":
                step, total = int(event.fields["step"]), int(event.fields["total_steps"])
                if partial_due(step, total, sent, self.partial_images):
                    data = await asyncio.to_thread(_full_size, event.fields["image"], job)
                    yield _sse(
                        f"{self.kind}.partial_image",
                        self.common
                        | {
                            "type": f"{self.kind}.partial_image",
                            "b64_json": base64.b64encode(data).decode(),
                            "created_at": int(time.time()),
                            "partial_image_index": sent,
                        },
                    )
                    sent += 1

    def _completed(self, job: Job, index: int) -> bytes:
        key = stored_image_key(job, index)
        data = self.services.storage.get(key)
        return _sse(
            f"{self.kind}.completed",
            self.common
            | {
                "type": f"{self.kind}.completed",
                "b64_json": base64.b64encode(data).decode(),
                "created_at": int((job.finished_at or job.created_at).timestamp()),
                "usage": _USAGE,
            },
        )
