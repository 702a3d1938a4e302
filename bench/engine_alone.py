"""The step engine alone, in this process, against raw diffusers on bench.mixed's bursts.

    python -m bench.engine_alone [--rounds 3] [--jobs 48] [--seed 3]

No HTTP, Redis, storage or worker threads: the worker's own pipeline and engine (the budget it
measures at start) run a burst of the mix and a homogeneous burst (steps 20, guidance 7.5)
submitted at once, each timed right after raw diffusers' batched calls over the same jobs
(`bench.mixed`'s raw limit: alike jobs in calls of 16). What the engine costs against raw
here, the rest of the service costs on top in `bench.mixed`.
"""

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

from app.core.jobs import JobCreate
from app.core.models import model_spec
from app.core.resolve import resolve_request
from app.core.settings import Settings
from bench.mixed import BATCH, SOLO_CLASS, body, class_costs, kind, mix, raw_call
from bench.throughput import load_raw
from worker.engine.state import EngineRequest
from worker.libraries import route_library_logs
from worker.pipeline import ResidentPipeline


def engine_seconds(
    pipeline: ResidentPipeline, settings: Settings, jobs: list[dict[str, Any]]
) -> float:
    """Seconds for the engine to run `jobs`, all submitted at once, to their images."""
    spec = model_spec(settings)
    engine = pipeline.engine()
    for i, job in enumerate(jobs):
        engine.submit(EngineRequest(f"job-{i}", resolve_request(JobCreate(**job), spec, settings)))
    started = time.perf_counter()
    outcomes = engine.run()
    assert all(outcome.ok for outcome in outcomes)
    return time.perf_counter() - started


def measure(rounds: int, n: int, seed: int) -> dict[str, Any]:
    """Per round: raw then engine on a mixed burst, raw then engine on a homogeneous one."""
    cache = Path(".cache/models").resolve()
    settings = Settings(model="tiny-sd", model_cache=cache, device="cpu", log_level="WARNING")
    pipeline = ResidentPipeline.load(settings)
    pipeline.warm_up(model_spec(settings), settings)
    fit = pipeline.fit_budget(model_spec(settings), settings)
    pipe = load_raw(cache)
    rng = random.Random(seed)
    mixed, same = [], []
    for _ in range(rounds):
        jobs = mix(rng, n)
        cost = class_costs(pipe, rng)
        raw = sum(cost[kind(job)] for job in jobs)
        mixed.append(raw / engine_seconds(pipeline, settings, jobs))
        jobs = [body(rng, *SOLO_CLASS) for _ in range(n)]
        raw = sum(raw_call(pipe, jobs[i : i + BATCH]) for i in range(0, n, BATCH))
        same.append(raw / engine_seconds(pipeline, settings, jobs))
    return {
        "budget": fit.describe() if fit else None,
        "mixed_over_raw": mixed,
        "homogeneous_over_raw": same,
    }


def main() -> None:
    """Print each round's ratios (raw time over engine time: above 1, the engine is faster)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    route_library_logs()
    r = measure(args.rounds, args.jobs, args.seed)
    print(f"tiny-sd 64x64, CPU, bursts of {args.jobs}; budget: {r['budget']}")
    for name in ("mixed_over_raw", "homogeneous_over_raw"):
        ratios = r[name]
        print(
            f"{name}: median {statistics.median(ratios):.3f} "
            f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})"
        )


if __name__ == "__main__":
    main()
