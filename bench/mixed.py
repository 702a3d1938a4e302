"""A mixed tiny-sd load (steps 8/20/40, guidance 1/5/7.5) against raw diffusers, in one run.

    python -m bench.mixed [--quick] [--rounds N] [--out PATH] [--seed S]

tiny-sd at 64x64, one worker on its defaults, one image a job, prompts drawn from a short list;
every draw comes from `--seed`. Each figure is a ratio against a baseline timed in this run:
1. Raw batched limit: diffusers in this process, alike jobs (same steps and guidance) in calls
   of 16; each (steps, guidance) class is timed once a round and the mix's jobs/s follows.
2. Shuffled burst: N jobs of the mix POSTed at once; N / (last `finished_at` - first submit),
   over (1) for the same jobs. Rounds interleave (1) and the service, with a raw probe call
   (16 alike jobs) before, between and after; a round whose probes differ by over 25% (a
   neighbour's burst on a shared machine) is run again, up to twice the rounds in all (not
   with --quick). The median over steady rounds is quoted (over all rounds if none was).
3. Open-loop Poisson load at 0.7 of (1): seeded exponential gaps, each job POSTed at its
   arrival whatever has finished (asyncio). Nothing is polled while it runs; afterwards each
   job is waited for and read. Kept-up: served over offered jobs/s, from the 5%-95% spans of
   the jobs' own `created_at` and `finished_at` (so latency at both ends cancels out).
   Latency: `finished_at - created_at`; slowdown: latency over the job's solo time, the same
   latency of one job of its class alone in the idle service (measured once per class).
   A probe call before and after each load gives its drift.
4. Homogeneous burst (steps 20, guidance 7.5) over raw batch-16 calls, per round (median);
   one job at a time (submit, wait, next) over raw single calls, interleaved pairs (median).
5. p50/p95 latency against offered load (0.3/0.5/0.7/0.9 of (1); --quick: 0.7 only), a PNG.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from diffusers import AutoPipelineForText2Image

from bench.mixed_plot import plot
from bench.throughput import load_raw
from scripts.stack import LocalStack
from worker.libraries import route_library_logs

STEPS = (8, 20, 40)
GUIDANCE = (1.0, 5.0, 7.5)
CLASSES = [(s, g) for s in STEPS for g in GUIDANCE]
PROMPTS = (
    "a red circle",
    "a lighthouse on a cliff at dusk, oil painting",
    "small yellow triangle",
    "a cat wearing a tiny hat",
    "a city street in the rain, neon lights, photograph",
    "blue square",
)
BATCH, SIZE = 16, 64
SOLO_CLASS = (20, 7.5)  # the homogeneous and one-at-a-time jobs
STEADY = 1.25  # a round counts when its raw probe calls agree within this factor
# Key: what the table says, the target's sense (">=", "<=" or "" for none) and the target.
FIGURES: dict[str, tuple[str, str, float]] = {
    "raw_limit_per_s": ("1. Raw batched limit (alike jobs, diffusers calls of 16), jobs/s", "", 0),
    "burst_over_raw": ("2. Shuffled burst / raw limit (median of steady rounds)", ">=", 0.85),
    "kept_up": ("3. Poisson at 0.7: kept up (served / offered jobs/s)", ">=", 0.98),
    "p50_latency_s": ("3. Poisson at 0.7: p50 latency, s", "", 0),
    "p95_latency_s": ("3. Poisson at 0.7: p95 latency, s", "<=", 2.0),
    "p95_slowdown": ("3. Poisson at 0.7: p95 slowdown (latency / solo latency)", "<=", 8.0),
    "homogeneous_over_raw": ("4. Homogeneous burst / raw batch-16 calls", ">=", 0.95),
    "one_at_a_time_over_raw": ("4. One job at a time / raw single calls", ">=", 0.98),
}


def body(rng: random.Random, steps: int, guidance: float) -> dict[str, Any]:
    """One job's request."""
    return {
        "prompt": rng.choice(PROMPTS),
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "seed": rng.randrange(2**31),
        "width": SIZE,
        "height": SIZE,
    }


