"""Following a job's event stream (written by the job store's Lua steps) without polling:
what live progress and synchronous waits are built on, on any API replica."""

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from app.core.jobs import Job, JobStatus
from app.core.store import JobStore

# A read blocks at most this long, so that followers can do their periodic work (queue
# position, keep-alives, deadlines) while a job is quiet.
IDLE_MS = 1000
START = "0-0"


@dataclass(frozen=True)
class Event:
    """One entry of a job's stream: `type` is "status" (with `status`), "progress" (with
    `step` and `total_steps`) or "preview" (those and `image`, a WebP data URL); `id` orders
    events and resumes a follower after it."""

    id: str
    type: str
    fields: dict[str, str]

    @property
    def status(self) -> JobStatus | None:
        """The state the job moved to, for a status event."""
        return JobStatus(self.fields["status"]) if self.type == "status" else None


class JobEvents:
    """Reads job event streams over an asyncio Redis client."""

    def __init__(self, aredis: AsyncRedis) -> None:
        self.aredis = aredis

    async def latest(self, job_id: str) -> str:
        """The id of the job's newest event; `START` when it has none."""
        newest = await self.aredis.xrevrange(JobStore.events_key(job_id), count=1)
        return newest[0][0].decode() if newest else START

    async def retained_since(self, job_id: str, after: str) -> bool:
        """Whether every event after `after` is still in the stream (old ones are trimmed)."""
        oldest = await self.aredis.xrange(JobStore.events_key(job_id), count=1)
        return bool(oldest) and _parse(after) >= _parse(oldest[0][0].decode())

    async def follow(
        self, job_id: str, after: str, until: float | None = None
    ) -> AsyncIterator[Event | None]:
        """Events after `after`, as they happen; None after each quiet `IDLE_MS`. Endless
        (the caller stops when it has what it wants), unless `until` (event loop time) is
        given: it then ends once that has passed, no read blocking beyond it."""
        key = JobStore.events_key(job_id)
        loop = asyncio.get_running_loop()
        while True:
            block = IDLE_MS
            if until is not None:
                left = until - loop.time()
                if left <= 0:
                    return
                block = min(IDLE_MS, max(1, math.ceil(left * 1000)))  # 0 would block forever
            reply = await self.aredis.xread({key: after}, count=100, block=block)
            if not reply:
                yield None
                continue
            for raw_id, raw_fields in reply[0][1]:
                after = raw_id.decode()
                fields = {k.decode(): v.decode() for k, v in raw_fields.items()}
                yield Event(after, fields.pop("type", ""), fields)


def _parse(event_id: str) -> tuple[int, int]:
    millis, _, seq = event_id.partition("-")
    return int(millis), int(seq or 0)


def is_event_id(value: str) -> bool:
    """Whether `value` is a well-formed stream id (a client's Last-Event-ID may be anything)."""
    millis, dash, seq = value.partition("-")
    return millis.isdigit() and (not dash or seq.isdigit()) and len(value) <= 41


async def wait_finished(
    events: JobEvents, store: JobStore, job_id: str, timeout: float
) -> Job | None:
    """The job once it has ended, or None if it has not within `timeout` seconds (or its
    record is gone). Waits on the job's events, not by polling its record.

    The deadline holds without the timeout's cancellation: redis-py sends commands through
    `asyncio.wait_for`, which before Python 3.12 swallows a cancellation that arrives just as
    a send completes (a busy event loop makes that likely). Following the events only until
    the deadline, in reads that block no longer, ends the wait all the same."""
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            after = await events.latest(job_id)
            job = await asyncio.to_thread(store.get, job_id)
            if job is None or job.status.is_terminal():
                return job
            async for event in events.follow(job_id, after, until=deadline):
                ended = event is not None and event.status and event.status.is_terminal()
                if ended or (event is None and not await events.aredis.exists(store.key(job_id))):
                    return await asyncio.to_thread(store.get, job_id)
    except TimeoutError:
        return None
    return None  # the deadline passed, its cancellation lost on the way
