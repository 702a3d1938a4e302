"""Check the queueing model of `bench.capacity` against the real service on this machine.

    python -m bench.capacity_check [--jobs 300] [--steps 20] [--load 0.7] [--seed 1]

1. Starts Redis, one API and two workers (tiny-sd on the CPU, OMP_NUM_THREADS=1 each).
2. Calibration: a burst of jobs keeps both workers busy; each job's service time is
   `finished_at - started_at`, and the throughput gives the per-job overhead outside it
   (RQ's bookkeeping, dequeue), which also occupies the worker.
3. Poisson arrivals at `load` x 2 workers / mean service time, pre-scheduled on a clock and
   submitted from a small thread pool so a slow POST never delays the next arrival; nothing
   polls meanwhile. Each job's wait is `started_at - created_at` (both written server-side).
4. Compares the measured wait p50/p95 with M/M/2 and with the simulation fed the measured
   service times, a priori (calibration) and a posteriori (the run's own service times, as an
   i.i.d. sample), and with a replay of the run's own trace (its arrival times and its service
   times in order) through the FIFO 2-server recursion.
5. Reports the CPU other processes on this machine used meanwhile, and Redis's cost: commands
   per job by command, Redis CPU per job (idle rate subtracted), a poll, LPOS on 1000 ids.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from redis import Redis

from bench.capacity import (
    ServiceTime,
    erlang_c,
    fifo_waits,
    mmc_wait_quantile,
    simulate,
)
from scripts.stack import TERMINAL, LocalStack
from worker.tiny_model import ensure_tiny_model

WORKERS = 2
Stats = dict[str, tuple[int, float]]


def ts(value: str) -> float:
    """An RFC 3339 timestamp as POSIX seconds."""
    return datetime.fromisoformat(value).timestamp()


def body(steps: int, seed: int) -> dict[str, Any]:
    """One tiny-sd job (64x64, the model's native size)."""
    return {"prompt": "a red circle", "num_inference_steps": steps, "seed": seed}


def q(values: Any, p: float) -> float:
    """The p-quantile."""
    return float(np.quantile(np.asarray(values, dtype=float), p))


# -- driving the service ---------------------------------------------------------------------


def wait_all(stack: LocalStack, ids: list[str], poll: float) -> tuple[list[dict], Counter]:
    """Poll only the unfinished jobs, every `poll` s; returns the jobs and the polls by status."""
    done: dict[str, dict] = {}
    polls: Counter = Counter()
    deadline = time.monotonic() + 600
    while True:
        for job_id in ids:
            if job_id not in done:
                job = stack.job(job_id)
                polls[job["status"]] += 1
                if job["status"] in TERMINAL:
                    done[job_id] = job
        if len(done) == len(ids):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(done)} jobs unfinished")
        time.sleep(poll)
    jobs = [done[job_id] for job_id in ids]
    bad = [job for job in jobs if job["status"] != "succeeded"]
    assert not bad, bad[:1]
    return jobs, polls


def service_times(jobs: list[dict]) -> list[float]:
    """finished_at - started_at per job."""
    return [ts(j["finished_at"]) - ts(j["started_at"]) for j in jobs]


def calibrate(stack: LocalStack, n: int, steps: int) -> tuple[list[float], float]:
    """A burst that keeps both workers busy: per-job service times and the overhead per job."""
    ids = [stack.submit(body(steps, seed))["id"] for seed in range(n)]
    jobs, _ = wait_all(stack, ids, poll=0.5)
    busy = service_times(jobs)
    first_start = min(ts(j["started_at"]) for j in jobs)
    ends = sorted(ts(j["finished_at"]) for j in jobs)
    # Both workers are busy from the first start to the second-to-last finish (the last job
    # may run alone): completions over that span give a worker's full cycle per job.
    cycle = WORKERS * (ends[-2] - first_start) / (n - 1)
    return busy, max(0.0, cycle - statistics.fmean(busy))


