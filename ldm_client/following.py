"""Waiting on a job: the backoff between tries, and reading its Server-Sent Events."""

import json
import time
from typing import Any

import httpx

from ldm_client.errors import ApiError

Job = dict[str, Any]
# Silence past two server pings (15 s apart) means a dead connection.
STREAM_SILENCE_S = 35.0


class Backoff:
    """Delays between polls (0.2 s growing to 2 s) or retries; a server's Retry-After wins."""

    def __init__(self, timeout: float | None = None) -> None:
        self.delay = 0.2
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def next(self, error: ApiError | None = None) -> float:
        """Seconds to sleep before trying again; `TimeoutError` once past the deadline."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError("gave up waiting: the deadline passed")
        delay = error.retry_after if error and error.retry_after is not None else self.delay
        self.delay = min(self.delay * 1.5, 2.0)
        if self.deadline is not None:
            delay = min(delay, max(self.deadline - time.monotonic(), 0.0))
        return delay

    def stream_timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        """For an event stream: silence past two server pings (15 s apart) means a dead
        connection; and a read never outlasts the deadline."""
        read = STREAM_SILENCE_S
        if self.deadline is not None:
            read = min(read, max(self.deadline - time.monotonic(), 0.01))
        return httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)


class EventStream:
    """Reads a job's Server-Sent Events line by line into the job they describe, and
    remembers where it is, so that a new connection resumes there (`Last-Event-ID`)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.job: Job | None = None
        self._fields: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        """Headers of the next connection."""
        return {"Last-Event-ID": self.last_id} if self.last_id else {}

    def feed(self, line: str) -> Job | None:
        """Take one line; the job as it now is when the line completed an event."""
        if line.startswith(":"):
            return None  # a ping
        if line:
            name, _, value = line.partition(":")
            self._fields[name] = value.removeprefix(" ")
            return None
        fields, self._fields = self._fields, {}
        if "data" not in fields:
            return None
        self.last_id = fields.get("id", self.last_id)
        data = json.loads(fields["data"])
        if fields.get("event") in ("status", "done"):
            self.job = data
        elif fields.get("event") == "progress" and self.job is not None:
            self.job = self.job | {"progress": data}
        else:
            return None
        return self.job
