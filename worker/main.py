"""Worker start-up: load and warm the pipeline, then take jobs from the model's queue."""

import logging
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from app.core.limits import ServiceRate
from app.core.models import ModelSpec, model_spec
from app.core.queue import rq_queue
from app.core.redis_client import connect
from app.core.settings import Settings, get_settings
from app.core.storage import open_storage
from app.core.store import JobStore
from app.core.workers import WorkerRegistry
from worker import tasks
from worker.finisher import Finisher
from worker.heartbeat import Heartbeat
from worker.metrics import WorkerMetrics
from worker.pipeline import ResidentPipeline
from worker.runner import Runner
from worker.webhooks import Deliverer

log = logging.getLogger("worker")


def main() -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT (it finishes the current job)."""
    settings = get_settings()
    spec = model_spec(settings)
    started = time.perf_counter()
    pipeline = ResidentPipeline.load(settings)
    pipeline.warm_up(spec, settings)
    log.info("pipeline ready in %.1f s on %s", time.perf_counter() - started, pipeline.device)
    serve(settings, spec, pipeline, connect(settings, health_check_interval=30))


def serve(
    settings: Settings,
    spec: ModelSpec,
    pipeline: ResidentPipeline,
    redis: Redis,
    burst: bool = False,
) -> Runner:
    """Take jobs for `spec` until asked to stop (or, with `burst`, until the queue is empty)."""
    store = JobStore(redis, settings.result_ttl)
    finisher = Finisher()
    metrics = WorkerMetrics(spec.name, pipeline.device)
    runner = Runner(
        pipeline,
        store,
        open_storage(settings),
        service_rate=ServiceRate(redis),
        max_batch=spec.max_batch,
        finisher=finisher,
        metrics=metrics,
    )
    tasks.install(runner)
    metrics.serve(settings.worker_metrics_port)  # off unless LDM_WORKER_METRICS_PORT is set
    # Webhooks go out on a thread of their own; a job never waits for a receiver.
    deliverer = Deliverer.start_if_enabled(settings, redis, store)
    # SimpleWorker runs jobs in this process: a fork would lose the resident pipeline (and
    # CUDA cannot be used after fork); its job timeout still works, by SIGALRM.
    while True:
        heartbeat = None
        try:
            worker = SimpleWorker(
                [rq_queue(redis, spec.name)], connection=redis, serializer=JSONSerializer
            )
            runner.rename(worker.name)
            heartbeat = Heartbeat(WorkerRegistry(redis), spec.name, worker.name)
            heartbeat.start()
            worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level)
            finisher.close()  # the last images are stored before the process exits
            if deliverer is not None:
                deliverer.stop()  # sends what the last jobs booked, if it can
            return runner  # asked to stop (SIGTERM/SIGINT): the job in hand is done
        except RedisError:
            # Redis went away between jobs, where RQ gives up (a restart, a failover; even
            # registering the worker needs it): keep the loaded pipeline and take jobs again
            # once it answers.
            log.warning("lost Redis; taking jobs again in 1 s", exc_info=True)
            time.sleep(1)
        finally:
            if heartbeat is not None:
                heartbeat.stop()