class Submitter:
    """Submits at pre-scheduled times from a thread pool; one HTTP client per thread."""

    def __init__(self, base_url: str, threads: int = 4) -> None:
        self.base_url = base_url
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(threads)
        self.clients: list[httpx.Client] = []
        self.late: list[float] = []

    def _client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.base_url, timeout=30)
            self.clients.append(self.local.client)
        return self.local.client

    def _post(self, payload: dict[str, Any], due: float) -> dict[str, Any]:
        self.late.append(time.monotonic() - due)
        response = self._client().post("/v1/jobs", json=payload)
        assert response.status_code == 202, response.text
        return response.json()

    def run(self, offsets: list[float], steps: int) -> list[dict[str, Any]]:
        """Fire one job at each offset (seconds from now); returns the accepted jobs."""
        futures: list[Future] = []
        start = time.monotonic()
        for i, offset in enumerate(offsets):
            due = start + offset
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(self._post, body(steps, 1000 + i), due))
        jobs = [future.result() for future in futures]
        self.pool.shutdown()
        for client in self.clients:
            client.close()
        return jobs


# -- measuring the machine and Redis ---------------------------------------------------------


def machine_ticks() -> tuple[int, int]:
    """(busy, steal) CPU ticks of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def process_ticks(pids: list[int]) -> int:
    """utime + stime ticks of these processes (all their threads)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


@dataclass
class CpuMeter:
    """CPU that processes other than this check's used on the machine over an interval."""

    pids: list[int]

    def __post_init__(self) -> None:
        self.start = (time.monotonic(), *machine_ticks(), process_ticks(self.pids))

    def other_cores(self) -> tuple[float, float, float]:
        """(ours, others, steal) in cores, averaged since the start."""
        t0, busy0, steal0, ours0 = self.start
        busy1, steal1 = machine_ticks()
        ours1 = process_ticks(self.pids)
        ticks = os.sysconf("SC_CLK_TCK") * (time.monotonic() - t0)
        ours = (ours1 - ours0) / ticks
        return ours, max(0.0, (busy1 - busy0) / ticks - ours), (steal1 - steal0) / ticks


def commandstats(redis: Redis) -> Stats:
    """Calls and usec per command (without INFO itself)."""
    stats = redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
        for name, v in stats.items()
        if name != "cmdstat_info"
    }


def redis_cpu(redis: Redis) -> float:
    """Seconds of CPU Redis has used (user + sys)."""
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def delta(after: Stats, before: Stats) -> Stats:
    """Per-command calls and usec between two snapshots."""
    out = {}
    for name, (calls, usec) in after.items():
        calls0, usec0 = before.get(name, (0, 0.0))
        if calls > calls0:
            out[name] = (calls - calls0, usec - usec0)
    return out


# -- analysis --------------------------------------------------------------------------------


def dispatch_latency(jobs: list[dict]) -> list[float]:
    """Waits of jobs that found a worker free (fewer than 2 other jobs unfinished on arrival).

    In the model these wait 0; what they do wait is the service's dispatch latency.
    """
    created = [ts(j["created_at"]) for j in jobs]
    finished = [ts(j["finished_at"]) for j in jobs]
    out = []
    for i, t in enumerate(created):
        in_system = sum(1 for k in range(len(jobs)) if k != i and created[k] < t < finished[k])
        if in_system < WORKERS:
            out.append(ts(jobs[i]["started_at"]) - t)
    return out


def short_runs(lam: float, dist: ServiceTime, jobs: int, seed: int, runs: int = 500) -> str:
    """5th-95th percentile of the wait p95 over many runs as short as this one, from empty."""
    rng = np.random.default_rng(seed)
    p95s = []
    for _ in range(runs):
        arrivals = np.cumsum(rng.exponential(1 / lam, jobs)).tolist()
        p95s.append(q(fifo_waits(arrivals, dist.draw(rng, jobs).tolist(), WORKERS), 0.95))
    return f"{1000 * q(p95s, 0.05):.0f}-{1000 * q(p95s, 0.95):.0f}"


