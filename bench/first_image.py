"""Time to a picture with the default model (tiny-shapes), through the whole service.

    python -m bench.first_image [--jobs 20]

Starts Redis, one API process and one worker serving `tiny-shapes` with its defaults (64x64,
20 DDIM steps, guidance 5), then submits one job at a time, each with the request a first
user sends (a prompt, nothing else), and times POST -> `succeeded` -> image bytes fetched,
as a client sees it. In the same run, the same pipeline called directly in this process
(diffusers, no service) is timed on the same prompts and seeds: the ratio is what the
service adds around the model. Both use the model's CPU threads (one for tiny-shapes).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from app.core.models import SHAPES_MODEL, model_spec
from app.core.settings import Settings
from scripts.stack import LocalStack
from worker.pipeline import SHAPES_WEIGHTS

PROMPTS = (
    "a red circle",
    "a large blue square on a black background",
    "small yellow triangle",
    "a green circle on a gray background",
)
WARMUP = 2


def raw_seconds(jobs: int) -> list[float]:
    """Seconds per direct pipeline call, one image at the model's defaults."""
    if threads := model_spec(Settings(model=SHAPES_MODEL)).cpu_threads:
        torch.set_num_threads(threads)
    pipe = DiffusionPipeline.from_pretrained(SHAPES_WEIGHTS, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for index in range(WARMUP + jobs):
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(
                PROMPTS[index % len(PROMPTS)],
                num_inference_steps=20,
                guidance_scale=5.0,
                generator=torch.Generator().manual_seed(index),
            )
        if index >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def service_seconds(stack: LocalStack, jobs: int) -> list[float]:
    """Seconds from POST to the image's bytes, one job at a time."""
    times = []
    for index in range(WARMUP + jobs):
        start = time.perf_counter()
        job = stack.submit({"prompt": PROMPTS[index % len(PROMPTS)], "seed": index})
        done = stack.wait(job["id"], poll=0.005)
        if done["status"] != "succeeded":
            raise RuntimeError(f"job {done['id']} {done['status']}: {done['error']}")
        stack.image(done).raise_for_status()
        if index >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def measure(jobs: int = 20) -> dict[str, Any]:
    """p50 seconds to a picture through the service and by a direct call, and their ratio."""
    with tempfile.TemporaryDirectory() as workdir:
        with LocalStack(Path(workdir), Path(workdir) / "models", LDM_MODEL=SHAPES_MODEL) as stack:
            stack.start_api()
            stack.start_worker(queue=f"ldm:{SHAPES_MODEL}")
            service = service_seconds(stack, jobs)
    raw = raw_seconds(jobs)
    return {
        "jobs": jobs,
        "service_p50_s": statistics.median(service),
        "service_max_s": max(service),
        "raw_p50_s": statistics.median(raw),
        "service_over_raw": statistics.median(service) / statistics.median(raw),
    }


def main() -> None:
    """Measure and print one markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    r = measure(args.jobs)
    print(f"tiny-shapes 64x64, 20 steps, guidance 5, one image per job, {r['jobs']} jobs, CPU")
    print("| POST -> image p50 | max | direct pipeline call p50 | service / direct |")
    print("|---|---|---|---|")
    print(
        f"| {r['service_p50_s'] * 1000:.0f} ms | {r['service_max_s'] * 1000:.0f} ms "
        f"| {r['raw_p50_s'] * 1000:.0f} ms | {r['service_over_raw']:.2f}x |"
    )


if __name__ == "__main__":
    main()
