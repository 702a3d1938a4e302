"""A bench's view of a service with API keys: jobs POSTed as tenants at planned times, and
their records read straight from Redis (a bench that polled the API would take a core from
the service it measures)."""

import asyncio
import io
import time
from typing import Any

import httpx
from PIL import Image

from app.core.jobs import Job, JobStatus
from app.core.store import JobStore
from scripts.stack import TERMINAL, LocalStack

TENANTS = ("flood", "neighbour", "heavy", "light", "hi")
KEYS = {tenant: f"key-{tenant}" for tenant in TENANTS}
Plan = list[tuple[float, str, dict[str, Any]]]  # (seconds from now, tenant, request)


def auth(tenant: str) -> dict[str, str]:
    """The header that makes a request `tenant`'s."""
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


async def _post(base_url: str, plan: Plan) -> list[dict[str, Any]]:
    """POST each job at its time without waiting for earlier POSTs; the 202 answers."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        loop = asyncio.get_running_loop()
        start, posts = loop.time(), []
        for at, tenant, job in plan:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            posts.append(
                asyncio.create_task(client.post("/v1/jobs", json=job, headers=auth(tenant)))
            )
        responses = await asyncio.gather(*posts)
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses][:3]
    return [r.json() for r in responses]


def post(stack: LocalStack, plan: Plan) -> list[dict[str, Any]]:
    """Run the plan against the stack's API; the 202 answers, in plan order."""
    return asyncio.run(_post(str(stack.http.base_url), plan))


def fields(store: JobStore, ids: list[str], *names: str) -> list[list[str | None]]:
    """Some fields of many jobs' records in one round trip (a bench that polls whole records
    takes a core from the service it measures)."""
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(JobStore.key(job_id), *names)
    return [[v.decode() if v else None for v in row] for row in pipe.execute()]


def wait_all(store: JobStore, ids: list[str], timeout: float = 900) -> list[Job]:
    """Every job once finished, read from Redis (a bench must not wait on its own polling)."""
    deadline, pending = time.monotonic() + timeout, list(ids)
    while pending:
        statuses = fields(store, pending, "status")
        pending = [i for i, (s,) in zip(pending, statuses, strict=True) if s not in TERMINAL]
        assert time.monotonic() < deadline, f"{len(pending)} bench jobs still unfinished"
        time.sleep(0.1 if pending else 0)
    jobs = [store.get(job_id) for job_id in ids]
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs), "a bench job failed"
    return jobs


def latency(job: Job) -> float:
    """Seconds from submit to images."""
    return (job.finished_at - job.created_at).total_seconds()


def run_s(job: Job) -> float:
    """Seconds from the job's start to its images."""
    return (job.finished_at - job.started_at).total_seconds()


def alone(stack: LocalStack, store: JobStore, tenant: str, job: dict[str, Any]) -> Job:
    """One job in the idle service."""
    (answer,) = post(stack, [(0.0, tenant, job)])
    return wait_all(store, [answer["id"]])[0]


def image(stack: LocalStack, tenant: str, job: Job) -> Image.Image:
    """The job's first image, fetched through the API as its tenant."""
    response = stack.http.get(job.images[0].url, headers=auth(tenant))
    response.raise_for_status()
    return Image.open(io.BytesIO(response.content)).convert("RGB")
