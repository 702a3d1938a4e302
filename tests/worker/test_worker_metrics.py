"""A worker's own metrics, observed while its server runs real jobs on the tiny model."""

import time
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from app.core.jobs import JobStatus, new_job_id
from app.core.models import model_spec
from app.core.queue import JobQueue
from app.core.settings import Settings
from app.core.storage import LocalStorage
from scripts.procs import free_port
from tests.factories import cancel_at_step, make_params, submitted
from tests.worker.conftest import Forwards, ServerFactory
from worker.engine.state import JobState
from worker.metrics import GpuMemory, WorkerMetrics, created_at
from worker.pipeline import ResidentPipeline
from worker.serve import Server

MODEL = "tiny-sd"
GPU_FAMILIES = {
    "ldm_worker_gpu_memory_allocated_bytes",
    "ldm_worker_gpu_memory_reserved_bytes",
    "ldm_worker_gpu_memory_peak_bytes",
    "ldm_worker_gpu_memory_total_bytes",
}


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    found = metrics.registry.get_sample_value(name, {"model": MODEL} | labels)
    return 0.0 if found is None else found


def test_job_ids_tell_when_the_job_was_created() -> None:
    before = time.time()
    job_id = new_job_id()
    assert before - 0.002 <= created_at(job_id) <= time.time() + 0.002
    for foreign in ("j_short", "x_" + job_id[2:], job_id[:-1] + "U", ""):
        assert created_at(foreign) is None


def test_finished_jobs_are_counted_by_status_with_their_latency(
    queue: JobQueue, forwards: Forwards, make_server: ServerFactory
) -> None:
    metrics = WorkerMetrics(MODEL)
    succeeded = [submitted(queue, make_params(seed=s, num_inference_steps=3)) for s in (1, 2)]
    failed = submitted(queue, make_params(seed=3, num_inference_steps=3, width=128, height=128))
    canceled = submitted(queue, make_params(seed=4, num_inference_steps=30))
    submitted_at = time.time()

    def broken_at_128(states: list[JobState]) -> None:
        if states[0].request.params.width == 128:
            raise KeyError("bug")

    forwards.hook = broken_at_128
    server = make_server(metrics=metrics)
    cancel_at_step(queue, canceled, step=2, store=server.store)
    server.serve(burst=True)
    ends = {
        JobStatus.SUCCEEDED: succeeded,
        JobStatus.FAILED: [failed],
        JobStatus.CANCELED: [canceled],
    }
    finished = "ldm_worker_jobs_finished_total"
    latency = "ldm_worker_job_latency_seconds"
    for status, ids in ends.items():
        assert [queue.store.get(job_id).status for job_id in ids] == [status] * len(ids)
        assert value(metrics, finished, status=status.value) == len(ids)
        assert value(metrics, f"{latency}_count", status=status.value) == len(ids)
        mean = value(metrics, f"{latency}_sum", status=status.value) / len(ids)
        assert 0 < mean <= time.time() - submitted_at + 5  # created moments before the run


def test_denoising_is_timed_and_its_batch_sizes_counted(
    queue: JobQueue, make_server: ServerFactory
) -> None:
    # The dashboard's "denoise time" and "images per forward" panels read these.
    metrics = WorkerMetrics(MODEL)
    submitted(queue, make_params(seed=1))
    submitted(queue, make_params(seed=2, num_images=2))
    make_server(metrics=metrics).serve(burst=True)
    assert value(metrics, "ldm_worker_denoise_seconds_count") >= 1
    assert value(metrics, "ldm_worker_denoise_seconds_sum") > 0
    assert value(metrics, "ldm_worker_batch_images_count") >= 1
    assert value(metrics, "ldm_worker_batch_images_sum") >= 3  # 1 + 2 images at least
    assert value(metrics, "ldm_worker_jobs_finished_total", status="succeeded") == 2


def test_metrics_are_served_over_http_and_gpu_memory_only_on_cuda(
    resident: ResidentPipeline,
) -> None:
    metrics = WorkerMetrics(MODEL, resident.device)
    metrics.batch_done(4, 0.5)
    metrics.job_ended(new_job_id(), JobStatus.SUCCEEDED)
    assert metrics.serve(None) is None  # LDM_WORKER_METRICS_PORT unset: nothing listens
    served = metrics.serve(free_port())
    assert served is not None
    server, _ = served
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"ldm_worker_denoise_seconds", "ldm_worker_batch_images"} <= names
    assert {"ldm_worker_job_latency_seconds", "ldm_worker_jobs_finished"} <= names
    assert resident.device.type == "cpu"
    assert not names & GPU_FAMILIES  # absent on a CPU worker, not zero


def test_gpu_families_are_the_ones_dashboards_query() -> None:
    # Named without touching a GPU (the dashboard test checks its queries against these).
    names = {family.name for family in GpuMemory(torch.device("cuda"), MODEL).describe()}
    assert names == GPU_FAMILIES


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_memory_is_reported_on_cuda(
    queue: JobQueue, redis: Redis, settings: Settings, model_cache: Path, tmp_path: Path
) -> None:
    pipeline = ResidentPipeline.load(Settings(model=MODEL, model_cache=model_cache, device="cuda"))
    metrics = WorkerMetrics(MODEL, pipeline.device)
    job_id = submitted(queue, make_params())
    server = Server(
        settings, model_spec(settings), pipeline.engine(8), redis, LocalStorage(tmp_path), metrics
    )
    server.serve(burst=True)
    assert queue.store.get(job_id).status is JobStatus.SUCCEEDED
    labels = {"device": str(pipeline.device)}
    total = value(metrics, "ldm_worker_gpu_memory_total_bytes", **labels)
    allocated = value(metrics, "ldm_worker_gpu_memory_allocated_bytes", **labels)
    peak = value(metrics, "ldm_worker_gpu_memory_peak_bytes", **labels)
    reserved = value(metrics, "ldm_worker_gpu_memory_reserved_bytes", **labels)
    assert 0 < allocated <= peak <= reserved <= total  # the weights, at least, are resident
