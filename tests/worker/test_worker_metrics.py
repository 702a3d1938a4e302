"""A worker's own metrics, observed while the runner runs real jobs on the tiny model."""

import time
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.core.jobs import new_job_id
from app.core.queue import JobQueue
from app.core.settings import Settings
from app.core.storage import LocalStorage
from scripts.procs import free_port
from tests.factories import cancel_at_step, make_params, submitted
from tests.worker.test_batching import take
from tests.worker.test_runner import Failing
from worker.metrics import GpuMemory, WorkerMetrics, created_at
from worker.pipeline import ResidentPipeline
from worker.runner import Runner

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


def test_a_batch_is_timed_counted_and_its_jobs_end_succeeded(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    metrics = WorkerMetrics(MODEL, resident.device)
    first = submitted(queue, make_params(seed=1))
    submitted(queue, make_params(seed=2, num_images=2))  # waits behind it: joins its batch
    take(queue, first)
    submitted_at = time.time()
    runner = Runner(resident, queue.store, LocalStorage(tmp_path), max_batch=8, metrics=metrics)
    runner.run(first, make_params(seed=1))
    assert value(metrics, "ldm_worker_denoise_seconds_count") == 1
    assert value(metrics, "ldm_worker_denoise_seconds_sum") > 0
    assert value(metrics, "ldm_worker_batch_images_count") == 1
    assert value(metrics, "ldm_worker_batch_images_sum") == 3  # 1 + 2 images, one call
    assert value(metrics, "ldm_worker_jobs_finished_total", status="succeeded") == 2
    latency = "ldm_worker_job_latency_seconds"
    assert value(metrics, f"{latency}_count", status="succeeded") == 2
    mean = value(metrics, f"{latency}_sum", status="succeeded") / 2
    assert 0 < mean <= time.time() - submitted_at + 5  # created moments before the run


def test_failures_and_cancels_are_counted_by_status(
    queue: JobQueue, resident: ResidentPipeline, tmp_path: Path
) -> None:
    metrics = WorkerMetrics(MODEL)
    broken = submitted(queue, make_params())
    take(queue, broken)
    with pytest.raises(KeyError):
        Runner(Failing(KeyError("bug")), queue.store, LocalStorage(tmp_path), metrics=metrics).run(
            broken, make_params()
        )
    assert value(metrics, "ldm_worker_jobs_finished_total", status="failed") == 1
    assert value(metrics, "ldm_worker_job_latency_seconds_count", status="failed") == 1
    assert value(metrics, "ldm_worker_denoise_seconds_count") == 0  # no call completed

    params = make_params(num_inference_steps=40)
    job_id = submitted(queue, params)
    take(queue, job_id)
    store = queue.store
    cancel_at_step(queue, job_id)
    Runner(resident, store, LocalStorage(tmp_path), metrics=metrics).run(job_id, params)
    assert value(metrics, "ldm_worker_jobs_finished_total", status="canceled") == 1
    assert value(metrics, "ldm_worker_job_latency_seconds_count", status="canceled") == 1
    assert value(metrics, "ldm_worker_jobs_finished_total", status="succeeded") == 0


def test_metrics_are_served_over_http_and_gpu_memory_only_on_cuda(
    resident: ResidentPipeline,
) -> None:
    metrics = WorkerMetrics(MODEL, resident.device)
    metrics.batch_done(4, 0.5)
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
    queue: JobQueue, model_cache: Path, tmp_path: Path
) -> None:
    pipeline = ResidentPipeline.load(
        Settings(model=MODEL, model_cache=model_cache, device="cuda")
    )
    metrics = WorkerMetrics(MODEL, pipeline.device)
    job_id = submitted(queue, make_params())
    Runner(pipeline, queue.store, LocalStorage(tmp_path), metrics=metrics).run(
        job_id, make_params()
    )
    labels = {"device": str(pipeline.device)}
    total = value(metrics, "ldm_worker_gpu_memory_total_bytes", **labels)
    allocated = value(metrics, "ldm_worker_gpu_memory_allocated_bytes", **labels)
    peak = value(metrics, "ldm_worker_gpu_memory_peak_bytes", **labels)
    reserved = value(metrics, "ldm_worker_gpu_memory_reserved_bytes", **labels)
    assert 0 < allocated <= peak <= reserved <= total  # the weights, at least, are resident
