"""The work after a denoise (encoding, uploads, final state writes) runs while the next one
denoises, so the accelerator goes from one batch to the next without waiting."""

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Finisher:
    """One background thread running finishing tasks in order.

    `submit` blocks while `depth` tasks wait, which bounds the images held in memory when
    storage is slower than denoising.
    """

    def __init__(self, depth: int = 2) -> None:
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._loop, name="finisher", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        """Run `task` after those already submitted."""
        self._tasks.put(task)

    def close(self) -> None:
        """Finish every submitted task, then stop the thread."""
        self._tasks.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:
                # Tasks record their own failures; this is the last line, never a dead thread.
                log.exception("finishing task failed")
