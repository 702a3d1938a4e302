"""The job API as MCP tools: what an agent calls at /mcp (app/api/mcp_server.py serves them).

Each tool acts for the tenant whose API key the HTTP request carried, through the same
functions as the REST routes, so the rules, limits and tenant isolation are the same."""

import asyncio
import base64
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.api.deps import Services
from app.api.routes import jobs as job_routes
from app.api.routes import service as service_routes
from app.api.schemas import ModelList
from app.api.submit import load_job, submit
from app.core.errors import Overloaded, ServiceError
from app.core.jobs import Job, JobCreate, JobStatus
from app.core.storage import ObjectNotFound, stored_image_key

# The ASGI scope key under which the /mcp route leaves the authenticated tenant for the tools.
TENANT_SCOPE_KEY = "ldm.tenant"
P = ParamSpec("P")
T = TypeVar("T")
JobId = Annotated[str, Field(description="The job id, as start_job or generate_image gave it.")]


class JobArguments(JobCreate, ArgModelBase):
    """A job tool's arguments: the body of POST /v1/jobs, flat, with its rules."""

    # Lax where the REST body is strict: models often send numbers as strings ("512").
    model_config = ConfigDict(strict=False)

    def model_dump_one_level(self) -> dict[str, Any]:
        """What the SDK passes the tool function: the request whole, as `submit` takes it."""
        return {"job": JobCreate.model_validate(self.model_dump(exclude_unset=True))}


