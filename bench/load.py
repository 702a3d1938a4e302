"""Load with a fault: N jobs from C concurrent clients against two workers, one of which is
killed (SIGKILL) mid-run, while it runs jobs. Every accepted job must end, none lost, none with
two results, none denoised twice (counted from the workers' own logs, not the API).

    python -m bench.load [--jobs 1000] [--clients 50] [--kill-after 300]

Clients submit with an Idempotency-Key and retry what the service asks them to (429/503 with
Retry-After, or a dropped connection), as real clients do; then they poll their jobs.
"""

import argparse
import collections
import concurrent.futures
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_faults import denoised_runs, kill_when_busy, killed_before_publishing, ran_twice
from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model

BODY = {"prompt": "load", "num_inference_steps": 2}


def submit(client: httpx.Client, index: int) -> str:
    """Submit one job, retrying as told; returns its id."""
    key = f"load-{index}-{uuid.uuid4().hex}"
    while True:
        try:
            response = client.post(
                "/v1/jobs", json=BODY | {"seed": index}, headers={"Idempotency-Key": key}
            )
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code == 202:
            return response.json()["id"]
        if response.status_code in (429, 503):
            time.sleep(float(response.headers.get("retry-after", "1")))
            continue
        raise RuntimeError(f"submit refused: {response.status_code} {response.text}")


def run(jobs: int, clients: int, kill_after: int, workdir: Path, cache: Path) -> dict[str, Any]:
    """The whole scenario; returns what a reader of the results needs to judge it."""
    ensure_tiny_model(cache)
    with LocalStack(workdir, cache, OMP_NUM_THREADS="1", LDM_SWEEP_INTERVAL="2") as stack:
        base = str(stack.start_api().base_url)
        # INFO: each worker logs every job it denoised to the end, which counts runs.
        victim = stack.start_worker(LDM_LOG_LEVEL="INFO")
        stack.start_worker(LDM_LOG_LEVEL="INFO")
        victim_name = stack.worker_name(victim)
        hit: dict[str, int] = {}  # what the victim ran when killed: job id -> attempt
        started = time.monotonic()
        ids: list[str] = []
        done = threading.Event()
        lock = threading.Lock()

        def client_loop(worker_index: int) -> list[str]:
            mine = []
            with httpx.Client(base_url=base, timeout=30) as client:
                for index in range(worker_index, jobs, clients):
                    mine.append(submit(client, index))
                    with lock:
                        ids.append(mine[-1])
            return mine

        def killer() -> None:
            while not done.is_set():
                finished = sum(
                    1
                    for j in list(ids)[:kill_after]
                    if stack.http.get(f"/v1/jobs/{j}").json()["status"] != "queued"
                )
                if finished >= kill_after or done.wait(0.5):
                    break
            # Only once it runs jobs: a kill between two jobs would test nothing.
            hit.update(kill_when_busy(stack, victim, victim_name, 120, done))

        kill_thread = threading.Thread(target=killer)
        kill_thread.start()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(client_loop, range(clients)))
        deadline = time.monotonic() + 600
        final: dict[str, dict[str, Any]] = {}
        while len(final) < len(ids) and time.monotonic() < deadline:
            for job_id in ids:
                if job_id not in final:
                    job = stack.job(job_id)
                    if job["status"] not in ("queued", "running"):
                        final[job_id] = job
            time.sleep(0.5)
        done.set()
        kill_thread.join()
        elapsed = time.monotonic() - started
        runs = sum(w.successful_job_count + w.failed_job_count for w in stack.live_workers())
    statuses = collections.Counter(job["status"] for job in final.values())
    twice = ran_twice(denoised_runs(workdir), final)
    return {
        "jobs": jobs,
        "accepted": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "ended": len(final),
        "statuses": dict(statuses),
        "retried": sum(1 for job in final.values() if job["attempt"] > 1),
        "with_two_results": sum(1 for job in final.values() if len(job["images"]) != 1),
        "rq_runs_completed": runs,
        "running_on_victim_when_killed": len(hit),
        "ran_twice": len(twice),
        # ... of which explained by the kill landing between a denoising and its publishing.
        "ran_twice_killed_before_publishing": len(killed_before_publishing(twice, [hit])),
        "ran_twice_jobs": twice,
        "jobs_per_worker": dict(collections.Counter(job["worker"] for job in final.values())),
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    """Run the scenario and print its outcome."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kill-after", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        result = run(
            args.jobs, args.clients, args.kill_after, Path(workdir), Path(".cache/models").resolve()
        )
    for name, value in result.items():
        print(f"{name:>18}: {value}")


if __name__ == "__main__":
    main()