def row(
    name: str, lam: float, mean_s: float, p_wait: float, p50: float, p95: float, spread: str = ""
) -> None:
    """One line of the comparison table."""
    util = lam * mean_s / WORKERS
    print(
        f"| {name} | {lam:.2f} | {1000 * mean_s:.0f} | {util:.0%} | {p_wait:.0%} | "
        f"{1000 * p50:.0f} | {1000 * p95:.0f} | {spread} |"
    )


def mmc_row(name: str, lam: float, mean_s: float, jobs: int, seed: int) -> None:
    """M/M/2 closed forms (the spread of short runs by simulation with exponential service)."""
    p50 = mmc_wait_quantile(lam, mean_s, WORKERS, 0.5)
    p95 = mmc_wait_quantile(lam, mean_s, WORKERS, 0.95)
    spread = short_runs(lam, ServiceTime.exponential(mean_s), jobs, seed)
    row(name, lam, mean_s, erlang_c(WORKERS, lam * mean_s), p50, p95, spread)


def sim_row(name: str, lam: float, samples: list[float], jobs: int, seed: int) -> None:
    """Simulation with these measured service times (resampled i.i.d.), 200k jobs."""
    dist = ServiceTime.empirical(samples)
    sim = simulate(lam, WORKERS, dist, n_jobs=200_000, seed=seed)
    spread = short_runs(lam, dist, jobs, seed)
    row(name, lam, dist.mean, sim.p_wait, sim.p50, sim.p95, spread)


def report_redis(
    spent: Stats, polls: Counter, jobs: int, cpu_s: float, per_get: Stats, lpos_usec: float
) -> None:
    """Commands and CPU per job, without the final polls of this check."""
    polls_n = sum(polls.values())
    # The final wait's polls: HGETALL each, plus LPOS for the queued jobs.
    own = {"hgetall": polls_n, "lpos": polls["queued"]}
    per_job = {
        name: (calls - own.get(name, 0)) / jobs
        for name, (calls, _) in spent.items()
        if calls > own.get(name, 0)
    }
    usec = sum(u for _, u in spent.values())
    print(
        f"\nRedis over the Poisson run: {sum(per_job.values()):.1f} commands/job "
        f"({polls_n} client polls at the end subtracted); Redis process CPU "
        f"{1e6 * cpu_s / jobs:.0f} us/job (idle rate subtracted; includes network I/O and the "
        f"final polls), of which executing commands {usec / jobs:.0f} us/job"
    )
    print("| command | calls/job | usec/call in Redis |")
    print("|---|---|---|")
    for name, calls in sorted(per_job.items(), key=lambda kv: -kv[1]):
        if calls >= 0.01:
            n, usec = spent[name]
            print(f"| {name} | {calls:.2f} | {usec / n:.1f} |")
    gets = {k: c for k, (c, _) in per_get.items()}
    n_gets = gets.get("hgetall", 1)
    print(
        f"\nGET /v1/jobs/{{id}} of a finished job: "
        f"{', '.join(f'{k} {c / n_gets:.2f}' for k, c in gets.items())} Redis commands; "
        f"LPOS over a 1000-id queue (miss): {lpos_usec:.1f} usec/call in Redis"
    )


