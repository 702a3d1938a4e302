"""Following a job's event stream (written by the job store's Lua steps) without polling:
what live progress and synchronous waits are built on, on any API replica."""

import asyncio
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
    """One entry of a job's stream: `type` is "status" (with `status`) or "progress" (with
    `step` and `total_steps`); `id` orders events and resumes a follower after it."""

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

    async def follow(self, job_id: str, after: str) -> AsyncIterator[Event | None]:
        """Events after `after`, as they happen; None after each quiet `IDLE_MS`. Endless:
        the caller stops when it has what it wants."""
        key = JobStore.events_key(job_id)
        while True:
            reply = await self.aredis.xread({key: after}, count=100, block=IDLE_MS)
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
    record is gone). Waits on the job's events, not by polling its record."""
    try:
        async with asyncio.timeout(timeout):
            after = await events.latest(job_id)
            job = await asyncio.to_thread(store.get, job_id)
            if job is None or job.status.is_terminal():
                return job
            async for event in events.follow(job_id, after):
                ended = event is not None and event.status and event.status.is_terminal()
                if ended or (event is None and not await events.aredis.exists(store.key(job_id))):
                    return await asyncio.to_thread(store.get, job_id)
    except TimeoutError:
        return None
    return None  # pragma: no cover - follow never ends by itself
