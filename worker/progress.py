"""Progress and cancel flags travel on a thread of their own, so denoising never waits on Redis."""

import logging
import threading
import time
from collections.abc import Iterable, Mapping

from redis.exceptions import RedisError

from app.core.store import Flags, JobStore

log = logging.getLogger(__name__)


class ProgressReporter:
    """Writes the latest finished step of every active job and reads their cancel flags, in
    one round trip for the whole active set.

    `report` only hands the steps over (no I/O). The thread is woken at most every `interval`
    seconds, since waking it costs the denoising loop the GIL; steps in between are coalesced,
    so clients see the latest. A cancel is seen at most one interval later.
    """

    def __init__(self, store: JobStore, worker: str = "", interval: float = 0.05) -> None:
        self.store = store
        self.worker = worker
        self.interval = interval
        self._lock = threading.Condition()
        self._pending: dict[str, tuple[int, int] | None] | None = None
        self._canceled: set[str] = set()
        self._lost: set[str] = set()
        self._busy = False
        self._reported = 0  # reports handed over so far
        self._written = 0  # of those, the ones written (or given up on)
        self._woken_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def report(self, steps: Mapping[str, tuple[int, int]], watch: Iterable[str] = ()) -> None:
        """These jobs have finished these (step, of total) steps; `watch` jobs (paused ones)
        only have their cancel flags read. Returns at once."""
        with self._lock:
            watched = {job_id: None for job_id in watch if job_id not in steps}
            self._pending = (self._pending or {}) | watched | dict(steps)
            self._reported += 1
            if (now := time.monotonic()) - self._woken_at >= self.interval:
                self._woken_at = now
                self._lock.notify()

    def canceled(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` whose cancel has been requested, as last read."""
        with self._lock:
            return self._canceled.intersection(job_ids)

    def lost(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` no longer running on this worker, as last read: given up for
        dead (Redis was away from us, or we froze), they run again elsewhere."""
        with self._lock:
            return self._lost.intersection(job_ids)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every step reported so far is written (or given up on), or `timeout`.
        Steps reported meanwhile (from another thread) are not waited for."""
        with self._lock:
            target = self._reported
            self._lock.notify_all()
            self._lock.wait_for(
                lambda: self._written >= target or (self._pending is None and not self._busy),
                timeout,
            )

    def forget(self, job_ids: Iterable[str]) -> None:
        """Drop what is known of jobs that have ended (a late step write must not follow)."""
        with self._lock:
            gone = set(job_ids)
            self._canceled -= gone
            self._lost -= gone
            if self._pending is not None:
                self._pending = {k: v for k, v in self._pending.items() if k not in gone} or None

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._pending is not None)
                steps = self._pending or {}
                self._pending, self._busy = None, True
                taken = self._reported
            flags = Flags(set(), set())
            try:
                done = ["" if v is None else v[0] for v in steps.values()]
                totals = ["" if v is None else v[1] for v in steps.values()]
                flags = self.store.report_progress(list(steps), done, self.worker, totals)
            except RedisError:
                # Redis is away (a restart, a failover): denoise on; progress resumes after.
                log.warning("progress not recorded")
            except Exception:
                log.exception("progress not recorded")  # the thread lives on
            finally:
                with self._lock:
                    self._canceled |= flags.canceled
                    # Only what this write saw: a job claimed back since is ours again.
                    self._lost = (self._lost - set(steps)) | flags.lost
                    self._busy = False
                    self._written = taken
                    self._lock.notify_all()