def main() -> None:
    """Calibrate, drive Poisson arrivals, print measured vs predicted waits and Redis cost."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs in the Poisson run")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per job")
    parser.add_argument("--load", type=float, default=0.7, help="target utilisation of 2 workers")
    parser.add_argument("--calibration-jobs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polling rounds")
    parser.add_argument("--dump", type=Path, help="write the raw jobs and calibration as JSON")
    args = parser.parse_args()

    cache = Path(".cache/models").resolve()
    ensure_tiny_model(cache)
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as workdir,
        LocalStack(Path(workdir), cache, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1") as stack,
    ):
        stack.start_api()
        for _ in range(WORKERS):
            stack.start_worker()
        warm = [stack.submit(body(args.steps, seed))["id"] for seed in range(4)]
        wait_all(stack, warm, poll=0.5)
        assert stack.redis_proc is not None
        pids = [os.getpid(), stack.redis_proc.pid]
        pids += [proc.pid for proc, _ in stack.apis] + [proc.pid for proc in stack.workers]

        # 1. calibration
        cal_meter = CpuMeter(pids)
        calib, overhead = calibrate(stack, args.calibration_jobs, args.steps)
        cal_cpu = cal_meter.other_cores()
        calib_eff = [s + overhead for s in calib]
        mean_eff = statistics.fmean(calib_eff)
        lam = args.load * WORKERS / mean_eff

        # 2. Poisson arrivals, nothing polling; Redis's idle CPU rate first
        idle0, idle_t0 = redis_cpu(stack.redis), time.monotonic()
        time.sleep(3)
        idle_rate = (redis_cpu(stack.redis) - idle0) / (time.monotonic() - idle_t0)
        rng = np.random.default_rng(args.seed)
        offsets = np.cumsum(rng.exponential(1 / lam, args.jobs))
        before, cpu0, t0 = commandstats(stack.redis), redis_cpu(stack.redis), time.monotonic()
        meter = CpuMeter(pids)
        submitter = Submitter(str(stack.http.base_url))
        accepted = submitter.run((offsets - offsets[0]).tolist(), args.steps)
        ids = [job["id"] for job in accepted]
        jobs, polls = wait_all(stack, ids, poll=args.poll)
        run_cpu = meter.other_cores()
        after = commandstats(stack.redis)
        redis_s = redis_cpu(stack.redis) - cpu0 - idle_rate * (time.monotonic() - t0)

        # 3. the cost of a poll (finished jobs), and LPOS over a queue of 1000 ids
        api_pid = stack.apis[0][0].pid
        gets0, api0 = commandstats(stack.redis), process_ticks([api_pid])
        get_t0 = time.perf_counter()
        for job_id in ids:
            stack.job(job_id)
        get_ms = 1000 * (time.perf_counter() - get_t0) / len(ids)
        api_ticks = process_ticks([api_pid]) - api0
        api_get_ms = 1000 * api_ticks / os.sysconf("SC_CLK_TCK") / len(ids)
        per_get = delta(commandstats(stack.redis), gets0)
        record_bytes = statistics.fmean(
            stack.redis.memory_usage(f"ldm:job:{job_id}") or 0 for job_id in ids
        )
        leftover = len(stack.redis.keys("rq:job:*"))
        scratch = "capacity-check:lpos"
        stack.redis.rpush(scratch, *[f"j_{i:026d}" for i in range(1000)])
        lpos0 = commandstats(stack.redis)
        for _ in range(500):
            stack.redis.lpos(scratch, "j_missing")
        lpos_calls, lpos_usec = delta(commandstats(stack.redis), lpos0)["lpos"]
        stack.redis.delete(scratch)

    wall = time.monotonic() - began
    if args.dump:
        args.dump.write_text(json.dumps({"calibration": calib, "overhead": overhead, "jobs": jobs}))
    jobs.sort(key=lambda j: ts(j["created_at"]))
    created = [ts(j["created_at"]) for j in jobs]
    waits = [ts(j["started_at"]) - ts(j["created_at"]) for j in jobs]
    run_service = service_times(jobs)
    run_eff = [s + overhead for s in run_service]
    gaps = np.diff(created)
    lam_real = 1 / float(gaps.mean())
    floor = dispatch_latency(jobs)
    replay = fifo_waits(created, run_eff, WORKERS)
    halves = len(run_service) // 2

    print(f"tiny-sd 64x64, {args.steps} steps, CPU, {WORKERS} workers (OMP_NUM_THREADS=1 each)")
    print(
        f"calibration ({args.calibration_jobs}-job burst, both workers busy): "
        f"finished-started mean {1000 * statistics.fmean(calib):.0f} ms, "
        f"p50 {1000 * statistics.median(calib):.0f}, p95 {1000 * q(calib, 0.95):.0f}, "
        f"CV {statistics.pstdev(calib) / statistics.fmean(calib):.2f}; overhead outside it "
        f"{1000 * overhead:.1f} ms/job; service (sum) mean {1000 * mean_eff:.0f} ms; "
        f"other processes used {cal_cpu[1]:.2f} cores, steal {cal_cpu[2]:.2f}"
    )
    print(
        f"Poisson run: {args.jobs} jobs, planned lambda {lam:.2f}/s ({args.load:.0%} of "
        f"{WORKERS} workers at the calibrated service time), realised {lam_real:.2f}/s "
        f"(inter-arrival CV {gaps.std() / gaps.mean():.2f}; Poisson: 1), submit lateness p99 "
        f"{1000 * q(submitter.late, 0.99):.1f} ms; finished-started mean "
        f"{1000 * statistics.fmean(run_service):.0f} ms (first half "
        f"{1000 * statistics.fmean(run_service[:halves]):.0f}, second half "
        f"{1000 * statistics.fmean(run_service[halves:]):.0f}), CV "
        f"{statistics.pstdev(run_service) / statistics.fmean(run_service):.2f}; "
        f"this check's processes used {run_cpu[0]:.2f} cores, other processes "
        f"{run_cpu[1]:.2f}, steal {run_cpu[2]:.2f} (of 2)"
    )
    print(
        f"dispatch latency (wait of the {len(floor)} jobs that found a worker free): "
        f"p50 {1000 * statistics.median(floor):.1f} ms, p95 {1000 * q(floor, 0.95):.1f} ms"
    )
    print()
    print(
        "| figure | lambda /s | mean service ms | util | P(wait) | wait p50 ms | wait p95 ms "
        f"| p95 of {args.jobs}-job runs, 5th-95th pct, ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    threshold = max(0.02, 2 * statistics.median(floor))
    p_wait = float(np.mean(np.asarray(waits) > threshold))
    mean_run = statistics.fmean(run_eff)
    row(
        "measured: started_at - created_at",
        lam_real,
        mean_run,
        p_wait,
        q(waits, 0.5),
        q(waits, 0.95),
    )
    n, seed = args.jobs, args.seed
    mmc_row("M/M/2, a priori (calibration mean)", lam, mean_eff, n, seed)
    sim_row("simulation, a priori (calibration samples)", lam, calib_eff, n, seed)
    mmc_row("M/M/2, a posteriori (run's mean)", lam_real, mean_run, n, seed)
    sim_row("simulation, a posteriori (run's samples, i.i.d.)", lam_real, run_eff, n, seed)
    row(
        "replay of the run's trace (FIFO, 2 servers)",
        lam_real,
        mean_run,
        float(np.mean(np.asarray(replay) > 0)),
        q(replay, 0.5),
        q(replay, 0.95),
    )
    print(
        "\nservice = finished_at - started_at + the calibrated overhead per job; measured "
        f"P(wait) counts waits over {1000 * threshold:.0f} ms (2x dispatch latency p50, min 20)."
    )
    report_redis(delta(after, before), polls, args.jobs, redis_s, per_get, lpos_usec / lpos_calls)
    print(
        f"GET /v1/jobs/{{id}} from one client thread: {get_ms:.1f} ms round trip, "
        f"{api_get_ms:.1f} ms of API process CPU per request"
    )
    print(
        f"finished job record in Redis: {record_bytes:.0f} bytes (MEMORY USAGE, kept for "
        f"LDM_RESULT_TTL); RQ job hashes left after the run: {leftover}"
    )
    print(f"\nwall time {wall:.0f} s")


if __name__ == "__main__":
    main()
