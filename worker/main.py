"""Worker start-up: load and warm the pipeline, then serve the model's queue until SIGTERM."""

import logging
import time

from redis import Redis

from app.core import tracing
from app.core.models import ModelSpec, model_spec
from app.core.redis_client import connect
from app.core.result_cache import ResultCache
from app.core.settings import Settings, get_settings
from app.core.storage import open_storage
from app.core.store import JobStore
from app.core.usage import Usage
from app.core.workers import WorkerRegistry
from worker import tasks
from worker.billing import Billing
from worker.heartbeat import Heartbeat
from worker.metrics import WorkerMetrics
from worker.pipeline import ResidentPipeline
from worker.serve import Server
from worker.traces import traced
from worker.webhooks import Deliverer

log = logging.getLogger("worker")


def main() -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT (its active jobs finish first)."""
    settings = get_settings()
    tracing.setup("ldm-worker")  # off unless an OTLP endpoint is set (OTEL_* variables)
    spec = model_spec(settings)
    started = time.perf_counter()
    pipeline = ResidentPipeline.load(settings)
    pipeline.warm_up(spec, settings)
    fit = pipeline.fit_budget(spec, settings)
    log.info(
        "pipeline ready in %.1f s on %s; engine: %s; budget: %s",
        time.perf_counter() - started,
        pipeline.device,
        "step" if pipeline.family.name != "pipeline" else "pipeline (one call per job)",
        fit.describe() if fit else f"{spec.max_batch} guided images a forward",
    )
    try:
        serve(settings, spec, pipeline, connect(settings, health_check_interval=30))
    finally:
        tracing.shutdown()  # the last jobs' spans go out before the process does


def serve(
    settings: Settings,
    spec: ModelSpec,
    pipeline: ResidentPipeline,
    redis: Redis,
    burst: bool = False,
) -> Server:
    """Take jobs for `spec` until asked to stop (or, with `burst`, until the queue is empty)."""
    metrics = WorkerMetrics(spec.name, pipeline.device)
    # The budget `fit_budget` set at start, else (tests, benches) the model's batch.
    engine = pipeline.engine(None if pipeline.max_cost else spec.max_batch)
    engine.family = traced(engine.family)  # each job's stages in its own trace, when on
    cache = ResultCache(redis, JobStore(redis, settings.result_ttl))
    billing = Billing(Usage(redis), cache, spec.name, pipeline.version)
    server = Server(settings, spec, engine, redis, open_storage(settings), metrics, billing)
    tasks.install(server)
    metrics.serve(settings.worker_metrics_port)  # off unless LDM_WORKER_METRICS_PORT is set
    # Webhooks go out on a thread of their own; a job never waits for a receiver.
    deliverer = Deliverer.start_if_enabled(settings, redis, server.store)
    heartbeat = Heartbeat(WorkerRegistry(redis), spec.name, server.name)
    heartbeat.start()
    try:
        server.serve(burst=burst)
    finally:
        heartbeat.stop()
        if deliverer is not None:
            deliverer.stop()  # sends what the last jobs booked, if it can
    return server
