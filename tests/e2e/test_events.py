"""Live progress over Server-Sent Events, against real API processes, Redis and a worker."""

import base64
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from scripts.stack import LocalStack
from tests.e2e.conftest import BEHIND_BUSY, BUSY, SLOW


@dataclass
class Sse:
    event: str
    data: Any
    id: str | None


def sse(response: httpx.Response) -> Iterator[Sse]:
    """The events of a text/event-stream response, as a browser's EventSource parses them."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                data = json.loads(fields["data"])
                yield Sse(fields.get("event", "message"), data, fields.get("id"))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def follow(client: httpx.Client, job_id: str, **headers: str) -> Iterator[Sse]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        yield from sse(r)


@pytest.fixture(scope="module")
def replica(stack: LocalStack) -> httpx.Client:
    """A second API process: events must reach clients of any replica."""
    return stack.start_api()


def test_a_job_is_followed_live_to_its_images(stack: LocalStack, replica: httpx.Client) -> None:
    job = stack.submit(SLOW | {"seed": 3})  # on the first replica
    events = list(follow(replica, job["id"]))
    assert events[0].event == "status" and events[0].data["id"] == job["id"]
    steps = [e.data["step"] for e in events if e.event == "progress"]
    assert steps and steps == sorted(steps) and steps[-1] == 60
    assert all(e.data["total_steps"] == 60 for e in events if e.event == "progress")
    assert "running" in [e.data["status"] for e in events if e.event == "status"]
    assert events[-1].event == "done"
    done = events[-1].data
    assert done["status"] == "succeeded" and len(done["images"]) == 1
    assert done == stack.job(job["id"])
    assert stack.image(done).status_code == 200


def test_a_reconnecting_client_misses_no_event(stack: LocalStack, replica: httpx.Client) -> None:
    job = stack.submit(SLOW | {"seed": 4})
    first: list[Sse] = []
    for event in follow(stack.http, job["id"]):
        first.append(event)
        if len([e for e in first if e.event == "progress"]) == 3:
            break  # the connection drops mid-job
    assert first[-1].data["step"] < 60, "the job ended before the client could drop"
    rest = list(follow(replica, job["id"], **{"Last-Event-ID": first[-1].id}))
    assert rest[-1].event == "done" and rest[-1].data["status"] == "succeeded"
    # Every event the job's stream holds since the client joined, each exactly once, in order.
    stream = [raw.decode() for raw, _ in stack.redis.xrange(f"ldm:job:{job['id']}:events")]
    seen = [e.id for e in first + rest if e.id]
    assert seen == stream[stream.index(first[0].id) :]


def test_a_queued_job_reports_its_position_then_its_cancel(stack: LocalStack) -> None:
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    ahead = stack.submit(SLOW | BEHIND_BUSY)  # busy's size: they wait behind it
    job = stack.submit(SLOW | BEHIND_BUSY)
    events = follow(stack.http, job["id"])
    assert next(events).data["queue_position"] == 1
    stack.http.post(f"/v1/jobs/{ahead['id']}/cancel").raise_for_status()
    assert next(events).data["queue_position"] == 0  # moved up, though nothing happened to it
    stack.http.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
    last = next(events)
    assert last.event == "done" and last.data["status"] == "canceled"
    assert list(events) == []  # the server ends the stream after `done`
    stack.http.post(f"/v1/jobs/{busy['id']}/cancel").raise_for_status()
    stack.wait(busy["id"])


def test_a_finished_job_answers_done_at_once(stack: LocalStack) -> None:
    job = stack.wait(stack.submit({"prompt": "quick", "num_inference_steps": 2})["id"])
    assert [(e.event, e.data) for e in follow(stack.http, job["id"])] == [("done", job)]


def test_an_unknown_job_is_a_problem_not_a_stream(stack: LocalStack) -> None:
    response = stack.http.get("/v1/jobs/j_01ARZ3NDEKTSV4RRFFQ69G5FAV/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_previews_arrive_throttled_and_leave_the_image_unchanged(
    stack: LocalStack, replica: httpx.Client
) -> None:
    job = stack.submit(SLOW | {"seed": 5, "width": 256, "height": 128, "previews": True})
    events = list(follow(replica, job["id"]))
    previews = [e for e in events if e.event == "preview"]
    assert previews, "a 2-second job sends previews"
    for preview in previews:
        assert set(preview.data) == {"step", "total_steps", "image"}
        assert preview.data["total_steps"] == 60 and 0 < preview.data["step"] < 60
        url = preview.data["image"]
        assert url.startswith("data:image/webp;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        # At latent resolution (tiny-sd: 1/8 of each side): the job's shape, a few hundred bytes.
        assert image.format == "WEBP" and image.size == (32, 16)
    # At most one every 250 ms (stream ids are Redis's milliseconds; the writes may lag their
    # decision by a few ms), so a job of a few seconds gets a handful, not one per step.
    times = [int(e.id.split("-")[0]) for e in previews if e.id]
    assert all(later - earlier >= 200 for earlier, later in itertools.pairwise(times))
    assert len(previews) < 30
    done = events[-1].data
    assert events[-1].event == "done" and done["status"] == "succeeded"
    # The same job without previews makes the very same image.
    plain = stack.wait(stack.submit(SLOW | {"seed": 5, "width": 256, "height": 128})["id"])
    assert stack.image(plain).content == stack.image(done).content
    stream = stack.redis.xrange(f"ldm:job:{plain['id']}:events")
    assert [f for _, f in stream if f[b"type"] == b"preview"] == []
