"""`python -m worker.healthcheck`: exit 0 if a worker on this host is registered and alive.

Container health checks run this next to the worker process. It is healthy when Redis
(`LDM_REDIS_URL`) lists an RQ worker whose hostname is this host's and whose last heartbeat
is recent; otherwise it prints one line saying why and exits 1. It imports neither torch
nor the web app, so it is quick and cheap to run every few seconds.
"""

import argparse
import socket
import sys
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.defaults import DEFAULT_WORKER_TTL

from app.core.redis_client import connect
from app.core.settings import get_settings

# Redis-side expiry the worker refreshes on every heartbeat is TTL + 60 s.
HEARTBEAT_GRACE = 60


def default_max_age(job_timeout: int) -> int:
    """Oldest heartbeat still healthy, in seconds.

    An idle worker beats about every `DEFAULT_WORKER_TTL` seconds; a `SimpleWorker` beats once
    when a job starts and not again until it ends, which takes at most the job timeout.
    """
    return max(DEFAULT_WORKER_TTL, job_timeout) + HEARTBEAT_GRACE


def check(redis: Redis, hostname: str, max_age: float, now: datetime | None = None) -> str | None:
    """None if a worker on `hostname` has a heartbeat at most `max_age` s old, else why not."""
    now = now or datetime.now(UTC)
    workers = [w for w in Worker.all(connection=redis) if w.hostname == hostname]
    if not workers:
        return f"no RQ worker registered for host {hostname}"
    beats = [w.last_heartbeat for w in workers if w.last_heartbeat is not None]
    if not beats:
        return f"RQ worker on {hostname} has no heartbeat"
    age = (now - max(beats)).total_seconds()
    if age > max_age:
        return f"RQ worker on {hostname}: last heartbeat {age:.0f} s ago (limit {max_age:.0f} s)"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the check against the configured Redis; print why and return 1 if unhealthy."""
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m worker.healthcheck", description=__doc__)
    parser.add_argument(
        "--max-age",
        type=float,
        default=default_max_age(settings.job_timeout),
        help="oldest heartbeat that is still healthy, in seconds (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    redis = connect(settings, socket_connect_timeout=5, socket_timeout=5)
    try:
        problem = check(redis, socket.gethostname(), args.max_age)
    except RedisError as exc:
        problem = f"Redis unreachable: {exc}"  # not the URL: it may hold a password
    finally:
        redis.close()
    if problem is not None:
        print(f"unhealthy: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