def mix(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """N jobs of the mix: steps and guidance drawn independently, uniformly."""
    return [body(rng, rng.choice(STEPS), rng.choice(GUIDANCE)) for _ in range(n)]


def kind(job: dict[str, Any]) -> tuple[int, float]:
    return job["num_inference_steps"], job["guidance_scale"]


def raw_call(pipe: AutoPipelineForText2Image, jobs: list[dict[str, Any]]) -> float:
    """Seconds of one diffusers call over alike jobs, each image with its own generator."""
    steps, guidance = kind(jobs[0])
    start = time.perf_counter()
    pipe(
        [job["prompt"] for job in jobs],
        width=SIZE,
        height=SIZE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=[torch.Generator("cpu").manual_seed(job["seed"]) for job in jobs],
        output_type="pil",
    )
    return time.perf_counter() - start


def class_costs(pipe: AutoPipelineForText2Image, rng: random.Random) -> dict[tuple, float]:
    """Seconds per job of each class in a call of BATCH alike jobs."""
    return {c: raw_call(pipe, [body(rng, *c) for _ in range(BATCH)]) / BATCH for c in CLASSES}


def seconds(job: dict[str, Any], field: str) -> float:
    return datetime.fromisoformat(job[field]).timestamp()


async def _offer(base_url: str, plan: list[tuple[float, dict[str, Any]]]) -> list[str]:
    """POST each job at its time (seconds from now) without waiting for earlier POSTs."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        loop = asyncio.get_running_loop()
        start, posts = loop.time(), []
        for at, job in plan:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            posts.append(asyncio.create_task(client.post("/v1/jobs", json=job)))
        responses = await asyncio.gather(*posts)
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses][:3]
    return [r.json()["id"] for r in responses]


def offer(stack: LocalStack, plan: list[tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run the plan, then wait for every job (polling one at a time, slowly); the records."""
    ids = asyncio.run(_offer(str(stack.http.base_url), plan))
    done = [stack.wait(job_id, timeout=900, poll=0.5) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in done), "a bench job failed"
    return done


def burst(stack: LocalStack, jobs: list[dict[str, Any]]) -> float:
    """Jobs/s of a burst: N / (last finish - first submit)."""
    start = time.time()
    done = offer(stack, [(0.0, job) for job in jobs])
    return len(jobs) / (max(seconds(job, "finished_at") for job in done) - start)


def alone(stack: LocalStack, job: dict[str, Any]) -> float:
    """finished_at - created_at of one job in the idle service."""
    record = stack.wait(stack.submit(job)["id"], timeout=120, poll=0.2)
    assert record["status"] == "succeeded", record
    return seconds(record, "finished_at") - seconds(record, "created_at")


def poisson(
    stack: LocalStack, rate: float, duration: float, rng: random.Random, solo: dict
) -> dict[str, Any]:
    """An open-loop Poisson load of the mix at `rate` jobs/s for `duration` s."""
    plan, at = [], rng.expovariate(rate)
    while at < duration:
        plan.append((at, mix(rng, 1)[0]))
        at += rng.expovariate(rate)
    done = offer(stack, plan)
    created = [seconds(job, "created_at") for job in done]
    finished = [seconds(job, "finished_at") for job in done]
    latency = [f - c for c, f in zip(created, finished, strict=True)]
    slowdown = [lat / solo[kind(job)] for lat, (_, job) in zip(latency, plan, strict=True)]
    arrivals, ends = np.quantile(created, [0.05, 0.95]), np.quantile(finished, [0.05, 0.95])
    return {
        "rate": rate,
        "jobs": len(plan),
        "offered_per_s": len(plan) / (max(created) - min(created)),
        "kept_up": float((arrivals[1] - arrivals[0]) / (ends[1] - ends[0])),
        "p50_latency_s": float(np.percentile(latency, 50)),
        "p95_latency_s": float(np.percentile(latency, 95)),
        "p95_slowdown": float(np.percentile(slowdown, 95)),
    }


def one_round(
    pipe: AutoPipelineForText2Image, stack: LocalStack, rng: random.Random, same: list[dict]
) -> dict[str, Any]:
    """Raw limit, mixed burst, raw batch-16 calls, homogeneous burst; each raw figure timed
    right before its service figure, and a raw probe call before, between and after."""
    n, probes = len(same), [raw_call(pipe, same[:BATCH])]
    cost = class_costs(pipe, rng)
    jobs = mix(rng, n)
    raw_limit = n / sum(cost[kind(job)] for job in jobs)
    service = burst(stack, jobs)
    probes.append(raw_call(pipe, same[:BATCH]))
    raw_same = n / sum(raw_call(pipe, same[i : i + BATCH]) for i in range(0, n, BATCH))
    service_same = burst(stack, same)
    probes.append(raw_call(pipe, same[:BATCH]))
    return {
        # The whole mix's limit (every class equally often): the loads' baseline.
        "raw_limit_per_s": len(CLASSES) / sum(cost.values()),
        "burst_raw_per_s": raw_limit,
        "burst_per_s": service,
        "burst_over_raw": service / raw_limit,
        "homogeneous_raw_per_s": raw_same,
        "homogeneous_per_s": service_same,
        "homogeneous_over_raw": service_same / raw_same,
        "drift": max(probes) / min(probes),
        "steady": max(probes) / min(probes) <= STEADY,
    }


def measure(
    quick: bool, rounds: int, seed: int, worker_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Every figure; `quick` shrinks them to check the bench runs, not to quote."""
    n, duration = (16, 6.0) if quick else (48, 30.0)
    cache = Path(".cache/models").resolve()
    pipe = load_raw(cache)
    rng = random.Random(seed)
    r: dict[str, Any] = {"jobs": n, "rounds": [], "solo": "service, one job alone"}
    with tempfile.TemporaryDirectory() as workdir, LocalStack(Path(workdir), cache) as stack:
        stack.start_api(LDM_MAX_QUEUE_LENGTH="100000")
        stack.start_worker(**(worker_env or {}))
        alone(stack, body(rng, 2, 7.5))  # warm-up
        solo = {c: alone(stack, body(rng, *c)) for c in CLASSES}
        r["solo_s"] = {f"{s} steps, guidance {g}": t for (s, g), t in solo.items()}
        print("solo s: " + ", ".join(f"{k}: {v:.2f}" for k, v in r["solo_s"].items()), flush=True)
        same = [body(rng, *SOLO_CLASS) for _ in range(n)]
        # A neighbour's burst moves the raw probes: such rounds run again (not in a quick run).
        most = rounds if quick else 2 * rounds
        while len(r["rounds"]) < most and sum(row["steady"] for row in r["rounds"]) < rounds:
            r["rounds"].append(one_round(pipe, stack, rng, same))
            print(f"round {len(r['rounds'])}: " + json.dumps(r["rounds"][-1]), flush=True)
        kept = [row for row in r["rounds"] if row["steady"]]
        r["steady_rounds"] = len(kept)
        for key in ("raw_limit_per_s", "burst_over_raw", "homogeneous_over_raw"):
            r[key] = statistics.median(row[key] for row in kept or r["rounds"])
        pairs = [(raw_call(pipe, [job]), alone(stack, job)) for job in same[: 4 if quick else 10]]
        r["one_at_a_time_pairs_s"] = pairs
        r["one_at_a_time_over_raw"] = statistics.median(a / b for a, b in pairs)
        print(f"one at a time: {r['one_at_a_time_over_raw']:.3f}", flush=True)
        r["loads"] = []
        for load in (0.7,) if quick else (0.3, 0.5, 0.7, 0.9):
            rate = load * r["raw_limit_per_s"]
            print(f"Poisson load {load} ({rate:.1f} jobs/s) ...", flush=True)
            before = raw_call(pipe, same[:BATCH])
            row = {"load": load} | poisson(stack, rate, duration, rng, solo)
            after = raw_call(pipe, same[:BATCH])
            r["loads"].append(row | {"drift": max(before, after) / min(before, after)})
            print(json.dumps(r["loads"][-1]), flush=True)
    at_07 = next(row for row in r["loads"] if row["load"] == 0.7)
    r |= {k: at_07[k] for k in ("kept_up", "p50_latency_s", "p95_latency_s", "p95_slowdown")}
    return r


def report(r: dict[str, Any]) -> str:
    """The figures as a markdown table: value, target, pass; then the loads."""
    lines = [
        f"{r['machine']} (1-min load average {r['load_average'][0]} at start, "
        f"{r['load_average'][1]} at end); tiny-sd 64x64, one worker, bursts of {r['jobs']}, "
        f"{r['steady_rounds']} of {len(r['rounds'])} rounds steady; {r['when']}; "
        f"{r['seconds']:.0f} s; `{r['command']}`",
        "",
        "| figure | target | measured | pass |",
        "|---|---|---|---|",
    ]
    for f in r["figures"].values():
        goal = f"{f['sense']} {f['target']:g}" if f["sense"] else ""
        verdict = {True: "yes", False: "no"}.get(f["pass"], "")
        lines.append(f"| {f['name']} | {goal} | {f['value']:.3f} | {verdict} |")
    lines += ["", "| load | offered jobs/s | kept up | p50 s | p95 s | p95 slowdown | drift |"]
    lines.append("|---|---|---|---|---|---|---|")
    lines += [
        f"| {row['load']} | {row['offered_per_s']:.1f} | {row['kept_up']:.3f} | "
        f"{row['p50_latency_s']:.2f} | {row['p95_latency_s']:.2f} | "
        f"{row['p95_slowdown']:.1f} | {row['drift']:.2f} |"
        for row in r["loads"]
    ]
    return "\n".join(lines + ["", f"5. Latency vs load: {r['plot']}"])


def main() -> None:
    """Run, print the table, write PATH.md, PATH.json and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run: check, do not quote")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 1)")
    parser.add_argument("--out", type=Path, default=Path("bench/mixed"), help="PATH or folder")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="LDM_X=V",
        help="a setting for the worker only, e.g. LDM_CPU_THREADS=1 (repeatable)",
    )
    args = parser.parse_args()
    route_library_logs()  # no progress bars from the model libraries
    out = args.out / "mixed" if args.out.is_dir() else args.out.with_suffix("")
    started, load_before = time.monotonic(), os.getloadavg()[0]
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    r = measure(args.quick, args.rounds or (1 if args.quick else 5), args.seed, worker_env)
    r |= {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, CPU only",
        "command": " ".join(["python -m bench.mixed", *sys.argv[1:]]),
        "seconds": round(time.monotonic() - started, 1),
        # Others' work on a shared machine: the ratios hold up better than the rates.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    png = out.parent / "latency-vs-load.png" if args.quick else Path("docs/latency-vs-load.png")
    plot(r["loads"], r["raw_limit_per_s"], r["machine"], png)
    r["plot"] = str(png)
    r["figures"] = {
        key: {"name": name, "value": r[key], "sense": sense, "target": target or None}
        | {"pass": None if not sense else r[key] >= target if sense == ">=" else r[key] <= target}
        for key, (name, sense, target) in FIGURES.items()
    }
    table = report(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(table, flush=True)


if __name__ == "__main__":
    main()
