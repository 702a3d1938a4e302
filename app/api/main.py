"""The FastAPI application, built by `create_app()`."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import mcp_server
from app.api.cluster_metrics import ClusterCollector
from app.api.context import RequestContext
from app.api.deps import Services
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit, JsonBodies
from app.api.metrics import Metrics, MetricsMiddleware
from app.api.openapi import document_limits
from app.api.routes import edits, events, images, jobs, playground, service, usage
from app.api.tracing import TraceRequests
from app.api.usage_metrics import UsageCollector
from app.core import tracing
from app.core.events import JobEvents
from app.core.expiry import sweep_expired
from app.core.limits import RateLimiter, ServiceRate
from app.core.loras import registry_from
from app.core.models import model_spec
from app.core.queue import JobQueue
from app.core.recovery import recover_lost_jobs
from app.core.redis_client import connect, connect_async
from app.core.result_cache import ResultCache
from app.core.settings import Settings, get_settings
from app.core.storage import open_storage
from app.core.store import JobStore
from app.core.tenants import ApiKeys
from app.core.usage import Usage
from app.core.workers import WorkerRegistry

log = logging.getLogger(__name__)


def build_services(settings: Settings) -> Services:
    """Connect to Redis and storage; nothing is contacted until the first request."""
    redis = connect(settings, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    api_keys, usage_book = ApiKeys(settings.api_keys), Usage(redis)
    store = JobStore(redis, settings.result_ttl)
    # Blocking reads wait up to a second (events.IDLE_MS): the socket timeout must exceed it.
    aredis = connect_async(settings, socket_connect_timeout=2, socket_timeout=10)
    return Services(
        settings=settings,
        redis=redis,
        aredis=aredis,
        events=JobEvents(aredis),
        store=store,
        # Behind Sentinel, a job counts as accepted once a replica has it too.
        queue=JobQueue(
            redis, store, settings.job_timeout, replicas=int(bool(settings.redis_sentinels))
        ),
        storage=open_storage(settings),
        models={name: model_spec(settings, name) for name in settings.models},
        default_model=settings.model,
        metrics=Metrics(
            ClusterCollector(redis, settings.models), UsageCollector(usage_book, api_keys.tenants)
        ),
        workers=WorkerRegistry(redis),
        api_keys=api_keys,
        service_rate=ServiceRate(redis),
        rate_limiter=(
            RateLimiter(redis, settings.rate_limit, settings.rate_burst)
            if settings.rate_limit
            else None
        ),
        loras=registry_from(settings),
        cache=ResultCache(redis, store, settings.cache_shared),
        usage=usage_book,
    )


def housekeeping(services: Services) -> None:
    """One round: expired jobs' files go, jobs whose worker died run again."""
    sweep_expired(services.store, services.storage)
    recover_lost_jobs(
        services.queue, services.workers, list(services.models), services.settings.max_attempts
    )


async def housekeeping_forever(services: Services) -> None:
    """`housekeeping` every `sweep_interval` seconds, whatever goes wrong once."""
    while True:
        try:
            await asyncio.to_thread(housekeeping, services)
        except Exception:
            log.exception("housekeeping failed; retrying in %s s", services.settings.sweep_interval)
        await asyncio.sleep(services.settings.sweep_interval)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new API app; `settings` defaults to the environment's."""
    services = build_services(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = app.state.services
        if services.api_keys.open:
            log.warning(
                "LDM_API_KEYS is not set: the API is OPEN, anyone who reaches it can submit "
                "jobs and read every job. Set tenant:key pairs before exposing it."
            )
        sweeper = asyncio.create_task(housekeeping_forever(services))
        async with app.state.mcp.run():  # MCP's transport (its tasks) lives with the app
            yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        services.redis.close()
        await services.aredis.aclose()
        tracing.shutdown()  # the last requests' spans go out before the process does

    app = FastAPI(
        title="ldm-serve",
        version="1",
        summary="Asynchronous text-to-image and image-to-image generation.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.mcp = mcp_server.McpService(services)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(images.router)
    app.include_router(edits.router)
    app.include_router(service.router)
    app.include_router(playground.router)
    app.include_router(usage.router)
    app.include_router(mcp_server.router)
    document_limits(app, services.settings)
    app.add_middleware(JsonBodies, form_paths={edits.PATH})
    app.add_middleware(BodySizeLimit, max_bytes=services.settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.add_middleware(RequestContext)
    if tracing.setup("ldm-api"):  # off unless an OTLP endpoint is set (OTEL_* variables)
        app.add_middleware(TraceRequests)  # outermost: its span covers the whole request
    return app