def tenant_of(ctx: Context) -> str:
    """The tenant the /mcp route authenticated for this call."""
    request = ctx.request_context.request
    tenant = request.scope.get(TENANT_SCOPE_KEY) if request is not None else None
    if tenant is None:  # only the /mcp route serves these tools; it always sets one
        raise ToolError("no API key was checked for this request")
    return tenant


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn` (Redis, storage: blocking I/O) on a worker thread; service errors come back as
    tool errors with their message (what the REST API puts in `detail`), never a trace."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except Overloaded as exc:
        raise ToolError(f"{exc.detail} (retry after {exc.retry_after} s)") from None
    except ServiceError as exc:
        raise ToolError(exc.detail) from None
    except (RedisConnectionError, RedisTimeoutError):
        raise ToolError("the queue store is unavailable; retry shortly") from None


class JobTools:
    """The tools, bound to one app's services."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def generate_image(self, job: JobCreate, ctx: Context) -> CallToolResult:
        """Generate images from a text prompt (image-to-image with init_image) and wait for
        them, reporting each denoising step as progress. Returns the images, their URLs
        (GET them with the same API key) and the job id. Slow jobs: use start_job."""
        tenant = tenant_of(ctx)
        job_id = (await blocking(submit, self.services, tenant, job)).job.id
        try:
            done = await self._finished(job_id, tenant, ctx)
        except anyio.get_cancelled_exc_class():
            # The client gave up or hung up (or the API stops): nobody will read the images,
            # so the GPU stops on them at the next step.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await blocking(job_routes.cancel_job, job_id, self.services, tenant)
            raise
        if done.status is not JobStatus.SUCCEEDED:
            ended = "failed" if done.status is JobStatus.FAILED else f"was {done.status.value}"
            reason = f": {done.error.message}" if done.error else ""
            raise ToolError(f"job {job_id} {ended}{reason}")
        request = ctx.request_context.request
        images, content = [], []
        for index, info in enumerate(done.images):
            data = base64.b64encode(await blocking(self._image, done, index)).decode()
            content.append(ImageContent(data=data, mime_type=info.content_type))
            url = str(request.url_for("get_image", job_id=job_id, index=str(index)))
            images.append(info.model_dump() | {"url": url})
        summary = {"job_id": job_id, "images": images}
        content.append(TextContent(text=json.dumps(summary)))
        return CallToolResult(content=content, structured_content=summary)

    async def start_job(self, job: JobCreate, ctx: Context) -> Job:
        """Submit an image generation job and return at once with the queued job; follow it
        with get_job, fetch its images from their URLs with the same API key."""
        return (await blocking(submit, self.services, tenant_of(ctx), job)).job

    async def get_job(self, job_id: JobId, ctx: Context) -> Job:
        """A job: its status, queue position, progress and, once it succeeded, its images."""
        return await blocking(load_job, self.services, job_id, tenant_of(ctx))

    async def cancel_job(self, job_id: JobId, ctx: Context) -> Job:
        """Cancel a job: a queued one at once, a running one at its next denoising step."""
        return await blocking(job_routes.cancel_job, job_id, self.services, tenant_of(ctx))

    async def list_models(self, ctx: Context) -> ModelList:
        """The served models: default sizes, steps, schedulers, limits, queue lengths."""
        return await blocking(service_routes.list_models, self.services, tenant_of(ctx))

    def _image(self, job: Job, index: int) -> bytes:
        try:
            return self.services.storage.get(stored_image_key(job, index))
        except ObjectNotFound:
            raise ToolError(f"image {index} of job {job.id} is no longer stored") from None

    async def _finished(self, job_id: str, tenant: str, ctx: Context) -> Job:
        """The job once it has ended, following its event stream (no polling) and reporting
        its steps as MCP progress; a tool error if it has not within `sync_wait_timeout`."""
        events, timeout = self.services.events, self.services.settings.sync_wait_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        after = await events.latest(job_id)  # before the read: nothing falls in between
        job = await blocking(load_job, self.services, job_id, tenant)
        reported = 0

        async def progress(step: int, total: int) -> None:
            nonlocal reported
            if step > reported:  # MCP progress must grow; a rerun job starts over at 0
                reported = step
                await ctx.report_progress(step, total)

        if job.progress is not None:
            await progress(job.progress.step, job.progress.total_steps)
        if not job.status.is_terminal():
            async for event in events.follow(job_id, after, until=deadline):
                if event is None:
                    if not await events.aredis.exists(self.services.store.key(job_id)):
                        break  # expired: load_job below says so
                elif event.type == "progress":
                    await progress(int(event.fields["step"]), int(event.fields["total_steps"]))
                elif event.status is not None and event.status.is_terminal():
                    break
            job = await blocking(load_job, self.services, job_id, tenant)
        if not job.status.is_terminal():
            raise ToolError(
                f"job {job_id} is still {job.status.value} after {timeout:g} s; it goes on: "
                "follow it with get_job"
            )
        if job.status is JobStatus.SUCCEEDED and job.progress is not None:
            await progress(job.progress.total_steps, job.progress.total_steps)
        return job


def _job_tool(fn: Callable[..., Awaitable[Any]], output: type | None) -> Tool:
    """A tool whose arguments are a job request's fields, flat: one schema with POST /v1/jobs
    (the SDK would nest a model parameter under its name)."""
    return Tool(
        fn=fn,
        name=fn.__name__,
        description=inspect.getdoc(fn) or "",
        parameters=JobArguments.model_json_schema(by_alias=True),
        fn_metadata=FuncMetadata(arg_model=JobArguments, output_model=output),
        is_async=True,
        context_kwarg="ctx",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )


def build_server(services: Services) -> MCPServer:
    """The MCP server of one app, its tools bound to the app's services."""
    tools = JobTools(services)
    # MCPServer() calls logging.basicConfig, which gives the root logger a handler of its own
    # when logging is not configured yet; the service configures logging itself (core.logs).
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    server: MCPServer = MCPServer(
        "ldm-serve",
        instructions="Text-to-image generation with latent diffusion models. generate_image "
        "waits for the pictures; start_job and get_job suit long jobs. list_models gives the "
        "sizes, steps and schedulers each model takes.",
        tools=[_job_tool(tools.generate_image, None), _job_tool(tools.start_job, Job)],
    )
    root.handlers[:], root.level = handlers, level
    read_only = ToolAnnotations(read_only_hint=True)
    for fn, annotations in [
        (tools.get_job, read_only),
        (tools.cancel_job, ToolAnnotations(destructive_hint=True, idempotent_hint=False)),
        (tools.list_models, read_only),
    ]:
        server.add_tool(fn, description=inspect.getdoc(fn), annotations=annotations)
    return server
