"""Time to a picture with the default model (tiny-shapes), through the whole service.

    python -m bench.first_image [--jobs 20] [--busy]

Starts Redis, one API process and one worker serving `tiny-shapes` with its defaults (64x64,
20 DDIM steps, guidance 5), then submits one job at a time, each with the request a first
user sends (a prompt, nothing else), and times POST -> `succeeded` -> image bytes fetched,
as a client sees it. In the same run, the same pipeline called directly in this process
(diffusers, no service) is timed on the same prompts and seeds: the ratio is what the
service adds around the model. Both use the model's CPU threads (one for tiny-shapes); the
direct call is timed again on torch's default threads (one per core), which the model's choice
is measured against. `--busy` keeps one core busy with another process throughout, as a
laptop's other programs do.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from app.core.models import SHAPES_MODEL, model_spec
from app.core.settings import Settings
from scripts.stack import LocalStack
from shapes.evaluate import generate, load
from worker.pipeline import SHAPES_WEIGHTS

PROMPTS = (
    "a red circle",
    "a large blue square on a black background",
    "small yellow triangle",
    "a green circle on a gray background",
)
WARMUP = 2


def raw_seconds(pipe: DiffusionPipeline, jobs: int, threads: int) -> list[float]:
    """Seconds per direct pipeline call on `threads` torch threads, one image at the model's
    defaults."""
    torch.set_num_threads(threads)
    times = []
    for index in range(WARMUP + jobs):
        start = time.perf_counter()
        generate(pipe, [PROMPTS[index % len(PROMPTS)]], [index], guidance=5.0, steps=20)
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


def measure(jobs: int = 20, busy: bool = False) -> dict[str, Any]:
    """p50 seconds to a picture through the service and by a direct call (on the model's
    threads and on torch's default), and the service's ratio to the direct call."""
    default_threads = torch.get_num_threads()
    model_threads = model_spec(Settings(model=SHAPES_MODEL)).cpu_threads or default_threads
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as workdir:
            cache = Path(workdir) / "models"
            with LocalStack(Path(workdir), cache, LDM_MODEL=SHAPES_MODEL) as stack:
                stack.start_api()
                stack.start_worker(queue=f"ldm:{SHAPES_MODEL}")
                service = statistics.median(service_seconds(stack, jobs))
        pipe = load(SHAPES_WEIGHTS)
        raw = statistics.median(raw_seconds(pipe, jobs, model_threads))
        raw_default = statistics.median(raw_seconds(pipe, jobs, default_threads))
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    return {
        "jobs": jobs,
        "busy_core": busy,
        "service_p50_s": service,
        "raw_p50_s": raw,
        "service_over_raw": service / raw,
        "threads": model_threads,
        "default_threads": default_threads,
        "raw_default_threads_p50_s": raw_default,
    }


def main() -> None:
    """Measure and print one markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    args = parser.parse_args()
    r = measure(args.jobs, args.busy)
    print(
        f"tiny-shapes 64x64, 20 steps, guidance 5, one image per job, {r['jobs']} jobs, CPU"
        + (", one core kept busy" if r["busy_core"] else "")
    )
    print(
        f"| POST -> image p50 | direct call p50, {r['threads']} thread(s) | service / direct "
        f"| direct call p50, {r['default_threads']} threads (torch's default) |"
    )
    print("|---|---|---|---|")
    print(
        f"| {r['service_p50_s'] * 1000:.0f} ms | {r['raw_p50_s'] * 1000:.0f} ms "
        f"| {r['service_over_raw']:.2f}x | {r['raw_default_threads_p50_s'] * 1000:.0f} ms |"
    )


if __name__ == "__main__":
    main()
