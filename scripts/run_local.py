"""`make run`: Redis (started if local and silent), the API and one worker, in the foreground.

Ctrl-C or SIGTERM stops every process this started, and nothing else; if one of them dies,
the others are stopped too and the exit status says so.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from app.core.settings import get_settings
from scripts.procs import port_open, start_python, start_redis, stop

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def ensure_redis(url: str) -> subprocess.Popen | None:
    """Start redis-server when the URL points here and nothing answers; None if one answers."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "localhost", parsed.port or 6379
    if port_open(host, port):
        return None
    if host not in LOCAL_HOSTS:
        sys.exit(f"no Redis answers at {host}:{port}; start it or fix LDM_REDIS_URL")
    if shutil.which("redis-server") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            sys.exit("redis-server is missing: install it (apt-get install redis-server)")
        print("installing redis-server (Debian package)...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True)
    print(f"starting redis-server on port {port}", flush=True)
    return start_redis(port, Path(".cache/redis"), own_session=True)


def main() -> None:
    """Run until interrupted, then stop the worker (it finishes its job), the API, Redis."""
    settings = get_settings()
    redis = ensure_redis(settings.redis_url)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    api = start_python("app", {}, own_session=True)
    worker = start_python("worker", {}, own_session=True)
    children = [p for p in (worker, api, redis) if p is not None]
    print(f"API on http://{settings.host}:{settings.port} (Ctrl-C stops everything)", flush=True)
    try:
        while not stopping and all(p.poll() is None for p in children):
            time.sleep(0.2)
    finally:
        print("stopping (the worker finishes the job it holds)", flush=True)
        stop(worker, timeout=settings.job_timeout + 30)
        stop(api)
        if redis is not None:
            stop(redis)
    sys.exit(0 if stopping else 1)


if __name__ == "__main__":
    main()
