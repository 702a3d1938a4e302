"""Service vs raw diffusers throughput on the same tiny model, same parameters, in one run.

    python -m bench.throughput [--jobs 32] [--rounds 3] [--steps 20]

Each round times N raw pipeline calls in this process, then N jobs through the whole
service (HTTP submit, Redis queue, one worker, PNG encoding, storage write), and reports
raw_time / service_time. The service time runs from the first submit to the last job's
`finished_at`, so it includes queueing and dispatch. The median ratio over rounds is the figure.
"""

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image

from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model


def raw_seconds(pipe: AutoPipelineForText2Image, jobs: int, steps: int) -> float:
    """N single-image calls, as a client of diffusers would make them."""
    start = time.perf_counter()
    for seed in range(jobs):
        pipe(
            "a red circle",
            width=64,
            height=64,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pil",
        )
    return time.perf_counter() - start


def service_seconds(stack: LocalStack, jobs: int, steps: int) -> float:
    """N jobs through the service; from the first submit to the last finish."""
    start = datetime.now().astimezone()
    ids = [
        stack.submit({"prompt": "a red circle", "num_inference_steps": steps, "seed": seed})["id"]
        for seed in range(jobs)
    ]
    finished = [stack.wait(job_id, timeout=600, poll=0.25) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in finished)
    last = max(datetime.fromisoformat(job["finished_at"]) for job in finished)
    return (last - start).total_seconds()


def main() -> None:
    """Run the rounds and print a table and the median ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    cache = Path(".cache/models").resolve()
    folder = ensure_tiny_model(cache)
    pipe = AutoPipelineForText2Image.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    raw_seconds(pipe, 2, args.steps)  # warm-up, as the worker does at start

    ratios = []
    print(f"{args.jobs} jobs, tiny-sd 64x64, {args.steps} steps, CPU, one worker")
    print("| round | raw s | service s | raw ms/job | service ms/job | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir, LocalStack(Path(workdir), cache) as stack:
        stack.start_api()
        stack.start_worker()
        for round_ in range(1, args.rounds + 1):
            raw = raw_seconds(pipe, args.jobs, args.steps)
            service = service_seconds(stack, args.jobs, args.steps)
            ratios.append(raw / service)
            print(
                f"| {round_} | {raw:.2f} | {service:.2f} | {1000 * raw / args.jobs:.0f} | "
                f"{1000 * service / args.jobs:.0f} | {raw / service:.3f} |",
                flush=True,
            )
    print(
        f"\nservice/raw throughput ratio (median of {args.rounds}): {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
