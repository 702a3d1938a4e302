"""Webhooks end to end: real API and worker processes, Redis, and an HTTP receiver."""

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from scripts.stack import LocalStack
from tests.e2e.conftest import BUSY
from tests.webhook_receiver import Received, Receiver
from worker.tiny_model import ensure_tiny_model

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
DELAYS = (0.2, 0.5)
TIMEOUT = 20  # longer than a job here: a hanging receiver must still not hold one up
SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "num_inference_steps": 4}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LocalStack]:
    ensure_tiny_model(model_cache)
    settings = {
        "LDM_WEBHOOK_SECRET": SECRET,
        "LDM_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "LDM_WEBHOOK_RETRY_DELAYS": ",".join(map(str, DELAYS)),
        "LDM_WEBHOOK_TIMEOUT": str(TIMEOUT),
    }
    with LocalStack(tmp_path_factory.mktemp("hooks"), model_cache, **settings) as stack:
        stack.start_api()
        stack.start_worker()
        yield stack


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def verified(request: Received) -> dict:
    """The payload of a delivery, once its signature checks out (as a receiver would)."""
    return Webhook(SECRET).verify(request.body, request.headers)


def event_order(request: Received) -> tuple[int, int]:
    """Deliveries may arrive in any order; the stream id ending their webhook-id orders them."""
    ms, seq = request.headers["webhook-id"].rsplit("-", 2)[1:]
    return int(ms), int(seq)


def test_completion_arrives_signed_with_the_final_job(
    stack: LocalStack, receiver: Receiver
) -> None:
    job = stack.submit(SMALL | {"webhook_url": receiver.url + "/hooks/ldm?t=1"})
    done = stack.wait(job["id"])
    (request,) = receiver.wait_for(lambda r: len(r) >= 1)
    assert request.path == "/hooks/ldm?t=1"
    payload = verified(request)
    assert payload["type"] == "job.completed"
    assert payload["data"] == done == stack.job(job["id"])
    assert payload["data"]["status"] == "succeeded" and payload["data"]["images"]


def test_start_and_progress_arrive_when_subscribed(stack: LocalStack, receiver: Receiver) -> None:
    events = ["start", "progress", "completed"]
    body = SMALL | {"num_inference_steps": 20, "webhook_url": receiver.url}
    job = stack.submit(body | {"webhook_events": events})
    stack.wait(job["id"])

    def last_step_and_end(requests: list) -> bool:
        # Deliveries run side by side: the last step may land after the end.
        payloads = [verified(r) for r in requests]
        ended = any(p["type"] == "job.completed" for p in payloads)
        return ended and any((p["data"]["progress"] or {}).get("step") == 20 for p in payloads
                             if p["type"] == "job.progress")

    requests = receiver.wait_for(last_step_and_end)
    payloads = [verified(r) for r in sorted(requests, key=event_order)]
    types = [p["type"] for p in payloads]
    assert types[0] == "job.started" and types[-1] == "job.completed"
    assert set(types[1:-1]) == {"job.progress"}
    steps = [p["data"]["progress"]["step"] for p in payloads if p["type"] == "job.progress"]
    assert steps == sorted(steps) and steps[-1] == 20  # the last step is always sent
    assert len(steps) < 20  # at most one a second in between, not one per step
    assert len({r.headers["webhook-id"] for r in requests}) == len(requests)


def test_a_failing_receiver_gets_the_event_on_the_third_try_under_one_id(
    stack: LocalStack, receiver: Receiver
) -> None:
    receiver.statuses = [500, 502]
    job = stack.submit(SMALL | {"webhook_url": receiver.url})
    done = stack.wait(job["id"])
    requests = receiver.wait_for(lambda r: len(r) >= 3)
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert all(verified(r)["data"] == done for r in requests)
    gaps = [b.at - a.at for a, b in zip(requests, requests[1:], strict=False)]
    assert gaps[0] >= DELAYS[0] - 0.05 and gaps[1] >= DELAYS[1] - 0.05
    time.sleep(DELAYS[-1] + 0.5)
    assert len(receiver.requests) == 3  # delivered: no more tries


def test_a_hanging_receiver_does_not_delay_the_job(stack: LocalStack, receiver: Receiver) -> None:
    receiver.hang = 3 * TIMEOUT
    job = stack.submit(SMALL | {"webhook_url": receiver.url, "webhook_events": ["start"]})
    (start,) = receiver.wait_for(lambda r: len(r) >= 1)  # held, unanswered
    done = stack.wait(job["id"], timeout=TIMEOUT)
    assert done["status"] == "succeeded"
    assert time.monotonic() - start.at < TIMEOUT  # finished while its webhook still hung
    with Receiver() as other:  # and other jobs' webhooks still go out meanwhile
        stack.wait(stack.submit(SMALL | {"webhook_url": other.url})["id"])
        other.wait_for(lambda r: len(r) >= 1, timeout=TIMEOUT / 2)


def test_a_job_canceled_in_the_queue_reports_its_end(
    stack: LocalStack, receiver: Receiver
) -> None:
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    queued = stack.submit(SMALL | {"webhook_url": receiver.url})
    stack.http.post(f"/v1/jobs/{queued['id']}/cancel")
    stack.http.post(f"/v1/jobs/{busy['id']}/cancel")
    (request,) = receiver.wait_for(lambda r: len(r) >= 1)
    payload = verified(request)
    assert payload["type"] == "job.completed" and payload["data"]["status"] == "canceled"
    stack.wait(busy["id"])


@pytest.fixture(scope="module")
def strict_api(stack: LocalStack) -> httpx.Client:
    """An API process with the default SSRF guard: public receivers only."""
    return stack.start_api(LDM_WEBHOOK_ALLOW_PRIVATE="false")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://[::1]/", "http://10.0.0.8/"],
)
def test_private_receivers_are_refused_at_submit(strict_api: httpx.Client, url: str) -> None:
    response = strict_api.post("/v1/jobs", json=SMALL | {"webhook_url": url})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "webhook_url" in json.dumps(response.json())
    assert "LDM_WEBHOOK_ALLOW_PRIVATE" in json.dumps(response.json())


@pytest.mark.parametrize("url", ["ftp://93.184.215.14/hook", "not a url"])
def test_bad_webhook_urls_are_refused_at_submit(stack: LocalStack, url: str) -> None:
    response = stack.http.post("/v1/jobs", json=SMALL | {"webhook_url": url})
    assert response.status_code == 422, response.text
    assert "webhook_url" in json.dumps(response.json())
