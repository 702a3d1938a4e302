"""`Client` and `AsyncClient`: submit, get, wait, cancel, generate, models over httpx.

Both share the policy (what a body looks like, how to back off, what counts as done); only
the I/O differs, blocking or awaited.
"""

import base64
import io
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from PIL import Image

from ldm_client.errors import ApiError, JobFailed
from ldm_client.following import Backoff, EventStream, Job

DEFAULT_URL = "http://localhost:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
InitImage = Image.Image | bytes | str | Path


def settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """Base URL (`url`, else $LDM_URL, else localhost:8000) and headers ($LDM_API_KEY)."""
    key = api_key if api_key is not None else os.environ.get("LDM_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return (url or os.environ.get("LDM_URL") or DEFAULT_URL).rstrip("/"), headers


def http_options(url: str | None, api_key: str | None, timeout: float) -> dict[str, Any]:
    """httpx client options: base URL and key (see `settings`), timeout, redirects followed
    (images on object storage answer with a redirect to a signed URL)."""
    base_url, headers = settings(url, api_key)
    return {"base_url": base_url, "headers": headers, "timeout": timeout, "follow_redirects": True}


def _base64(image: InitImage) -> str:
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    elif isinstance(image, bytes):
        data = image
    else:
        data = Path(image).read_bytes()
    return base64.b64encode(data).decode()


def job_body(
    prompt: str,
    init_image: InitImage | None = None,
    mask_image: InitImage | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The JSON body of a submit; options left as None take the server's defaults. Images
    (init, and the inpainting mask: white repaints) may be PIL images, bytes or paths."""
    body = {"prompt": prompt} | {k: v for k, v in options.items() if v is not None}
    for field, image in (("init_image", init_image), ("mask_image", mask_image)):
        if image is not None:
            body[field] = _base64(image)
    return body


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded, else `ApiError` with the service's problem fields."""
    if response.is_error:
        raise ApiError.from_response(response)
    return response


def decoded(job: Job, payloads: list[bytes]) -> list[Image.Image]:
    """The images of a finished job, or `JobFailed` if it has none."""
    if job["status"] != "succeeded":
        raise JobFailed(job)
    images = [Image.open(io.BytesIO(data)) for data in payloads]
    for image in images:
        image.load()
    return images


class Client:
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(
        self, url: str | None = None, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        self.http = httpx.Client(**http_options(url, api_key, timeout))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def submit(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        retries: int = 3,
        **options: Any,
    ) -> Job:
        """Submit a job (options as in the API: width, height, seed, init_image, ...).

        A full queue or a rate limit is retried `retries` times after Retry-After, with one
        Idempotency-Key, so a retry never makes a second job."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body, backoff = job_body(prompt, **options), Backoff()
        for attempt in range(retries + 1):
            try:
                return checked(self.http.post("/v1/jobs", json=body, headers=headers)).json()
            except ApiError as error:
                if not error.retryable or attempt == retries:
                    raise
                time.sleep(backoff.next(error))
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> Job:
        """The job as it is now."""
        return checked(self.http.get(f"/v1/jobs/{job_id}")).json()

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (`ApiError` 409 once it has ended)."""
        return checked(self.http.post(f"/v1/jobs/{job_id}/cancel")).json()

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Follow the job live (its Server-Sent Events) until it ends; its final state.
        `on_update(job)` sees each change: state, queue position, step. A dropped stream is
        resumed where it left off, after a backoff that honours Retry-After."""
        backoff = Backoff(timeout)
        events = EventStream()
        path = f"/v1/jobs/{job_id}/events"
        while True:
            error = None
            try:
                timeouts = backoff.stream_timeout(self.http.timeout)
                with self.http.stream("GET", path, headers=events.headers(), timeout=timeouts) as r:
                    if r.is_error:
                        r.read()
                        checked(r)
                    for line in r.iter_lines():
                        if (job := events.feed(line)) is None:
                            continue
                        if on_update is not None:
                            on_update(job)
                        if job["status"] in TERMINAL:
                            return job
            except ApiError as exc:
                if not exc.retryable:
                    raise
                error = exc
            except httpx.TransportError:
                pass  # dropped, or silent too long: resume from the last event
            time.sleep(backoff.next(error))

    def images(self, job: Job) -> list[Image.Image]:
        """The images of a succeeded job (signed storage URLs are followed)."""
        payloads = [checked(self.http.get(info["url"])).content for info in job["images"]]
        return decoded(job, payloads)

    def generate(
        self, prompt: str, timeout: float | None = None, **options: Any
    ) -> list[Image.Image]:
        """Submit, wait, fetch: the images, or `JobFailed`."""
        job = self.wait(self.submit(prompt, **options)["id"], timeout)
        return self.images(job)

    def models(self) -> list[dict[str, Any]]:
        """The served models, their defaults, limits, queue length and live workers."""
        return checked(self.http.get("/v1/models")).json()["models"]


class AsyncClient:
    """The same as `Client`, awaited. Use as an async context manager, or `await aclose()`."""

    def __init__(
        self, url: str | None = None, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        self.http = httpx.AsyncClient(**http_options(url, api_key, timeout))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def submit(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        retries: int = 3,
        **options: Any,
    ) -> Job:
        """See `Client.submit`."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body, backoff = job_body(prompt, **options), Backoff()
        for attempt in range(retries + 1):
            try:
                response = await self.http.post("/v1/jobs", json=body, headers=headers)
                return checked(response).json()
            except ApiError as error:
                if not error.retryable or attempt == retries:
                    raise
                await anyio.sleep(backoff.next(error))
        raise AssertionError("unreachable")

    async def get(self, job_id: str) -> Job:
        """See `Client.get`."""
        return checked(await self.http.get(f"/v1/jobs/{job_id}")).json()

    async def cancel(self, job_id: str) -> Job:
        """See `Client.cancel`."""
        return checked(await self.http.post(f"/v1/jobs/{job_id}/cancel")).json()

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_update: Callable[[Job], Awaitable[None] | None] | None = None,
    ) -> Job:
        """See `Client.wait`; `on_update` may be a coroutine function."""
        backoff = Backoff(timeout)
        events = EventStream()
        path = f"/v1/jobs/{job_id}/events"
        while True:
            error = None
            try:
                timeouts = backoff.stream_timeout(self.http.timeout)
                headers = events.headers()
                async with self.http.stream("GET", path, headers=headers, timeout=timeouts) as r:
                    if r.is_error:
                        await r.aread()
                        checked(r)
                    async for line in r.aiter_lines():
                        if (job := events.feed(line)) is None:
                            continue
                        if on_update is not None and (pending := on_update(job)) is not None:
                            await pending
                        if job["status"] in TERMINAL:
                            return job
            except ApiError as exc:
                if not exc.retryable:
                    raise
                error = exc
            except httpx.TransportError:
                pass  # see `Client.wait`
            await anyio.sleep(backoff.next(error))

    async def images(self, job: Job) -> list[Image.Image]:
        """See `Client.images`."""
        payloads = [checked(await self.http.get(i["url"])).content for i in job["images"]]
        return decoded(job, payloads)

    async def generate(
        self, prompt: str, timeout: float | None = None, **options: Any
    ) -> list[Image.Image]:
        """See `Client.generate`."""
        job = await self.wait((await self.submit(prompt, **options))["id"], timeout)
        return await self.images(job)

    async def models(self) -> list[dict[str, Any]]:
        """See `Client.models`."""
        return checked(await self.http.get("/v1/models")).json()["models"]
