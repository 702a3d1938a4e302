"""The faults of `bench.chaos`, from one thread: every `kill_every` seconds a random ready worker
is killed (`kill -9`) and a fresh one started in its place, and once (when asked) Redis is
stopped and started again. One thread, so nothing reads Redis while it is down."""

import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from bench.chaos_faults import kill_when_busy
from scripts.procs import wait_until
from scripts.stack import LocalStack


@dataclass
class Kill:
    """One kill: when (seconds into the run), whom, and the jobs it was running."""

    at: float
    worker: str
    running: dict[str, int]  # job id -> attempt, as its record said just before


@dataclass
class Monkey:
    """Kills and restarts workers of `stack`, and restarts its Redis once `restart_when()`,
    until `over_when()`."""

    stack: LocalStack
    kill_every: float
    rng: random.Random
    worker_settings: dict[str, str]
    restart_when: Callable[[], bool] = lambda: False
    over_when: Callable[[], bool] = lambda: False  # no more faults once it says so
    kills: list[Kill] = field(default_factory=list)
    redis_restarts: list[float] = field(default_factory=list)  # seconds into the run
    spawn_failures: list[str] = field(default_factory=list)
    skipped: int = 0  # ticks with no ready worker to kill
    ready: dict[subprocess.Popen, str] = field(default_factory=dict)  # worker -> its name
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _spawning: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def spawn(self) -> threading.Thread:
        """Start one more worker on a thread of its own (a start takes seconds); it can be
        killed once it is ready."""

        def start() -> None:
            try:
                proc, name = self.stack.spawn_worker(**self.worker_settings)
            except Exception as error:  # noqa: BLE001 - reported, and the run goes on
                self.spawn_failures.append(repr(error))
                return
            with self._lock:
                self.ready[proc] = name

        thread = threading.Thread(target=start, name="spawn-worker")
        self._spawning.append(thread)
        thread.start()
        return thread

    def settle(self) -> None:
        """Wait for every worker start under way."""
        for thread in self._spawning:
            thread.join()
        self._spawning.clear()

    def start(self) -> None:
        """Begin the faults: the first kill comes `kill_every` seconds from now."""
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="chaos-monkey")
        self._thread.start()

    def stop(self) -> None:
        """No more faults; returns once the last replacement worker is ready."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.settle()

    def _loop(self) -> None:
        # Half ticks: kills on the even ones, the Redis restart on an odd one, between two
        # kills (a kill right after the restart would compound the two faults).
        beat, ticks = self.kill_every / 2, 0
        while not self._stop.wait(max(0.0, self._started + (ticks + 1) * beat - time.monotonic())):
            ticks += 1
            if self.over_when():
                break
            if ticks % 2 == 0:
                self._kill_one()
            elif not self.redis_restarts and self.restart_when():
                self._restart_redis()

    def _restart_redis(self) -> None:
        # Worker starts poll Redis until ready: let them finish first.
        self.settle()
        self.stack.stop_redis()
        time.sleep(1.0)  # an outage clients and workers notice, not just a blip
        self.stack.start_redis()
        wait_until(self._redis_answers, 30, "Redis after its restart")
        self.redis_restarts.append(round(time.monotonic() - self._started, 1))

    def _redis_answers(self) -> bool:
        try:
            return bool(self.stack.redis.ping())
        except RedisError:
            return False  # still loading its append-only file

    def _kill_one(self) -> None:
        with self._lock:
            choices = sorted(self.ready.items(), key=lambda item: item[0].pid)
            if not choices:
                self.skipped += 1
                return
            proc, name = self.rng.choice(choices)
            del self.ready[proc]
        # A kill between two jobs tests little: give the victim a moment to be running some.
        running = kill_when_busy(self.stack, proc, name, self.kill_every / 2, self._stop)
        at = round(time.monotonic() - self._started, 1)
        self.kills.append(Kill(at, name, running))
        self.spawn()
