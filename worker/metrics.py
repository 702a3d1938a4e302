"""This worker's Prometheus metrics: pipeline calls, batch sizes, job latency, GPU memory.

They live in the worker's own registry, served on `LDM_WORKER_METRICS_PORT` (off when unset).
Cluster-wide figures (queues, jobs finished anywhere, live workers) are the API's /metrics.
"""

import logging
import time
from collections.abc import Iterator
from threading import Thread
from wsgiref.simple_server import WSGIServer

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from app.core.jobs import JobStatus

log = logging.getLogger(__name__)

_CROCKFORD = {char: value for value, char in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def created_at(job_id: str) -> float | None:
    """When the API created the job (Unix seconds), from its id: the first 48 of the id's 128
    bits are the creation time in milliseconds (`app.core.jobs.new_job_id`). None if the id
    is not one of ours. This costs the worker no Redis read per job."""
    digits = job_id.removeprefix("j_")
    if len(digits) != 26 or not job_id.startswith("j_"):
        return None
    value = 0
    for char in digits:
        if char not in _CROCKFORD:
            return None
        value = value << 5 | _CROCKFORD[char]
    return (value >> 80) / 1000


class GpuMemory:
    """Collects the CUDA caching allocator's figures for one device at each scrape."""

    def __init__(self, device: torch.device, model: str) -> None:
        self.device = device
        self.labels = [model, str(device)]

    def describe(self) -> Iterator[Metric]:
        """The families `collect` yields, without touching the GPU."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        values = (
            torch.cuda.memory_allocated(self.device),
            torch.cuda.memory_reserved(self.device),
            torch.cuda.max_memory_allocated(self.device),
            torch.cuda.get_device_properties(self.device).total_memory,
        )
        for family, value in zip(families, values, strict=True):
            family.add_metric(self.labels, value)
        return iter(families)

    def _families(self) -> list[GaugeMetricFamily]:
        labels = ["model", "device"]
        return [
            GaugeMetricFamily(
                "ldm_worker_gpu_memory_allocated_bytes", "GPU memory held by tensors", labels=labels
            ),
            GaugeMetricFamily(
                "ldm_worker_gpu_memory_reserved_bytes",
                "GPU memory held by torch's caching allocator (allocated plus cached)",
                labels=labels,
            ),
            GaugeMetricFamily(
                "ldm_worker_gpu_memory_peak_bytes",
                "Most GPU memory held by tensors at once since the worker started",
                labels=labels,
            ),
            GaugeMetricFamily(
                "ldm_worker_gpu_memory_total_bytes", "The GPU's memory", labels=labels
            ),
        ]


class WorkerMetrics:
    """The figures one worker (serving `model`) reports; GPU memory only on a CUDA device."""

    def __init__(self, model: str, device: torch.device | None = None) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        self.denoise = Histogram(
            "ldm_worker_denoise_seconds",
            "Time of one denoiser forward over the active jobs of one latent shape (one step)",
            ["model"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
        )
        self.batch_images = Histogram(
            "ldm_worker_batch_images",
            "Images in one denoiser forward (jobs at their own steps)",
            ["model"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.latency = Histogram(
            "ldm_worker_job_latency_seconds",
            "Time from a job's creation (submit) to its end, for jobs this worker ended",
            ["model", "status"],
            registry=self.registry,
            buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.finished = Counter(
            "ldm_worker_jobs_finished",
            "Jobs this worker ended, by final state",
            ["model", "status"],
            registry=self.registry,
        )
        if device is not None and device.type == "cuda":
            self.registry.register(GpuMemory(device, model))

    def batch_done(self, images: int, seconds: float) -> None:
        """One denoiser forward over `images` images took `seconds`."""
        self.denoise.labels(self.model).observe(seconds)
        self.batch_images.labels(self.model).observe(images)

    def job_ended(self, job_id: str, status: JobStatus) -> None:
        """This worker moved the job to the terminal `status`."""
        self.finished.labels(self.model, status.value).inc()
        created = created_at(job_id)
        if created is not None:
            # Wall clocks of two hosts (API, worker): NTP keeps them well within a bucket.
            latency = max(0.0, time.time() - created)
            self.latency.labels(self.model, status.value).observe(latency)

    def serve(self, port: int | None) -> tuple[WSGIServer, Thread] | None:
        """Serve /metrics on `port` (all interfaces) in a daemon thread; None: off."""
        if port is None:
            return None
        server, thread = start_http_server(port, registry=self.registry)
        log.info("serving metrics on port %d", server.server_port)
        return server, thread
