"""A whole local deployment on free ports (Redis, API, workers) for end-to-end tests, benches."""

import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from redis import Redis
from rq import Queue, Worker

from app.core.jobs import JobStatus
from scripts.procs import (
    free_port,
    start_nginx,
    start_python,
    start_redis,
    start_s3,
    stop,
    wait_until,
)

TERMINAL = {s.value for s in JobStatus if s.is_terminal()}


class LocalStack:
    """Starts what it needs, stops exactly what it started (by pid)."""

    def __init__(self, workdir: Path, model_cache: Path, **settings: str) -> None:
        self.workdir = workdir
        self.redis_port = free_port()
        self.env = {
            "LDM_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "LDM_HOST": "127.0.0.1",
            "LDM_STORAGE_URL": (workdir / "images").as_uri(),
            "LDM_MODEL_CACHE": str(model_cache),
            "LDM_DEVICE": "cpu",
            "LDM_LOG_LEVEL": "WARNING",
            # The fastest model: tests and benches measure the service, not the pictures.
            "LDM_MODEL": "tiny-sd",
            # Benches and tests repeat seeds to compare runs: each job must really run. The
            # cache's own tests and bench (bench/cache.py) turn it on.
            "LDM_RESULT_CACHE": "false",
        } | settings
        self.redis_proc: subprocess.Popen | None = None
        self.apis: list[tuple[subprocess.Popen, httpx.Client]] = []
        self.workers: list[subprocess.Popen] = []
        self.others: list[subprocess.Popen] = []
        self.balancer: httpx.Client | None = None
        self._spawned = itertools.count()  # log file numbers of `spawn_worker`

    def __enter__(self) -> "LocalStack":
        self.start_redis()
        return self

    def start_redis(self) -> None:
        """(Re)start Redis on the stack's port, with an append-only file as in production."""
        self.redis_proc = start_redis(self.redis_port, self.workdir / "redis", durable=True)
        self.redis = Redis.from_url(self.env["LDM_REDIS_URL"])

    def stop_redis(self) -> None:
        """Stop Redis (it writes its append-only file on the way out)."""
        self.redis.close()
        stop(self.redis_proc)

    def __exit__(self, *exc: object) -> None:
        for proc in self.workers:
            stop(proc)
        for proc, client in self.apis:
            client.close()
            stop(proc)
        if self.balancer:
            self.balancer.close()
        for proc in self.others:
            stop(proc)
        self.redis.close()
        if self.redis_proc:
            stop(self.redis_proc)

    def use_s3(self, bucket: str = "ldm-images") -> None:
        """Images in a bucket of an S3-compatible server (moto) for every process started next."""
        port = free_port()
        self.others.append(start_s3(port))
        endpoint = f"http://127.0.0.1:{port}"
        credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket)
        self.env |= credentials | {
            "LDM_STORAGE_URL": f"s3://{bucket}/jobs",
            "LDM_S3_ENDPOINT_URL": endpoint,
            "LDM_S3_REGION": "us-east-1",
        }

    def start_balancer(self) -> httpx.Client:
        """nginx in front of every API started so far; a client of it."""
        port = free_port()
        self.others.append(
            start_nginx(port, [int(c.base_url.port) for _, c in self.apis], self.workdir / "lb")
        )
        self.balancer = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        return self.balancer

    @property
    def http(self) -> httpx.Client:
        """A client of the balancer once there is one, else of the first API process."""
        return self.balancer or self.apis[0][1]

    def start_api(self, **settings: str) -> httpx.Client:
        """One more API process (its own settings may differ), ready when this returns."""
        port = free_port()
        env = self.env | {"LDM_PORT": str(port)} | settings
        proc = start_python("app", env, self.workdir / f"api-{port}.log")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

        def ready() -> bool:
            try:
                return client.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 30, "API", proc)
        self.apis.append((proc, client))
        return client

    def start_worker(
        self, queue: str = "ldm:tiny-sd", timeout: float = 120, **settings: str
    ) -> subprocess.Popen:
        """One more worker (its own settings may differ); ready once it listens on its queue."""
        before = {w.name for w in self.live_workers(queue)}
        log = self.workdir / f"worker-{len(self.workers)}.log"
        proc = start_python("worker", self.env | settings, log)
        wait_until(
            lambda: {w.name for w in self.live_workers(queue)} - before != set(),
            timeout,
            f"worker (see {log})",
            proc,
        )
        self.workers.append(proc)
        return proc

    def stop_worker(self, proc: subprocess.Popen) -> None:
        """Stop a worker this stack started (it finishes its job first)."""
        stop(proc)
        self.workers.remove(proc)

    def spawn_worker(
        self, queue: str = "ldm:tiny-sd", timeout: float = 120, **settings: str
    ) -> tuple[subprocess.Popen, str]:
        """One more worker, ready once it registered under its own pid; returns it and its
        name (the `worker` of the jobs it runs). Unlike `start_worker`, safe from several
        threads at once: each gets a log file of its own (`worker-spawned-N.log`)."""
        log = self.workdir / f"worker-spawned-{next(self._spawned)}.log"
        proc = start_python("worker", self.env | settings, log)
        names: list[str] = []

        def ready() -> bool:
            names[:] = [w.name for w in self.live_workers(queue) if w.pid == proc.pid]
            return bool(names)

        wait_until(ready, timeout, f"worker (see {log})", proc)
        self.workers.append(proc)
        return proc, names[0]

    def worker_name(self, proc: subprocess.Popen, queue: str = "ldm:tiny-sd") -> str:
        """The name a started worker registered under (the `worker` of the jobs it runs)."""
        for worker in self.live_workers(queue):
            if worker.pid == proc.pid:
                return worker.name
        raise LookupError(f"no worker with pid {proc.pid} on {queue}")

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """`kill -9` a worker this stack started, and forget it: no draining, no goodbye
        (its heartbeat, RQ record and jobs stay as it left them, as after a crash)."""
        proc.kill()
        proc.wait()
        self.workers.remove(proc)

    def live_workers(self, queue: str = "ldm:tiny-sd") -> list[Worker]:
        """RQ workers registered on that queue."""
        return Worker.all(queue=Queue(queue, connection=self.redis))

    def submit(self, body: dict[str, Any], client: httpx.Client | None = None) -> dict[str, Any]:
        """POST a job; fails unless the API accepted it."""
        response = (client or self.http).post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        """GET a job."""
        response = self.http.get(f"/v1/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait(
        self, job_id: str, until: set[str] = TERMINAL, timeout: float = 60, poll: float = 0.02
    ) -> dict[str, Any]:
        """Poll until the job's status is in `until`; returns that job."""
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["status"] not in until:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll)
        return job

    def image(self, job: dict[str, Any], index: int = 0) -> httpx.Response:
        """GET an image of a job by its URL."""
        return self.http.get(job["images"][index]["url"])
