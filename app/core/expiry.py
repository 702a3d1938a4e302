"""Result expiry: once a job's record has expired, its files go too. Nothing grows unbounded."""

from app.core.storage import Storage
from app.core.store import JobStore


def sweep_expired(store: JobStore, storage: Storage, now: float | None = None) -> int:
    """Delete the files of every job whose record has expired; returns how many jobs.

    Safe to run from every API replica at once: deleting is idempotent and a job is unbooked
    only after its files are gone, so a crash mid-sweep leaves it for the next sweep.
    """
    swept = 0
    while True:
        batch = store.expired(store.now() if now is None else now)
        # The booking is a second or so early at worst; files go only once the record has.
        gone = [job_id for job_id in batch if not store.exists(job_id)]
        for job_id in gone:
            storage.delete_prefix(job_id)
            store.forget(job_id)
        swept += len(gone)
        if len(gone) < len(batch) or not batch:
            return swept
