"""Start and stop the service's processes on this host: used by `make run`, tests and benches."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    """True if something accepts connections there."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc=None) -> None:
    """Poll `check` until it holds; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout} s")
        time.sleep(0.05)


def start_redis(
    port: int,
    workdir: Path,
    own_session: bool = False,
    durable: bool = False,
    replica_of: int | None = None,
) -> subprocess.Popen:
    """A redis-server on loopback, ready when this returns; `durable` keeps an append-only
    file in `workdir` (as production does), else nothing is persisted; `replica_of` makes it
    a replica of the primary on that port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found: apt-get install -y redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if durable else "no",
            "--dir",
            str(workdir),
            *(["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=own_session,
    )
    wait_until(lambda: port_open("127.0.0.1", port), 10, "redis-server", proc)
    return proc


def start_s3(port: int) -> subprocess.Popen:
    """An S3-compatible server on loopback (moto's server mode), ready when this returns."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: port_open("127.0.0.1", port), 30, "moto server", proc)
    return proc


def start_nginx(port: int, upstreams: list[int], workdir: Path) -> subprocess.Popen:
    """nginx on loopback, balancing round robin (no stickiness) over the given API ports."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    workdir.mkdir(parents=True, exist_ok=True)
    servers = "".join(f"server 127.0.0.1:{p}; " for p in upstreams)
    temp = " ".join(
        f"{kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (workdir / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {workdir}/nginx.pid; user root;"
        f"error_log {workdir}/error.log; events {{ worker_connections 256; }}"
        f"http {{ access_log {workdir}/access.log; {temp} client_max_body_size 20m;"
        f"upstream api {{ {servers}}}"
        f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://api; }} }} }}"
    )
    proc = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf")],
        stdout=subprocess.DEVNULL,
    )
    wait_until(lambda: port_open("127.0.0.1", port), 10, "nginx", proc)
    return proc


def start_python(
    module: str, env: dict[str, str], log: Path | None = None, own_session: bool = False
) -> subprocess.Popen:
    """`python -m module` with extra environment, output to `log` (or inherited).

    `own_session` keeps a terminal's Ctrl-C away from the child, so the parent decides
    when and in which order its children stop.
    """
    out = open(log, "ab") if log else None  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=own_session,
    )


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time; only this pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
