"""RQ stays the queue format, and its registries tell the truth about the engine's jobs:
`rq info` and rq-dashboard show the worker, what it runs, and how each job ended."""

import time

from redis import Redis
from rq import SimpleWorker, Worker
from rq.job import JobStatus as RQJobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from app.core.jobs import JobStatus
from app.core.queue import JobQueue, rq_queue
from app.core.storage import LocalStorage, init_image_key
from app.core.store import Claim
from tests.factories import cancel_at_step, make_params, submitted
from tests.worker.conftest import Forwards, ServerFactory
from worker.engine.state import JobState
from worker.rq_books import RQBooks

MODEL = "tiny-sd"


def test_registries_follow_each_job_from_start_to_end(
    queue: JobQueue,
    redis: Redis,
    storage: LocalStorage,
    forwards: Forwards,
    make_server: ServerFactory,
) -> None:
    rq = rq_queue(redis, MODEL)
    ok = [submitted(queue, make_params(seed=s, num_inference_steps=3)) for s in (1, 2)]
    bad = submitted(queue, make_params(mode="image-to-image", strength=0.5))
    storage.put(init_image_key(bad), b"not an image", "image/png")
    canceled = submitted(queue, make_params(seed=3, num_inference_steps=30))
    server = make_server()
    cancel_at_step(queue, canceled, step=2, store=server.store)
    seen: list[dict] = []

    def look(states: list[JobState]) -> None:
        # RQ's records are written on the books thread, off the step path: once it has
        # caught up, they must say what the engine runs.
        assert server.books.flush()
        workers = Worker.all(connection=redis)
        seen.append(
            {
                "workers": {(w.name, tuple(w.queue_names()), w.get_state()) for w in workers},
                "started": set(rq.started_job_registry.get_job_ids(cleanup=False)),
                "running": {state.job_id for state in states},
                "statuses": {rq.fetch_job(s.job_id).get_status() for s in states},
            }
        )

    forwards.hook = look
    server.serve(burst=True)

    # While serving: the worker is listed on the model's queue, busy, and every job in a
    # forward is STARTED in the started registry.
    assert seen
    for moment in seen:
        assert moment["workers"] == {(server.name, (rq.name,), "busy")}
        assert moment["running"] <= moment["started"]
        assert moment["statuses"] == {RQJobStatus.STARTED}
    # After: each job where its end puts it, nothing left started or queued, the worker gone.
    assert [queue.store.get(job_id).status for job_id in ok] == [JobStatus.SUCCEEDED] * 2
    assert queue.store.get(bad).status is JobStatus.FAILED
    assert queue.store.get(canceled).status is JobStatus.CANCELED
    finished = set(rq.finished_job_registry.get_job_ids())
    failed = set(rq.failed_job_registry.get_job_ids())
    assert set(ok) <= finished and bad in failed and not set(ok) & failed
    assert bad not in finished and canceled not in failed
    assert [rq.fetch_job(job_id).get_status() for job_id in ok] == [RQJobStatus.FINISHED] * 2
    failure = rq.fetch_job(bad)
    assert failure.get_status() is RQJobStatus.FAILED
    assert "invalid_input" in failure.latest_result().exc_string
    assert rq.started_job_registry.get_job_ids(cleanup=False) == []
    assert rq.job_ids == [] and rq.count == 0
    assert Worker.all(connection=redis) == []  # a clean stop leaves RQ's worker list


def test_a_claimed_job_keeps_its_rq_job_until_it_ends(
    queue: JobQueue, redis: Redis, forwards: Forwards, make_server: ServerFactory
) -> None:
    job_id = submitted(queue, make_params(num_inference_steps=2))
    rq = rq_queue(redis, MODEL)
    during: list[tuple] = []
    forwards.hook = lambda states: during.append((rq.job_ids, rq.fetch_job(job_id) is not None))
    make_server().serve(burst=True)
    assert during == [([], True)] * 2  # off the queue, yet there for RQ's bookkeeping
    assert rq.fetch_job(job_id).get_status() is RQJobStatus.FINISHED


def test_a_job_whose_worker_died_ends_as_worker_lost(queue: JobQueue, redis: Redis) -> None:
    params = make_params()
    job_id = submitted(queue, params)
    rq = rq_queue(redis, MODEL)
    books = RQBooks(redis, rq)
    books.register()
    # The worker claims the job and marks it started in RQ, then dies without a word (kill -9).
    assert queue.store.claim(books.name, [Claim(job_id, job_id, rq.key, 4)]) == [job_id]
    books.started(job_id)
    assert books.flush()
    assert job_id in StartedJobRegistry(queue=rq).get_job_ids(cleanup=False)
    # Later, RQ's registry maintenance finds the job abandoned and runs its failure callback.
    StartedJobRegistry(queue=rq).cleanup(timestamp=time.time() + 10 * 24 * 3600)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "worker_lost"


def test_a_plain_rq_worker_fails_jobs_loudly_instead_of_losing_them(
    queue: JobQueue, redis: Redis
) -> None:
    job_id = submitted(queue, make_params())
    rq = rq_queue(redis, MODEL)
    SimpleWorker([rq], connection=redis, serializer=JSONSerializer).work(burst=True)
    job = queue.store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "internal"
    assert rq.fetch_job(job_id).get_status() is RQJobStatus.FAILED
