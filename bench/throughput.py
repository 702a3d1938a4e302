"""Service vs raw diffusers throughput, batching off and on, on the same tiny model in one run.

    python -m bench.throughput [--jobs 32] [--rounds 5] [--steps 20]

The baseline is what a diffusers user gets: N single-image pipeline calls in this process.
Each round times that baseline, then a burst of N jobs through the whole service (HTTP
submit, Redis queue, one worker, PNG encoding, storage write) right after it, and reports
raw_time / service_time; from the first submit to the last job's `finished_at`, so queueing
and dispatch count. With batching off it also compares medians per job (a raw call against
the time between consecutive finishes), which a neighbour's burst on a shared machine moves
far less than totals. One worker runs with LDM_MAX_BATCH=1 (off), then one with the model's
default batch (on). Raw batched calls of the same size show the headroom batching has here.
"""

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image

from app.core.models import model_spec
from app.core.settings import Settings
from scripts.stack import LocalStack
from worker.libraries import route_library_logs
from worker.tiny_model import ensure_tiny_model

PROMPT = "a red circle"


def load_raw(cache: Path) -> AutoPipelineForText2Image:
    """The tiny model as a diffusers user loads it, warmed up like the worker."""
    pipe = AutoPipelineForText2Image.from_pretrained(ensure_tiny_model(cache), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    raw_seconds(pipe, 2, 2)
    return pipe


def raw_seconds(
    pipe: AutoPipelineForText2Image, images: int, steps: int, batch: int = 1
) -> tuple[float, list[float]]:
    """`images` images in calls of `batch`, each image with its own seeded generator: the
    total time and each call's."""
    calls = []
    for first in range(0, images, batch):
        start = time.perf_counter()
        pipe(
            [PROMPT] * batch,
            width=64,
            height=64,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=[torch.Generator("cpu").manual_seed(s) for s in range(first, first + batch)],
            output_type="pil",
        )
        calls.append(time.perf_counter() - start)
    return sum(calls), calls


def service_seconds(stack: LocalStack, jobs: int, steps: int) -> tuple[float, list[float]]:
    """N jobs through the service: the time from the first submit to the last finish, and
    the times between consecutive finishes (one job's service time on a busy worker)."""
    start = datetime.now().astimezone()
    body: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": steps}
    ids = [stack.submit(body | {"seed": seed})["id"] for seed in range(jobs)]
    # Polls cost the worker's machine CPU too: wait on the last job (it ends last), rarely.
    stack.wait(ids[-1], timeout=600, poll=0.5)
    finished = [stack.wait(job_id, timeout=600, poll=0.5) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in finished), "a bench job failed"
    ends = sorted(datetime.fromisoformat(job["finished_at"]) for job in finished)
    gaps = [(b - a).total_seconds() for a, b in pairwise(ends)]
    return (ends[-1] - start).total_seconds(), gaps


def measure(jobs: int = 32, rounds: int = 5, steps: int = 20) -> dict[str, Any]:
    """Rounds of (raw, service) pairs with batching off, then on; ratios and their medians."""
    cache = Path(".cache/models").resolve()
    pipe = load_raw(cache)
    max_batch = model_spec(Settings(model="tiny-sd")).max_batch
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir, LocalStack(Path(workdir), cache) as stack:
        stack.start_api(LDM_MAX_QUEUE_LENGTH="100000")
        for batching, setting in (("off", "1"), ("on", str(max_batch))):
            worker = stack.start_worker(LDM_MAX_BATCH=setting)
            for round_ in range(1, rounds + 1):
                raw, raw_calls = raw_seconds(pipe, jobs, steps)
                service, service_gaps = service_seconds(stack, jobs, steps)
                batched, _ = raw_seconds(pipe, jobs, steps, batch=max_batch)
                rows.append(
                    {
                        "batching": batching,
                        "round": round_,
                        "raw_s": raw,
                        "service_s": service,
                        "ratio": raw / service,
                        # Medians shrug off a neighbour's burst that totals would absorb.
                        "per_job_ratio": statistics.median(raw_calls)
                        / statistics.median(service_gaps),
                        "raw_batched_ratio": raw / batched,
                    }
                )
                print(
                    f"| {batching} | {round_} | {raw:.2f} | {service:.2f} | "
                    f"{1000 * raw / jobs:.0f} | {1000 * service / jobs:.0f} | "
                    f"{raw / service:.3f} | "
                    f"{rows[-1]['per_job_ratio'] if batching == 'off' else '-':.5} | "
                    f"{raw / batched:.2f} |",
                    flush=True,
                )
            stack.stop_worker(worker)

    def median(batching: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["batching"] == batching)

    return {
        "jobs": jobs,
        "steps": steps,
        "max_batch": max_batch,
        "rounds": rows,
        "ratio_off": median("off", "ratio"),
        "ratio_on": median("on", "ratio"),
        "per_job_ratio_off": median("off", "per_job_ratio"),
        "raw_batch_headroom": statistics.median(r["raw_batched_ratio"] for r in rows),
    }


def main() -> None:
    """Print a table per round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    route_library_logs()  # no progress bars from the model libraries
    print(f"{args.jobs} jobs, tiny-sd 64x64, {args.steps} steps, CPU, one worker")
    print(
        "| batching | round | raw s | service s | raw ms/job | service ms/job "
        "| ratio | per-job ratio | raw batched |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    result = measure(args.jobs, args.rounds, args.steps)
    print(
        f"\nservice/raw throughput (median of {args.rounds}): batching off "
        f"{result['ratio_off']:.3f} (per job, medians: {result['per_job_ratio_off']:.3f}), "
        f"on {result['ratio_on']:.2f}x "
        f"(raw batches of {result['max_batch']}: {result['raw_batch_headroom']:.2f}x)"
    )


if __name__ == "__main__":
    main()
