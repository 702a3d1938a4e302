"""Valid objects for tests to vary."""

from app.core.jobs import JobParams, new_job_id
from app.core.queue import JobQueue


def make_params(**changes: object) -> JobParams:
    """A small, fast text-to-image job on tiny-sd; `changes` override any field."""
    base = dict(
        prompt="a red circle",
        negative_prompt=None,
        mode="text-to-image",
        strength=None,
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        num_images=1,
        seed=42,
        output_format="png",
        model="tiny-sd",
    )
    return JobParams(**(base | changes))


def submitted(queue: JobQueue, params: JobParams) -> str:
    """Submit a job as the API does (record and RQ job in one transaction); its id."""
    job_id = new_job_id()
    queue.submit(job_id, params, "t1")
    return job_id


def cancel_at_step(queue: JobQueue, job_id: str, step: int = 3) -> None:
    """Have the API's cancel of `job_id` arrive once the job has run `step` steps."""
    store = queue.store
    real_report = store.report_progress

    def report(jobs: list[str], done: int, worker: str) -> set[str]:
        if done >= step and not store.get(job_id).cancel_requested:
            queue.cancel(job_id, store.get(job_id).model)
        return real_report(jobs, done, worker)

    store.report_progress = report  # type: ignore[method-assign]
