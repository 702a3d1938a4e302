"""`make run`'s supervisor: it serves the default model (a picture that shows the prompt), and
Ctrl-C stops what it started, and only that."""

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from PIL import Image

from scripts.procs import free_port, port_open, start_redis, stop, wait_until
from shapes.classify import classify

ROOT = Path(__file__).resolve().parents[2]  # where `make run` runs it


def children_of(pid: int) -> set[int]:
    """Pids whose parent is `pid` (from /proc, no extra packages)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def run_local(tmp_path: Path, model_cache: Path, redis_port: int) -> tuple[subprocess.Popen, int]:
    api_port = free_port()
    env = {
        **os.environ,
        "LDM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LDM_PORT": str(api_port),
        "LDM_STORAGE_URL": (tmp_path / "images").as_uri(),
        "LDM_MODEL_CACHE": str(model_cache),
        "LDM_LOG_LEVEL": "WARNING",
    }
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.run_local"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, api_port


def serve_one_job(api_port: int, proc: subprocess.Popen) -> None:
    """A first user's request, defaults and all: the picture must show what it asks for."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    wait_until(lambda: port_open("127.0.0.1", api_port), 60, "API", proc)
    job = client.post("/v1/jobs", json={"prompt": "a large red circle", "seed": 1}).json()
    assert job["model"] == "tiny-shapes"
    url = f"/v1/jobs/{job['id']}"
    wait_until(lambda: client.get(url).json()["status"] == "succeeded", 120, "job", proc)
    image = client.get(client.get(url).json()["images"][0]["url"])
    reading = classify(Image.open(io.BytesIO(image.content)))
    assert (reading.colour, reading.shape) == ("red", "circle"), reading
    client.close()


def test_starts_redis_when_none_answers_and_stops_everything(
    tmp_path: Path, model_cache: Path
) -> None:
    redis_port = free_port()
    proc, api_port = run_local(tmp_path, model_cache, redis_port)
    try:
        serve_one_job(api_port, proc)
        started = children_of(proc.pid)
        assert len(started) == 3  # redis-server, API, worker
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not [pid for pid in started if alive(pid)]
        assert not port_open("127.0.0.1", redis_port) and not port_open("127.0.0.1", api_port)
    finally:
        stop(proc)


def test_leaves_a_redis_it_did_not_start_running(tmp_path: Path, model_cache: Path) -> None:
    redis_port = free_port()
    redis = start_redis(redis_port, tmp_path / "redis")
    proc, api_port = run_local(tmp_path, model_cache, redis_port)
    try:
        serve_one_job(api_port, proc)
        assert len(children_of(proc.pid)) == 2  # API and worker only
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert port_open("127.0.0.1", redis_port) and redis.poll() is None
    finally:
        stop(proc)
        stop(redis)
