"""Do a job's pixels belong to its seed? A sample of jobs that ran under chaos (batched, retried,
moved between workers), each generated again alone in this process from its own request and
compared with what the service stored (the worker's float noise allowed: `TOLERANCE`)."""

import base64
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from app.core.jobs import JobParams

TOLERANCE = 2  # 8-bit levels: batched and alone differ by float rounding only


@dataclass
class Sample:
    """A succeeded job to check: its request, its image as served, its init image if any."""

    job_id: str
    request: dict[str, Any]
    attempt: int
    image: bytes
    init: bytes | None


def pick(finals: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """Up to `count` succeeded jobs: those that ran again first (the interesting ones), then
    a seeded draw of the rest."""
    done = [job for job in finals if job["status"] == "succeeded"]
    retried = [job for job in done if job["attempt"] > 1]
    rest = [job for job in done if job["attempt"] == 1]
    random.Random(seed).shuffle(rest)
    return (retried[: count // 2] + rest)[:count]


def fetch(http: httpx.Client, jobs: list[dict[str, Any]], inits: dict[str, str]) -> list[Sample]:
    """Each job's first image through the API; `inits` holds the init images (base64) the
    clients sent, by job id (the worker deletes its copy once the job is done)."""
    samples = []
    for job in jobs:
        response = http.get(job["images"][0]["url"])
        response.raise_for_status()
        init = base64.b64decode(inits[job["id"]]) if job["id"] in inits else None
        samples.append(Sample(job["id"], job["request"], job["attempt"], response.content, init))
    return samples


def mismatches(samples: list[Sample], cache: Path) -> tuple[list[str], int]:
    """Jobs whose image is not their request's, alone; and the largest difference seen."""
    # torch only here: the rest of the bench drives processes and never needs it.
    from app.core.settings import Settings
    from worker.pipeline import ResidentPipeline

    if not samples:
        return [], 0
    resident = ResidentPipeline.load(Settings(model="tiny-sd", model_cache=cache, device="cpu"))
    wrong, largest = [], 0
    for sample in samples:
        params = JobParams.model_validate(sample.request)
        # As the API stores it (RGB) and the worker reads it back.
        init = Image.open(io.BytesIO(sample.init)).convert("RGB") if sample.init else None
        (alone,) = resident.generate(params.model_copy(update={"num_images": 1}), init)
        served = Image.open(io.BytesIO(sample.image)).convert("RGB")
        diff = int(
            np.abs(np.asarray(served, np.int16) - np.asarray(alone.convert("RGB"), np.int16)).max()
        )
        largest = max(largest, diff)
        if diff > TOLERANCE:
            wrong.append(f"{sample.job_id} (attempt {sample.attempt}): max difference {diff}")
    return wrong, largest
