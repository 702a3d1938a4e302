"""MCP at /mcp with the official SDK's client (streamable HTTP + ClientSession), against a real
service (Redis, API, worker on the tiny model), as an agent would use it."""

import base64
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ImageContent, TextContent
from PIL import Image

from scripts.stack import LocalStack
from tests.e2e.conftest import BUSY
from worker.tiny_model import ensure_tiny_model

ALICE, BOB = "alice-mcp-key-0123", "bob-mcp-key-4567"
TOOLS = {"generate_image", "start_job", "get_job", "cancel_job", "list_models"}
FAST = {"width": 64, "height": 64, "num_inference_steps": 6}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LocalStack]:
    ensure_tiny_model(model_cache)
    keys = f"alice:{ALICE},bob:{BOB}"
    with LocalStack(tmp_path_factory.mktemp("stack"), model_cache, LDM_API_KEYS=keys) as stack:
        stack.start_api()
        stack.start_worker()
        yield stack


def rest(stack: LocalStack, key: str) -> httpx.Client:
    """A REST client of the stack's API with an API key."""
    return httpx.Client(
        base_url=stack.http.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


@asynccontextmanager
async def connect(stack: LocalStack, key: str) -> AsyncIterator[ClientSession]:
    """An initialized MCP session with the API, as a client configured with the key has."""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        streamable_http_client(f"{stack.http.base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def run(stack: LocalStack, key: str, use: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """`use(session)` in a session of its own, from a synchronous test."""

    async def main() -> Any:
        async with connect(stack, key) as session:
            return await use(session)

    return anyio.run(main)


def text_of(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


def new_jobs(stack: LocalStack, before: set[str]) -> set[str]:
    keys = [key.decode() for key in stack.redis.scan_iter("ldm:job:j_*")]
    return {key.split(":")[2] for key in keys if key.count(":") == 2} - before


def test_the_tools_and_the_models_are_listed(stack: LocalStack) -> None:
    async def use(session: ClientSession) -> tuple[Any, CallToolResult]:
        return await session.list_tools(), await session.call_tool("list_models", {})

    tools, models = run(stack, ALICE, use)
    assert {tool.name for tool in tools.tools} == TOOLS
    schema = next(t.input_schema for t in tools.tools if t.name == "generate_image")
    assert {"prompt", "width", "height", "num_inference_steps", "seed", "model"} <= set(
        schema["properties"]
    )
    assert not models.is_error
    served = rest(stack, ALICE).get("/v1/models").json()["models"]
    listed = models.structured_content["models"]
    assert [(m["name"], m["default"], m["native_width"]) for m in listed] == [
        (m["name"], m["default"], m["native_width"]) for m in served
    ]
    assert json.loads(text_of(models))["models"][0]["name"] == "tiny-sd"


def test_generate_image_reports_progress_and_returns_the_image_and_its_url(
    stack: LocalStack,
) -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(step: float, total: float | None, message: str | None) -> None:
        progress.append((step, total))

    async def use(session: ClientSession) -> CallToolResult:
        arguments = {"prompt": "a red circle", "seed": 42} | FAST
        return await session.call_tool("generate_image", arguments, progress_callback=on_progress)

    result = run(stack, ALICE, use)
    assert not result.is_error, text_of(result)
    (image,) = [block for block in result.content if isinstance(block, ImageContent)]
    assert image.mime_type == "image/png"
    data = base64.b64decode(image.data)
    assert Image.open(io.BytesIO(data)).format == "PNG"
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    summary = json.loads(text_of(result))
    assert result.structured_content == summary
    job_id, (info,) = summary["job_id"], summary["images"]
    assert info["url"] == f"{stack.http.base_url}/v1/jobs/{job_id}/images/0"
    assert (info["width"], info["height"], info["seed"]) == (64, 64, 42)
    fetched = rest(stack, ALICE).get(info["url"])
    assert fetched.status_code == 200 and fetched.content == data
    assert rest(stack, BOB).get(info["url"]).status_code == 404  # another tenant's job
    job = rest(stack, ALICE).get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["request"]["num_inference_steps"] == 6
    # Progress notifications as the job's steps went by, growing, ending at the last step.
    assert progress, "no progress notification"
    steps = [step for step, _ in progress]
    assert steps == sorted(set(steps))
    assert progress[-1] == (job["progress"]["total_steps"],) * 2


def test_start_get_cancel_round_trip_and_tenant_isolation(stack: LocalStack) -> None:
    async def start_and_read(session: ClientSession) -> tuple[CallToolResult, CallToolResult]:
        started = await session.call_tool("start_job", BUSY)
        job_id = started.structured_content["id"]
        return started, await session.call_tool("get_job", {"job_id": job_id})

    started, read = run(stack, ALICE, start_and_read)
    assert not started.is_error and started.structured_content["status"] == "queued"
    job_id = started.structured_content["id"]
    assert read.structured_content["id"] == job_id
    assert read.structured_content["request"]["width"] == BUSY["width"]

    async def trespass(session: ClientSession) -> list[CallToolResult]:
        return [
            await session.call_tool(name, {"job_id": job_id}) for name in ("get_job", "cancel_job")
        ]

    for refused in run(stack, BOB, trespass):  # as for an id that never existed
        assert refused.is_error and f"no job {job_id!r}" in text_of(refused)
    assert rest(stack, ALICE).get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")

    async def cancel(session: ClientSession) -> CallToolResult:
        await session.call_tool("cancel_job", {"job_id": job_id})
        deadline = time.monotonic() + 30
        while (job := await session.call_tool("get_job", {"job_id": job_id})).structured_content[
            "status"
        ] != "canceled":
            assert time.monotonic() < deadline, job.structured_content
            await anyio.sleep(0.1)
        return await session.call_tool("cancel_job", {"job_id": job_id})

    again = run(stack, ALICE, cancel)
    assert again.is_error and f"job {job_id} is already canceled" in text_of(again)
    assert rest(stack, ALICE).get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


def test_a_canceled_generation_is_a_tool_error_naming_the_job(stack: LocalStack) -> None:
    before = new_jobs(stack, set())
    alice = rest(stack, ALICE)

    async def use(session: ClientSession) -> CallToolResult:
        async def cancel_it() -> None:
            while not (started := new_jobs(stack, before)):
                await anyio.sleep(0.05)
            (job_id,) = started
            assert alice.post(f"/v1/jobs/{job_id}/cancel").status_code == 202

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_it)
            return await session.call_tool("generate_image", BUSY)

    result = run(stack, ALICE, use)
    (job_id,) = new_jobs(stack, before)
    assert result.is_error and f"job {job_id} was canceled" in text_of(result)


def test_a_generation_the_client_gives_up_on_is_canceled(stack: LocalStack) -> None:
    before = new_jobs(stack, set())

    async def give_up(session: ClientSession) -> None:
        with anyio.move_on_after(1):  # as a client's tool timeout would
            await session.call_tool("generate_image", BUSY)

    run(stack, ALICE, give_up)
    (job_id,) = new_jobs(stack, before)
    alice, deadline = rest(stack, ALICE), time.monotonic() + 30
    while (job := alice.get(f"/v1/jobs/{job_id}").json())["status"] != "canceled":
        assert time.monotonic() < deadline, job  # the GPU does not go on for nobody
        time.sleep(0.1)


def test_the_2026_protocol_without_handshake_works_too(stack: LocalStack) -> None:
    async def main() -> tuple[str, CallToolResult]:
        headers = {"Authorization": f"Bearer {BOB}"}
        async with httpx2.AsyncClient(headers=headers) as http:
            transport = streamable_http_client(f"{stack.http.base_url}/mcp", http_client=http)
            async with Client(transport, mode="auto") as client:
                return client.protocol_version, await client.call_tool("start_job", {"prompt": "x"})

    version, started = anyio.run(main)
    assert version == "2026-07-28" and not started.is_error
    job_id = started.structured_content["id"]
    assert rest(stack, BOB).get(f"/v1/jobs/{job_id}").status_code == 200  # Bob's job
    assert rest(stack, ALICE).get(f"/v1/jobs/{job_id}").status_code == 404


def test_bad_arguments_and_unknown_models_are_tool_errors(stack: LocalStack) -> None:
    async def use(session: ClientSession) -> list[CallToolResult]:
        return [
            await session.call_tool("start_job", {"prompt": "x", "model": "dall-e-3"}),
            await session.call_tool("generate_image", {"prompt": "x", "width": 100}),
        ]

    unknown, bad_size = run(stack, ALICE, use)
    assert unknown.is_error and "not a served model" in text_of(unknown)
    assert bad_size.is_error and "multiple of 8" in text_of(bad_size)
    assert "Traceback" not in text_of(unknown) + text_of(bad_size)


def test_a_wrong_or_missing_key_is_refused(stack: LocalStack) -> None:
    with pytest.raises(BaseExceptionGroup) as refused:  # from the SDK's task groups
        run(stack, "not-a-key", lambda session: session.list_tools())
    assert refused.group_contains(MCPError)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer not-a-key"}):
        response = stack.http.post("/mcp", json=body, headers=headers | accept)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
