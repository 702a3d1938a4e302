"""What a fault hit and what ran twice, for `bench.load` and `bench.chaos`: the jobs a worker
is running when it is killed (read from Redis), and the jobs the workers' own logs say they
denoised more than once."""

import json
import re
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from redis import Redis

from app.core.store import RUNNING_KEY, JobStore
from scripts.stack import LocalStack

# The line a worker logs (INFO) once a job's denoising completed, whoever publishes it.
DENOISED = re.compile(r"^job (\S+) denoised on attempt (\d+)$")


def running_on(redis: Redis, worker: str) -> dict[str, int]:
    """Jobs whose record says running on `worker` right now, with their attempt."""
    job_ids = [raw.decode() for raw in redis.zrange(RUNNING_KEY, 0, -1)]
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(JobStore.key(job_id), "status", "worker", "attempt")
    return {
        job_id: int(attempt or 1)
        for job_id, (status, owner, attempt) in zip(job_ids, pipe.execute(), strict=True)
        if status == b"running" and (owner or b"").decode() == worker
    }


def kill_when_busy(
    stack: LocalStack,
    proc: subprocess.Popen,
    name: str,
    wait: float = 0.0,
    give_up: threading.Event | None = None,
) -> dict[str, int]:
    """SIGKILL a worker of `stack`, first waiting up to `wait` seconds (or until `give_up`
    is set) for it to run a job; returns the jobs (and attempts) it was running just before
    (none if it ran none in time)."""
    deadline = time.monotonic() + wait
    while not (running := running_on(stack.redis, name)):
        if time.monotonic() > deadline or (give_up is not None and give_up.is_set()):
            break
        time.sleep(0.005)  # jobs of the tiny model run for a fraction of a second
    stack.kill_worker(proc)
    return running


def denoised_runs(workdir: Path) -> dict[str, list[int]]:
    """Per job, the attempts the workers' logs (every `worker*.log` in `workdir`, killed
    workers' too) say were denoised to the end. Lines that are not JSON (a traceback, a
    line cut by a kill) are skipped."""
    runs: dict[str, list[int]] = defaultdict(list)
    for log in sorted(workdir.glob("worker*.log")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                msg = json.loads(line).get("msg", "")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(msg, str) and (match := DENOISED.match(msg)):
                runs[match.group(1)].append(int(match.group(2)))
    return dict(runs)


def ran_twice(runs: dict[str, list[int]], job_ids: Iterable[str]) -> dict[str, list[int]]:
    """Of `job_ids`, those denoised to the end more than once, with the attempts logged."""
    return {job_id: runs[job_id] for job_id in job_ids if len(runs.get(job_id, [])) > 1}


def killed_before_publishing(
    twice: dict[str, list[int]], hits: Iterable[dict[str, int]]
) -> list[str]:
    """Of the jobs denoised twice, those explained by a kill: every attempt but the last was
    denoised once, on a worker `kill -9`ed while the job's record still said that attempt
    ran there (denoised, its outcome not yet recorded: nothing can save that run, and the
    job runs again). `hits` are the running jobs of each kill, as `kill_when_busy` returns.
    Any other double run is a bug (a job run again while its first worker lived)."""
    hit: dict[str, set[int]] = defaultdict(set)
    for kill in hits:
        for job_id, attempt in kill.items():
            hit[job_id].add(attempt)
    return [
        job_id
        for job_id, attempts in twice.items()
        if len(set(attempts)) == len(attempts) and set(sorted(attempts)[:-1]) <= hit[job_id]
    ]


def worker_log_evidence(workdir: Path, job_ids: Iterable[str], limit: int = 5) -> list[str]:
    """The log lines (file: msg) that name the first `limit` of `job_ids`, for a report."""
    wanted = list(job_ids)[:limit]
    lines = []
    for log in sorted(workdir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if any(job_id in line for job_id in wanted):
                try:
                    record = json.loads(line)
                    lines.append(f"{log.name} {record.get('ts')}: {record.get('msg')}")
                except json.JSONDecodeError:
                    lines.append(f"{log.name}: {line[:200]}")
    return lines
