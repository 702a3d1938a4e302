"""Worker memory: resident set size next to the bare pipeline, and its growth over many jobs.

    python -m bench.memory [--jobs 2000]

The bare figure is a process that only loads the tiny model with diffusers and makes one
call (`python -m bench.memory --bare`). The worker is a real one behind a real API and Redis;
its RSS is read after warm-up and a first 100 jobs (steady state), then after all `--jobs`,
with batching on as deployed. Jobs use 2 steps: memory, not denoising, is measured.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.stack import LocalStack

WARM_JOBS = 100


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bare() -> None:
    """Load the model as a diffusers user would, make one call, print this process's RSS."""
    import os

    import torch
    from diffusers import AutoPipelineForText2Image

    from worker.tiny_model import ensure_tiny_model

    folder = ensure_tiny_model(Path(".cache/models").resolve())
    pipe = AutoPipelineForText2Image.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe("a red circle", width=64, height=64, num_inference_steps=2, output_type="pil")
    print(rss_mb(os.getpid()))


def run_jobs(stack: LocalStack, jobs: int) -> None:
    body = {"prompt": "a red circle", "num_inference_steps": 2}
    ids = [stack.submit(body | {"seed": seed})["id"] for seed in range(jobs)]
    finished = [stack.wait(job_id, timeout=900, poll=0.05) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in finished), "a bench job failed"


def measure(jobs: int = 2000) -> dict[str, Any]:
    """RSS of the bare pipeline and of a worker at start, after 100 jobs and after `jobs`."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--bare"], capture_output=True, text=True, check=True
    )
    bare_mb = float(out.stdout.split()[-1])
    cache = Path(".cache/models").resolve()
    with tempfile.TemporaryDirectory() as workdir, LocalStack(Path(workdir), cache) as stack:
        stack.start_api(LDM_MAX_QUEUE_LENGTH="100000")
        worker = stack.start_worker()
        start_mb = rss_mb(worker.pid)
        run_jobs(stack, WARM_JOBS)
        warm_mb = rss_mb(worker.pid)
        run_jobs(stack, jobs // 2 - WARM_JOBS)
        half_mb = rss_mb(worker.pid)
        run_jobs(stack, jobs - jobs // 2)
        end_mb = rss_mb(worker.pid)
    return {
        "jobs": jobs,
        "bare_mb": bare_mb,
        "worker_start_mb": start_mb,
        "worker_warm_mb": warm_mb,
        "worker_half_mb": half_mb,
        "worker_end_mb": end_mb,
        "vs_bare": warm_mb / bare_mb,
        "growth": (end_mb - warm_mb) / warm_mb,
        # A leak keeps growing; an allocator settling does not: compare the two halves.
        "growth_second_half": (end_mb - half_mb) / half_mb,
    }


def main() -> None:
    """Print the figures (or, with --bare, only the bare pipeline's RSS)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare()
        return
    r = measure(args.jobs)
    print(
        f"bare pipeline {r['bare_mb']:.0f} MiB; worker {r['worker_start_mb']:.0f} MiB at start, "
        f"{r['worker_warm_mb']:.0f} after {WARM_JOBS} jobs ({r['vs_bare']:.2f}x bare), "
        f"{r['worker_half_mb']:.0f} after {r['jobs'] // 2}, {r['worker_end_mb']:.0f} after "
        f"{r['jobs']} (growth {100 * r['growth']:+.1f}%, second half "
        f"{100 * r['growth_second_half']:+.1f}%)"
    )


if __name__ == "__main__":
    main()
