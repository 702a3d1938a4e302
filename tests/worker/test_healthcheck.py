"""`python -m worker.healthcheck` against a real redis-server and a registered RQ worker."""

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from app.core.settings import get_settings
from scripts.procs import free_port
from worker import healthcheck

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server_url(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's redis-server, and settings that point at it."""
    monkeypatch.setenv("LDM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield redis_url
    get_settings.cache_clear()


@pytest.fixture
def make_worker(redis: Redis, server_url: str) -> Iterator[Callable[..., SimpleWorker]]:
    """Register RQ workers (birth and one heartbeat, no `work()`); their death at teardown."""
    workers: list[SimpleWorker] = []

    def make(hostname: str | None = None) -> SimpleWorker:
        worker = SimpleWorker([Queue("tiny-sd", connection=redis)], connection=redis)
        if hostname is not None:
            worker.hostname = hostname
        worker.register_birth()
        worker.heartbeat()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.register_death()


def test_healthy_when_a_worker_on_this_host_beats(make_worker, capsys) -> None:
    make_worker()
    assert healthcheck.main([]) == 0
    assert capsys.readouterr().out == ""


def test_unhealthy_without_a_worker(redis: Redis, server_url: str, capsys) -> None:
    assert healthcheck.main([]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy: no RQ worker") and out.count("\n") == 1


def test_a_worker_on_another_host_does_not_count(make_worker, capsys) -> None:
    make_worker(hostname="some-other-host")
    assert healthcheck.main([]) == 1
    assert "no RQ worker registered" in capsys.readouterr().out


def test_a_dead_worker_does_not_count(make_worker) -> None:
    make_worker().register_death()
    assert healthcheck.main([]) == 1


def test_stale_heartbeat_is_unhealthy(redis: Redis, make_worker) -> None:
    make_worker()
    host = socket.gethostname()
    assert healthcheck.check(redis, host, max_age=60) is None
    later = datetime.now(UTC) + timedelta(seconds=120)
    problem = healthcheck.check(redis, host, max_age=60, now=later)
    assert problem is not None and "last heartbeat" in problem
    # From the command line: a zero limit is missed by any real heartbeat.
    assert healthcheck.main(["--max-age", "0"]) == 1


def test_default_max_age_covers_a_whole_job() -> None:
    # A SimpleWorker does not beat during a job, so a long job must not look dead.
    assert healthcheck.default_max_age(job_timeout=1800) > 1800
    assert healthcheck.default_max_age(job_timeout=1) > 400  # idle beats come every ~405 s


def test_unreachable_redis_is_unhealthy(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("LDM_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    try:
        assert healthcheck.main([]) == 1
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().out.startswith("unhealthy: Redis unreachable")


def run_module(server_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LDM_REDIS_URL": server_url}
    return subprocess.run(
        [sys.executable, "-m", "worker.healthcheck"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_module_exit_codes(server_url: str, make_worker) -> None:
    """What the container's HEALTHCHECK runs, as a separate process."""
    unhealthy = run_module(server_url)
    assert unhealthy.returncode == 1, unhealthy.stderr
    assert unhealthy.stdout.startswith("unhealthy:")
    make_worker()
    healthy = run_module(server_url)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


def test_imports_neither_web_app_nor_torch() -> None:
    """Cheap enough to run every 30 s next to a worker."""
    code = (
        "import sys, worker.healthcheck; "
        "print(sorted({'fastapi', 'torch', 'diffusers', 'app.api'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
