"""Progress travels on its own thread; the finishing thread waits for a job's last step to be
written before its final state, while the engine goes on reporting the others'."""

import threading
import time

from app.core.queue import JobQueue, rq_queue
from app.core.store import Claim
from tests.factories import make_params, submitted
from worker.progress import ProgressReporter


def test_a_flush_waits_for_the_steps_reported_before_it_not_for_later_ones(
    queue: JobQueue,
) -> None:
    finished, running = (submitted(queue, make_params()) for _ in range(2))
    key = rq_queue(queue.redis, "tiny-sd").key
    queue.store.claim("w1", [Claim(job, job, key, 20) for job in (finished, running)])
    reporter = ProgressReporter(queue.store, "w1")
    reporter.report({finished: (20, 20)})
    stop = threading.Event()

    def engine() -> None:  # reports the running job's steps all the while
        step = 0
        while not stop.is_set():
            step = step % 19 + 1
            reporter.report({running: (step, 20)})
            time.sleep(0)  # as fast as it goes: a report is always pending

    thread = threading.Thread(target=engine)
    thread.start()
    try:
        started = time.monotonic()
        reporter.flush(timeout=5)
        waited = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    assert queue.store.get(finished).progress.step == 20
    assert waited < 1  # one write, not until the engine stops reporting
