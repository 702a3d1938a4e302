"""Live previews: a small image of each previewed job's current estimate, on its event stream.

(Being built: `offer` is called by the worker's loop after every engine iteration.)"""

from redis import Redis

from app.core.settings import Settings
from worker.engine.state import JobState
from worker.families.base import Family


class Previews:
    """Sends `preview` events for the active jobs that asked for them."""

    def __init__(self, redis: Redis, family: Family, settings: Settings) -> None:
        self.redis = redis
        self.family = family
        self.settings = settings

    def offer(self, active: list[JobState]) -> None:
        """After an iteration: previews for the jobs that are due one (returns at once)."""

    def close(self) -> None:
        """Send what is pending, then stop."""
