"""Who runs next, measured: fair share against a noisy neighbour (and FIFO in the same run), a
`high` job into a full engine, ETAs against the truth, and weighted shares, in one run.

    python -m bench.policy [--quick] [--seed S] [--window SECONDS]

One worker on tiny-sd at 64x64 (its defaults), an API with five tenants' keys and
`LDM_TENANTS` giving `heavy` weight 2 and only `hi` the right to ask for `high`; every job's
times are the service's own (`created_at`, `started_at`, `finished_at`, read from Redis).
1. Noisy neighbour: A POSTs 120 jobs (20 steps, guidance 7.5), one second later B POSTs 3.
   B's latency (last finish - its submit) over its solo time (one such job in the idle
   service), and when B's last job finished as a fraction of A's backlog (from A's first
   submit to its last finish). The same again with B sending A's key: first come, first
   served within one tenant, the baseline. Rounds alternate which goes first; medians.
2. A `high` job into a full engine: 48 normal jobs of 40 steps fill it; once they run, `hi`
   POSTs one high job of 20 steps. Its start delay (`started_at - created_at`) over the full
   engine's step time (the normal jobs' run time / 40), its latency over its solo time; every
   job seen `paused` is run again alone afterwards and its image compared pixel by pixel.
3. ETAs: an open-loop Poisson load of `bench.mixed`'s mix at half the service's measured
   rate; each job's `eta_seconds` as its 202 answer gave it against its true
   `finished_at - created_at`; the median absolute error relative to the truth (the first
   fifth of the jobs, before the pace settles, left out).
4. Weighted shares: `heavy` (weight 2) and `light` (weight 1) flood together with more jobs
   than a window can serve; the jobs of each started within the window (after 5 s of
   warm-up), heavy over light. Last, as its floods are left queued when the stack stops.
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.core.jobs import Job, JobStatus
from app.core.store import JobStore
from bench.mixed import body, mix
from bench.tenant_jobs import KEYS, alone, fields, image, latency, post, run_s, wait_all
from scripts.stack import TERMINAL, LocalStack
from worker.libraries import route_library_logs

POLICY = {"heavy": {"weight": 2}, "hi": {"max_priority": "high"}, "*": {"max_priority": "normal"}}
WARM_UP_S = 5.0


def neighbour(
    stack: LocalStack, store: JobStore, rng: random.Random, n: int, b_tenant: str
) -> dict[str, float]:
    """A floods n jobs, B sends 3 a second later (as `b_tenant`)."""
    plan = [(0.0, "flood", body(rng, 20, 7.5)) for _ in range(n)]
    plan += [(1.0, b_tenant, body(rng, 20, 7.5)) for _ in range(3)]
    start = time.time()
    jobs = wait_all(store, [answer["id"] for answer in post(stack, plan)])
    a, b = jobs[:n], jobs[n:]
    a_end = max(job.finished_at.timestamp() for job in a)
    b_end = max(job.finished_at.timestamp() for job in b)
    b_start = min(job.created_at.timestamp() for job in b)
    b_wait = max((job.started_at - job.created_at).total_seconds() for job in b)
    return {
        "b_latency_s": b_end - b_start,
        # The policy's own promise: a flood delays B's start by about one of A's job runs.
        "b_wait_over_a_run": b_wait / statistics.median(run_s(job) for job in a),
        "b_fraction": (b_end - start) / (a_end - start),
        "backlog_s": a_end - start,
        "jobs_per_s": n / (a_end - start),
    }


def wait_full(store: JobStore, ids: list[str]) -> None:
    """Until the engine is full: jobs wait, and as many run as 100 ms ago (a worker admits
    at each step boundary, a few ms apart here)."""
    counts: list[int] = []
    while len(counts) < 6 or len(set(counts[-6:])) > 1:
        statuses = [status for (status,) in fields(store, ids, "status")]
        assert JobStatus.QUEUED in statuses, "the flood ran out before the engine filled"
        counts.append(statuses.count(JobStatus.RUNNING))
        time.sleep(0.02)


def preemption(
    stack: LocalStack, store: JobStore, rng: random.Random, solo: float, trials: int
) -> dict:
    """High jobs, one after another, into an engine kept full of normal ones; what each
    waited and took (medians), and whether the jobs they paused kept their images."""
    # More jobs than the largest budget a worker measures (4x the model's batch of 16).
    plan = [(0.0, "flood", body(rng, 40, 7.5)) for _ in range(96 * trials)]
    requests = {a["id"]: job for a, (_, _, job) in zip(post(stack, plan), plan, strict=True)}
    normal = list(requests)
    paused: set[str] = set()
    highs: list[Job] = []
    for _ in range(trials):
        wait_full(store, normal)
        request = body(rng, 20, 7.5) | {"priority": "high"}
        (high_id,) = [answer["id"] for answer in post(stack, [(0.0, "hi", request)])]
        while fields(store, [high_id], "status")[0][0] not in TERMINAL:
            # A pause lasts the high job's whole run: a look every 20 ms sees each one.
            for job_id, (status, flag) in zip(
                normal, fields(store, normal, "status", "paused"), strict=True
            ):
                if status == JobStatus.RUNNING and flag == "1":
                    paused.add(job_id)
            time.sleep(0.02)
        highs.append(store.get(high_id))
    ran = wait_all(store, normal)
    steps_s = [
        (j.finished_at - j.started_at).total_seconds() / 40 for j in ran if j.id not in paused
    ]
    step_s = statistics.median(steps_s)
    diffs = []
    for job in (j for j in ran if j.id in paused):
        again = alone(stack, store, "flood", requests[job.id])
        pixels = np.asarray(image(stack, "flood", job), np.int16)
        diffs.append(int(np.abs(pixels - np.asarray(image(stack, "flood", again), np.int16)).max()))
    delay = statistics.median((h.started_at - h.created_at).total_seconds() for h in highs)
    took = statistics.median(latency(h) for h in highs)
    return {
        "trials": trials,
        "start_delay_s": delay,
        "full_step_s": step_s,
        "start_delay_steps": delay / step_s,
        "latency_s": took,
        "latency_over_solo": took / solo,
        "paused_jobs": len(paused),
        "paused_max_pixel_diff": max(diffs) if diffs else None,
    }


def etas(stack: LocalStack, store: JobStore, rng: random.Random, rate: float, duration: float):
    """Poisson arrivals of the mix; each 202's eta against the job's true time."""
    plan, at = [], rng.expovariate(rate)
    while at < duration:
        plan.append((at, "neighbour", mix(rng, 1)[0]))
        at += rng.expovariate(rate)
    answers = post(stack, plan)
    jobs = wait_all(store, [answer["id"] for answer in answers])
    errors = [
        abs(answer["eta_seconds"] - latency(job)) / latency(job)
        for answer, job in list(zip(answers, jobs, strict=True))[len(jobs) // 5 :]
        if answer["eta_seconds"] is not None
    ]
    return {"jobs": len(jobs), "rate": rate, "eta_error_median": statistics.median(errors)}


def shares(stack: LocalStack, store: JobStore, rng: random.Random, rate: float, window: float):
    """Heavy (weight 2) and light flood together; jobs each started within the window."""
    # Each tenant more than the whole service could serve in the time (`rate` is 20-step jobs'):
    # a flood that ran dry would hand its share to the other.
    n = int(rate * (WARM_UP_S + window)) + 16
    plan = [(0.0, tenant, body(rng, 40, 7.5)) for _ in range(n) for tenant in ("heavy", "light")]
    start = time.time()
    answers = post(stack, plan)
    time.sleep(max(0.0, start + WARM_UP_S + window - time.time()))
    lo, hi = start + WARM_UP_S, start + WARM_UP_S + window
    started, left = {"heavy": 0, "light": 0}, {"heavy": 0, "light": 0}
    for (_, tenant, _), answer in zip(plan, answers, strict=True):
        at = store.get(answer["id"]).started_at
        started[tenant] += at is not None and lo <= at.timestamp() < hi
        left[tenant] += at is None
    assert all(left.values()), f"a flood ran dry within the window: {left}"
    return started | {"window_s": window, "ratio": started["heavy"] / max(started["light"], 1)}


def measure(quick: bool, seed: int, window: float) -> dict[str, Any]:
    """Every scenario against one stack; `quick` shrinks them to check the bench runs."""
    cache = Path(".cache/models").resolve()
    rng = random.Random(seed)
    keys = ",".join(f"{t}:{k}" for t, k in KEYS.items())
    r: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir, LocalStack(Path(workdir), cache) as stack:
        stack.start_api(
            LDM_MAX_QUEUE_LENGTH="100000", LDM_API_KEYS=keys, LDM_TENANTS=json.dumps(POLICY)
        )
        stack.start_worker(LDM_TENANTS=json.dumps(POLICY))
        store = JobStore(stack.redis, 3600)
        alone(stack, store, "neighbour", body(rng, 2, 7.5))  # warm-up
        r["solo_s"] = latency(alone(stack, store, "neighbour", body(rng, 20, 7.5)))
        print(f"solo (20 steps, guidance 7.5): {r['solo_s']:.3f} s", flush=True)
        n = 40 if quick else 120
        rounds: dict[str, list] = {"fair": [], "fifo": []}
        for i in range(1 if quick else 2):
            for name in ("fair", "fifo") if i % 2 == 0 else ("fifo", "fair"):
                row = neighbour(stack, store, rng, n, "neighbour" if name == "fair" else "flood")
                rounds[name].append(row)
                print(f"noisy neighbour, {name}: " + json.dumps(row), flush=True)
        for name, rows in rounds.items():
            r[name] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
            r[name]["b_over_solo"] = r[name]["b_latency_s"] / r["solo_s"]
        rate = statistics.median(row["jobs_per_s"] for rows in rounds.values() for row in rows)
        r["preemption"] = preemption(stack, store, rng, r["solo_s"], 1 if quick else 3)
        print("high job into a full engine: " + json.dumps(r["preemption"]), flush=True)
        r["eta"] = etas(stack, store, rng, rate / 2, 8.0 if quick else 40.0)
        print("ETAs: " + json.dumps(r["eta"]), flush=True)
        r["shares"] = shares(stack, store, rng, rate, window)
        print("weighted shares: " + json.dumps(r["shares"]), flush=True)
    return r


def report(r: dict[str, Any]) -> str:
    """The figures against the issue's targets, as a markdown table."""
    fair, fifo, pre = r["fair"], r["fifo"], r["preemption"]
    allowed = max(2 * r["solo_s"], 0.15 * fair["backlog_s"])
    rows = [
        ("Noisy neighbour, fair: B's latency / solo", f"{fair['b_over_solo']:.1f}", ""),
        (
            "Noisy neighbour, fair: B done at fraction of A's backlog",
            f"{fair['b_fraction']:.2f}",
            "",
        ),
        (
            "Noisy neighbour, fair: B's latency, s (target: max(2x solo, 0.15 backlog))",
            f"{fair['b_latency_s']:.2f}",
            f"<= {allowed:.2f}",
        ),
        (
            "Noisy neighbour, FIFO: B done at fraction of A's backlog",
            f"{fifo['b_fraction']:.2f}",
            "",
        ),
        (
            "Weighted shares heavy:light (2:1) over the window",
            f"{r['shares']['ratio']:.2f}",
            "1.8-2.2",
        ),
        (
            "High job: start delay / full engine's step time",
            f"{pre['start_delay_steps']:.2f}",
            "<= 1",
        ),
        ("High job: latency / solo", f"{pre['latency_over_solo']:.2f}", "<= 1.5"),
        (
            f"High job: paused jobs ({pre['paused_jobs']}), max pixel diff from a solo rerun",
            str(pre["paused_max_pixel_diff"]),
            "<= 2 (a batched job's bound)",
        ),
        ("ETA: median absolute error / truth", f"{r['eta']['eta_error_median']:.2f}", "<= 0.25"),
    ]
    lines = ["| figure | value | target |", "|---|---:|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main() -> None:
    """Run every scenario and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run: check, do not quote")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--window", type=float, default=None, help="shares' window, default 60 s")
    args = parser.parse_args()
    route_library_logs()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    r = measure(args.quick, args.seed, args.window or (6.0 if args.quick else 60.0))
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    print(
        f"tiny-sd 64x64, CPU ({machine}), one worker, {time.monotonic() - started:.0f} s, "
        f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"command: python -m bench.policy {' '.join(sys.argv[1:])}".rstrip())
    print(report(r))


if __name__ == "__main__":
    main()
