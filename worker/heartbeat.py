"""A thread that keeps this worker in the registry, beating even while a job runs."""

import logging
import threading

from redis.exceptions import RedisError

from app.core.workers import BEAT_EVERY_S, WorkerRegistry

log = logging.getLogger(__name__)

RETRY_S = 1.0


class Heartbeat:
    """Beats for (model, worker) until stopped; leaves the registry when stopped."""

    def __init__(self, registry: WorkerRegistry, model: str, worker: str) -> None:
        self.registry = registry
        self.model = model
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Beat now (if Redis answers), then every `BEAT_EVERY_S` seconds."""
        self._thread.start()
        try:
            self.registry.beat(self.model, self.worker)
        except RedisError:
            log.warning("first heartbeat failed; retrying in %s s", BEAT_EVERY_S)

    def stop(self) -> None:
        """Stop beating and leave the registry."""
        self._stop.set()
        self._thread.join(timeout=BEAT_EVERY_S)
        try:
            self.registry.leave(self.model, self.worker)
        except RedisError:
            log.warning("could not leave the worker registry; it forgets us in a minute")

    def _run(self) -> None:
        wait = BEAT_EVERY_S
        while not self._stop.wait(wait):
            try:
                self.registry.beat(self.model, self.worker)
                wait = BEAT_EVERY_S
            except RedisError:
                # Beat again as soon as Redis is back: silence after an outage counts.
                wait = RETRY_S
                log.warning("heartbeat failed; retrying in %s s", RETRY_S)
