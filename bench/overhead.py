"""Per-job overhead of a busy worker: what it spends on each job beyond the pipeline call.

    python -m bench.overhead [--jobs 200] [--steps 20]

A burst of jobs is queued on a real Redis, then this process serves them with the worker's
own code (`worker.main.serve`: RQ, claims, progress, PNG encoding, storage writes, final
state) with batching off, timing every pipeline call and every step callback. On a
saturated worker a job's service time runs from the end of one pipeline call to the end of
the next, so its overhead is the gap between the calls plus the time spent in its step
callbacks. Pipeline calls are also compared with raw calls in this process, alternated, to
show what the worker's background threads cost the denoising itself. With `--max-batch`,
a call's overhead is shared by the jobs it ran.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from PIL import Image
from redis import Redis

from app.core.jobs import JobCreate, JobParams, new_job_id
from app.core.models import model_spec
from app.core.queue import JobQueue
from app.core.resolve import resolve_request
from app.core.settings import Settings
from app.core.store import JobStore
from bench.dispatch import percentile
from scripts.procs import free_port, start_redis, stop
from worker import tasks
from worker.libraries import route_library_logs
from worker.main import serve
from worker.pipeline import ResidentPipeline, StepCallback


class TimedPipeline(ResidentPipeline):
    """The resident pipeline, recording when each call starts and ends and its callback time."""

    def __init__(self, inner: ResidentPipeline) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls: list[tuple[float, float, float, int]] = []

    def generate_batch(
        self,
        jobs: Sequence[tuple[JobParams, Image.Image | None]],
        on_step: StepCallback | None = None,
    ) -> list[list[Image.Image]]:
        in_callbacks = 0.0

        def timed(step: int) -> None:
            nonlocal in_callbacks
            start = time.perf_counter()
            try:
                if on_step is not None:
                    on_step(step)
            finally:
                in_callbacks += time.perf_counter() - start

        start = time.perf_counter()
        images = super().generate_batch(jobs, timed)
        self.calls.append((start, time.perf_counter(), in_callbacks, len(jobs)))
        return images


def time_tasks() -> list[tuple[float, float]]:
    """From now on, when each RQ task (`worker.tasks.run_job`) is entered and left."""
    spans: list[tuple[float, float]] = []
    run_job = tasks.run_job

    def timed(job_id: str, params: dict) -> None:
        entered = time.perf_counter()
        try:
            run_job(job_id, params)
        finally:
            spans.append((entered, time.perf_counter()))

    tasks.run_job = timed  # RQ finds its task by dotted path, at each job
    return spans


def measure(jobs: int = 200, steps: int = 20, max_batch: int = 1) -> dict[str, Any]:
    """Serve a burst of `jobs` in this process; overhead per job in ms (p50/p99/mean).

    With batching, a call's overhead is shared by the jobs it ran."""
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        redis_proc = start_redis(port, Path(workdir) / "redis", durable=True)
        try:
            settings = Settings(
                model="tiny-sd",
                redis_url=f"redis://127.0.0.1:{port}/0",
                storage_url=(Path(workdir) / "images").as_uri(),
                model_cache=Path(".cache/models").resolve(),
                device="cpu",
                max_batch=max_batch,
                log_level="WARNING",
            )
            spec = model_spec(settings)
            pipeline = TimedPipeline(ResidentPipeline.load(settings))
            pipeline.warm_up(spec, settings)
            redis = Redis.from_url(settings.redis_url)
            queue = JobQueue(redis, JobStore(redis, settings.result_ttl), settings.job_timeout)
            request = JobCreate(prompt="a red circle", num_inference_steps=steps, seed=0)
            params = resolve_request(request, spec, settings)
            for seed in range(jobs):
                queue.submit(new_job_id(), params.model_copy(update={"seed": seed}), "bench")
            warm_calls = len(pipeline.calls)
            tasks_run = time_tasks()
            serve(settings, spec, pipeline, redis, burst=True)
            served = pipeline.calls[warm_calls:]
            raw = []
            for _ in range(20):
                start = time.perf_counter()
                ResidentPipeline.generate(pipeline, params)
                raw.append(time.perf_counter() - start)
            redis.close()
        finally:
            stop(redis_proc)
    calls = served[5:]  # the first calls pay for RQ's start-up
    overheads = []
    for (_, previous_end, _, _), (start, _, in_callbacks, size) in pairwise(calls):
        overheads += [1000 * (start - previous_end + in_callbacks) / size] * size
    # RQ's own share: from one task's return to the next task's call.
    in_rq = [
        1000 * (entered - left) / size
        for (_, left), (entered, _), (*_, size) in zip(
            tasks_run[5:], tasks_run[6:], calls[1:], strict=False
        )
    ]
    inside = [(end - start - cb) / size for start, end, cb, size in calls]
    return {
        "jobs": jobs,
        "steps": steps,
        "max_batch": max_batch,
        "overhead_p50_ms": percentile(overheads, 0.5),
        "overhead_p99_ms": percentile(overheads, 0.99),
        "overhead_mean_ms": statistics.fmean(overheads),
        "rq_p50_ms": percentile(in_rq, 0.5),
        "pipeline_ms": 1000 * statistics.median(inside),
        "raw_pipeline_ms": 1000 * statistics.median(raw),
    }


def main() -> None:
    """Print the overhead figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=1, help="1: batching off")
    args = parser.parse_args()
    route_library_logs()  # no progress bars from the model libraries
    r = measure(args.jobs, args.steps, args.max_batch)
    print(f"{r['jobs']} jobs, tiny-sd 64x64, {r['steps']} steps, CPU, max batch {r['max_batch']}")
    print(
        f"per-job overhead: p50 {r['overhead_p50_ms']:.2f} ms, p99 {r['overhead_p99_ms']:.2f} ms,"
        f" mean {r['overhead_mean_ms']:.2f} ms, of which RQ between tasks p50 "
        f"{r['rq_p50_ms']:.2f} ms; pipeline time per job in the worker "
        f"{r['pipeline_ms']:.1f} ms (raw single call {r['raw_pipeline_ms']:.1f} ms, median)"
    )


if __name__ == "__main__":
    main()
