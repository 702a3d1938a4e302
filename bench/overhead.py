"""Per-step engine overhead at a full batch: what a worker spends per step beyond the forward.

    python -m bench.overhead [--jobs 16] [--rounds 4] [--steps 20]

Rounds of `--jobs` jobs are queued on a real Redis, then this process serves them with the
worker's own loop (`worker.main.serve`: claims at every step boundary, the engine's
admission, each job's scheduler step, progress and cancel flags for the active set, retiring,
PNG encoding and storage on the finishing thread, RQ's registries). Every denoiser forward is
timed; at a full batch a step's period runs from one forward's start to the next's, and its
overhead is the part of that period outside the forward. Steps where jobs joined or left
(text encoding, VAE decode) are reported apart: they are per job, not per step.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis import Redis

from app.core.jobs import JobCreate, new_job_id
from app.core.models import model_spec
from app.core.queue import JobQueue
from app.core.resolve import resolve_request
from app.core.settings import Settings
from app.core.store import JobStore
from bench.dispatch import percentile
from scripts.procs import free_port, start_redis, stop
from worker.libraries import route_library_logs
from worker.main import serve
from worker.pipeline import ResidentPipeline


def _timed_forwards(pipeline: ResidentPipeline) -> list[tuple[float, float, int]]:
    """Wrap the family's forward: (start, end, jobs) of every call."""
    family = pipeline.family
    real = family.forward
    calls: list[tuple[float, float, int]] = []

    def forward(states: list[Any]) -> list[Any]:
        start = time.perf_counter()
        out = real(states)
        calls.append((start, time.perf_counter(), len(states)))
        return out

    family.forward = forward  # type: ignore[method-assign]
    return calls


def measure(jobs: int = 16, rounds: int = 4, steps: int = 20) -> dict[str, Any]:
    """Serve `rounds` bursts of `jobs` alike jobs; the per-step overhead at a full batch."""
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        redis_proc = start_redis(port, Path(workdir))
        try:
            settings = Settings(
                model="tiny-sd",
                redis_url=f"redis://127.0.0.1:{port}/0",
                storage_url=(Path(workdir) / "images").as_uri(),
                model_cache=Path(".cache/models").resolve(),
                device="cpu",
                max_batch=jobs,
                log_level="WARNING",
            )
            spec = model_spec(settings)
            pipeline = ResidentPipeline.load(settings)
            pipeline.warm_up(spec, settings)
            calls = _timed_forwards(pipeline)
            redis = Redis.from_url(settings.redis_url)
            queue = JobQueue(redis, JobStore(redis, settings.result_ttl), settings.job_timeout)
            request = JobCreate(prompt="a red circle", num_inference_steps=steps, seed=0)
            params = resolve_request(request, spec, settings)
            for seed in range(jobs * rounds):
                queue.submit(new_job_id(), params.model_copy(update={"seed": seed}), "bench")
            serve(settings, spec, pipeline, redis, burst=True)
            redis.close()
        finally:
            stop(redis_proc)
    steady, boundary = [], []
    for (start, end, size), (next_start, _, next_size) in zip(calls, calls[1:], strict=False):
        if size != jobs:
            continue
        share = (next_start - start - (end - start)) / (next_start - start)
        # A period ending where the batch changes holds a retire (decode) or an admission.
        (steady if next_size == size else boundary).append(share)
    forwards = [end - start for start, end, size in calls if size == jobs]
    return {
        "jobs": jobs,
        "rounds": rounds,
        "steps": steps,
        "forwards": len(calls),
        "step_overhead_p50": percentile(steady, 0.5),
        "step_overhead_p90": percentile(steady, 0.9),
        "step_overhead_mean": statistics.fmean(steady),
        "boundary_overhead_p50": percentile(boundary, 0.5) if boundary else None,
        "forward_ms": 1000 * statistics.median(forwards),
    }


def main() -> None:
    """Print the overhead figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    route_library_logs()  # no progress bars from the model libraries
    r = measure(args.jobs, args.rounds, args.steps)
    print(f"tiny-sd 64x64, {r['jobs']} jobs a batch x {r['rounds']}, {r['steps']} steps, CPU")
    print(
        f"per-step overhead at a full batch: p50 {100 * r['step_overhead_p50']:.1f}% "
        f"(p90 {100 * r['step_overhead_p90']:.1f}%, mean {100 * r['step_overhead_mean']:.1f}%) "
        f"of a step; forward {r['forward_ms']:.1f} ms; {r['forwards']} forwards"
    )


if __name__ == "__main__":
    main()
