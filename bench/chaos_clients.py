"""The clients of `bench.chaos`: a seeded plan of mixed jobs, and closed-loop clients that
submit one (Idempotency-Key, retrying what the service asks them to), cancel it if the plan
says so, and poll it to its end, surviving a Redis restart (transport errors and 5xx are
retried), then take the next."""

import base64
import concurrent.futures
import io
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from PIL import Image, ImageDraw

from scripts.stack import TERMINAL

Cancel = Literal["soon", "running"] | None
PROMPTS = ("a red circle", "blue square", "a cat in a hat", "neon street in the rain")
# Sizes the tiny model serves, each its own latent shape (they take turns in a worker).
SIZES = (64, 96, 128)
SIZE_WEIGHTS = (6, 2, 2)
RETRIED = {429, 500, 502, 503, 504}  # asked to come back, or a proxy between us and the API


@dataclass
class Planned:
    """One job a client will submit: its body, and whether (when) it cancels it."""

    key: str
    body: dict[str, Any]
    cancel: Cancel = None


@dataclass
class Outcome:
    """What a client saw of one planned job."""

    planned: Planned
    job_id: str | None = None  # None: never accepted
    final: dict[str, Any] | None = None  # the terminal record; None: lost or gave up
    latency: float | None = None  # first submit attempt to terminal status seen
    cancel_answer: int | None = None  # the cancel's HTTP status, if one was sent
    lost: str | None = None  # why it was not seen to end


def init_png(rng: random.Random, size: int) -> str:
    """A small init image (a coloured box on a background), base64 PNG."""
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    a, b = sorted(rng.sample(range(size), 2))
    ImageDraw.Draw(image).rectangle((a, a, b, b), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def plan(jobs: int, seed: int, prefix: str, cancels: float = 0.2) -> list[Planned]:
    """`jobs` mixed jobs drawn from `seed`: sizes 64-128 px, 2-8 steps, a fifth image-to-
    image, a share `cancels` canceled (half soon after submit, half once seen running)."""
    rng = random.Random(f"{prefix}-{seed}")
    planned = []
    for index in range(jobs):
        size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
        body: dict[str, Any] = {
            "prompt": rng.choice(PROMPTS),
            "seed": rng.randrange(2**32),
            "num_inference_steps": rng.randint(2, 8),
            "width": size,
            "height": size,
        }
        if rng.random() < 0.2:
            # strength >= 0.5 with >= 2 steps: at least one denoising step runs.
            body |= {"init_image": init_png(rng, size), "strength": rng.choice((0.5, 0.75, 0.9))}
        draw = rng.random()
        cancel: Cancel = "soon" if draw < cancels / 2 else "running" if draw < cancels else None
        planned.append(Planned(f"{prefix}-{seed}-{index}", body, cancel))
    return planned


def _call(
    client: httpx.Client, method: str, url: str, deadline: float, **kw: Any
) -> httpx.Response:
    """One request, retried on transport errors and the statuses in RETRIED until `deadline`
    (then the last answer, or the error)."""
    while True:
        try:
            response = client.request(method, url, **kw)
            if response.status_code not in RETRIED or time.monotonic() > deadline:
                return response
            wait = min(float(response.headers.get("retry-after", "0.5")), 2.0)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            wait = 0.2
        time.sleep(wait)


def _one(
    client: httpx.Client,
    planned: Planned,
    rng: random.Random,
    timeout: float,
) -> Outcome:
    """Submit, maybe cancel, poll to the end: one job as a client lives it."""
    outcome = Outcome(planned)
    started = time.monotonic()
    deadline = started + timeout
    headers = {"Idempotency-Key": planned.key}
    response = _call(client, "POST", "/v1/jobs", deadline, json=planned.body, headers=headers)
    if response.status_code != 202:
        outcome.lost = f"submit refused: {response.status_code} {response.text[:200]}"
        return outcome
    job_id = outcome.job_id = response.json()["id"]
    cancel_url = f"/v1/jobs/{job_id}/cancel"
    if planned.cancel == "soon":
        time.sleep(rng.uniform(0, 0.05))
        outcome.cancel_answer = _call(client, "POST", cancel_url, deadline).status_code
    watch_running = planned.cancel == "running"  # poll fast until seen running, then cancel
    poll, gone_since = 0.05, None
    while time.monotonic() < deadline:
        response = _call(client, "GET", f"/v1/jobs/{job_id}", deadline)
        if response.status_code == 404:
            # An accepted job's record never goes before its TTL: gone is lost (a second
            # look, in case a restarted store had not loaded it yet).
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 5:
                outcome.lost = "record gone (404)"
                return outcome
        elif response.status_code == 200:
            job = response.json()
            if job["status"] in TERMINAL:
                outcome.final, outcome.latency = job, time.monotonic() - started
                return outcome
            if watch_running and job["status"] == "running":
                outcome.cancel_answer = _call(client, "POST", cancel_url, deadline).status_code
                watch_running = False
        # Back off: short jobs are seen ending soon, long waits (a dead worker) poll less;
        # one to cancel while running is watched closely for its first seconds only.
        fast = watch_running and time.monotonic() - started < 5
        time.sleep(0.01 if fast else poll)
        poll = min(poll * 1.3, 1.0)
    outcome.lost = f"not ended after {timeout} s"
    return outcome


def drive(
    base: str,
    planned: list[Planned],
    clients: int,
    rate: float,
    timeout: float = 600,
) -> list[Outcome]:
    """Run `planned` through `clients` concurrent clients: job i is due `i / rate` seconds in
    (client k takes jobs k, k + clients, ...; one at a time, so a job that is slow to end
    makes its client's next ones late). Each job has `timeout` seconds to end."""
    # Paced, not flat out: tiny-sd runs a job in a fraction of a second, so the run lasts
    # long enough for the faults (a kill every few seconds) to land among the jobs.
    started = time.monotonic()

    def client_loop(k: int) -> list[Outcome]:
        rng = random.Random(k)
        mine = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for index in range(k, len(planned), clients):
                time.sleep(max(0.0, started + index / rate - time.monotonic()))
                mine.append(_one(client, planned[index], rng, timeout))
        return mine

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [o for outcomes in pool.map(client_loop, range(clients)) for o in outcomes]
