"""A synchronous wait on a job's events ends at its deadline (real Redis), even when the
timeout's cancellation never reaches it."""

import asyncio
import time

import pytest
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import AbstractConnection

from app.core.events import JobEvents, wait_finished
from app.core.jobs import Job
from app.core.queue import JobQueue
from tests.factories import make_params, submitted

DEADLINE = 0.1
STALL = 0.3


async def wait_bounded(redis_url: str, queue: JobQueue, job_id: str) -> tuple[bool, float]:
    """Whether `wait_finished` ended (with None) within a few seconds, and after how long."""
    # The API's asyncio client has a socket timeout (app.api.main.build_services).
    aredis = AsyncRedis.from_url(redis_url, socket_timeout=10)
    start = time.monotonic()
    waiting = asyncio.create_task(wait_finished(JobEvents(aredis), queue.store, job_id, DEADLINE))
    try:
        done, _ = await asyncio.wait({waiting}, timeout=3)
        return bool(done) and waiting.result() is None, time.monotonic() - start
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await aredis.aclose()


def test_a_wait_ends_at_its_deadline(queue: JobQueue, redis_url: str) -> None:
    job_id = submitted(queue, make_params())  # queued, and no worker takes it
    ended, took = asyncio.run(wait_bounded(redis_url, queue, job_id))
    assert ended and DEADLINE <= took < DEADLINE + 0.8


def test_a_wait_ends_at_its_deadline_when_its_cancellation_is_lost(
    queue: JobQueue, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py sends each command through `asyncio.wait_for` when the client has a socket
    timeout. Before Python 3.12, `wait_for` swallows a cancellation that arrives once the
    send is done but before the waiting task resumes: the one `asyncio.timeout` delivers is
    then lost, and a wait relying on it alone follows the job's events for as long as the job
    lasts (with no worker: forever). The event loop stalling past the deadline right after
    sending the XREAD (a busy loop, a long GC pause) makes that happen every time."""
    job_id = submitted(queue, make_params())
    stalls = []
    send = AbstractConnection._send_packed_command

    async def send_then_stall(self: AbstractConnection, command: list[bytes]) -> None:
        await send(self, command)
        if not stalls and any(b"XREAD" in bytes(chunk) for chunk in command):
            stalls.append(command)
            time.sleep(STALL)  # blocks the loop: the deadline passes before the waiter resumes

    monkeypatch.setattr(AbstractConnection, "_send_packed_command", send_then_stall)
    ended, took = asyncio.run(wait_bounded(redis_url, queue, job_id))
    assert stalls, "the XREAD was not sent through the patched send"
    assert ended and took < DEADLINE + STALL + 0.5


def test_the_finished_job_is_returned(queue: JobQueue, redis_url: str) -> None:
    job_id = submitted(queue, make_params())
    queue.cancel(job_id, make_params().model)

    async def wait() -> Job | None:
        aredis = AsyncRedis.from_url(redis_url, socket_timeout=10)
        try:
            return await wait_finished(JobEvents(aredis), queue.store, job_id, 5)
        finally:
            await aredis.aclose()

    job = asyncio.run(wait())
    assert job is not None and job.id == job_id and job.status.is_terminal()
