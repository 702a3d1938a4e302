"""Result expiry: records go with Redis' TTL, files with the sweep (real Redis, real folder)."""

from pathlib import Path

import pytest
from redis import Redis

from app.core.expiry import sweep_expired
from app.core.jobs import JobError, new_job_id
from app.core.queue import JobQueue
from app.core.storage import LocalStorage, ObjectNotFound, image_key
from app.core.store import EXPIRY_KEY, JobStore
from tests.factories import make_params

TTL = 100


def submitted(queue: JobQueue, storage: LocalStorage) -> str:
    job_id = new_job_id()
    queue.submit(job_id, make_params(), "t1")
    storage.put(image_key(job_id, 0, "png", attempt=1), b"png", "image/png")
    return job_id


def test_terminal_jobs_expire_and_their_files_are_swept(redis: Redis, tmp_path: Path) -> None:
    store, storage = JobStore(redis, result_ttl=TTL), LocalStorage(tmp_path)
    queue = JobQueue(redis, store, job_timeout=30)
    done, failed, canceled, running = (submitted(queue, storage) for _ in range(4))
    for job_id in (done, failed, running):
        store.start(job_id, 4)
    store.succeed(done, [])
    # What a run given up for dead left: it goes with the job's other files.
    storage.put(image_key(done, 0, "png", attempt=2), b"late", "image/png")
    store.fail(failed, JobError(code="internal", message="x"))
    queue.cancel(canceled, "tiny-sd")
    for job_id in (done, failed, canceled):
        assert 0 < redis.ttl(store.key(job_id)) <= TTL
    assert redis.ttl(store.key(running)) == -1  # live jobs never expire

    assert sweep_expired(store, storage) == 0  # nothing is due yet
    assert storage.get(image_key(done, 0, "png", attempt=1)) == b"png"
    later = store.now() + TTL + 1
    # Due, but a record still there (its TTL runs on the millisecond) keeps its files.
    assert sweep_expired(store, storage, now=later) == 0
    assert storage.get(image_key(done, 0, "png", attempt=1)) == b"png"

    for job_id in (done, failed, canceled):
        redis.delete(store.key(job_id))  # what Redis does when the TTL runs out
    assert sweep_expired(store, storage, now=later) == 3
    for job_id in (done, failed, canceled):
        assert not (tmp_path / job_id).exists()
    assert storage.get(image_key(running, 0, "png", attempt=1)) == b"png"
    assert redis.zcard(EXPIRY_KEY) == 0


def test_a_sweep_that_fails_leaves_the_job_for_the_next(redis: Redis, tmp_path: Path) -> None:
    store, storage = JobStore(redis, result_ttl=TTL), LocalStorage(tmp_path)
    queue = JobQueue(redis, store, job_timeout=30)
    job_id = submitted(queue, storage)
    queue.cancel(job_id, "tiny-sd")

    class Broken(LocalStorage):
        def delete_prefix(self, prefix: str) -> None:
            raise OSError("storage down")

    later = store.now() + TTL + 1
    redis.delete(store.key(job_id))
    with pytest.raises(OSError):
        sweep_expired(store, Broken(tmp_path), now=later)
    assert store.expired(later) == [job_id]
    assert sweep_expired(store, storage, now=later) == 1
    with pytest.raises(ObjectNotFound):
        storage.get(image_key(job_id, 0, "png", attempt=1))
