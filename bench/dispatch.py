"""Dispatch latency: from a job's creation to its start on an idle worker.

    python -m bench.dispatch [--jobs 100] [--gap 0.1]

Starts Redis, one API process and one worker on the tiny model (built offline on first use),
then submits 1-step jobs one at a time, each only once the previous one has finished and the
worker has had `gap` seconds to go back to waiting on its queue. A job's dispatch latency is
its record's `started_at - created_at`: the API writes the one, the worker the other, both on
this host's clock. Reports p50, p99 and max in milliseconds.
"""

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model

BODY = {"prompt": "a red circle", "num_inference_steps": 1}


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (0 < fraction <= 1)."""
    ordered = sorted(values)
    return ordered[max(0, round(fraction * len(ordered) + 0.5) - 1)]


def dispatch_ms(job: dict[str, Any]) -> float:
    """Milliseconds from the job's creation to its start."""
    created = datetime.fromisoformat(job["created_at"])
    started = datetime.fromisoformat(job["started_at"])
    return (started - created).total_seconds() * 1000


def measure(jobs: int = 100, gap: float = 0.1, warmup: int = 3) -> dict[str, Any]:
    """p50/p99/max dispatch latency (ms) over `jobs` sequential jobs on one idle worker."""
    cache = Path(".cache/models").resolve()
    ensure_tiny_model(cache)
    latencies = []
    with tempfile.TemporaryDirectory() as workdir, LocalStack(Path(workdir), cache) as stack:
        stack.start_api()
        stack.start_worker()
        for index in range(warmup + jobs):
            time.sleep(gap)  # the worker is back on its queue, waiting
            job = stack.wait(stack.submit(BODY | {"seed": index})["id"], poll=0.01)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")
            if index >= warmup:
                latencies.append(dispatch_ms(job))
    return {
        "jobs": jobs,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }


def main() -> None:
    """Measure and print one markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.1, help="idle seconds before each submit")
    args = parser.parse_args()
    result = measure(args.jobs, args.gap)
    print(f"dispatch latency (created_at -> started_at), {args.jobs} jobs, one idle worker, CPU")
    print("| jobs | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    cells = [f"{result[name]:.1f}" for name in ("p50_ms", "p99_ms", "max_ms")]
    print(f"| {result['jobs']} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
