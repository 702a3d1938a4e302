"""What route handlers depend on, built once per app by `create_app`."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from app.api.metrics import Metrics
from app.core.errors import Unauthorized
from app.core.events import JobEvents
from app.core.limits import RateLimiter, ServiceRate
from app.core.loras import Registry
from app.core.models import ModelSpec
from app.core.queue import JobQueue
from app.core.result_cache import ResultCache
from app.core.settings import Settings
from app.core.storage import Storage
from app.core.store import JobStore
from app.core.tenants import OPEN_TENANT, ApiKeys
from app.core.usage import Usage
from app.core.workers import WorkerRegistry


@dataclass
class Services:
    """The app's connections and collaborators; one instance per app, none global."""

    settings: Settings
    redis: Redis
    # For what waits on Redis (live events, synchronous generations) without holding a thread.
    aredis: AsyncRedis
    events: JobEvents
    store: JobStore
    queue: JobQueue
    storage: Storage
    models: dict[str, ModelSpec]
    default_model: str
    metrics: Metrics
    workers: WorkerRegistry
    api_keys: ApiKeys
    service_rate: ServiceRate
    rate_limiter: RateLimiter | None
    loras: Registry
    cache: ResultCache
    usage: Usage


# Dependencies that never block are `async def`: FastAPI runs a plain `def` one in the thread
# pool, a hop per dependency per request that costs more than the dependency itself.
async def get_services(request: Request) -> Services:
    """The services of the app serving this request."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(auto_error=False, description="An API key, when LDM_API_KEYS is set.")


async def current_tenant(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant making the request: from its API key, or the open tenant with no keys set."""
    if services.api_keys.open:
        return OPEN_TENANT
    tenant = services.api_keys.tenant_of(credentials.credentials) if credentials else None
    if tenant is None:
        raise Unauthorized("send a valid API key as 'Authorization: Bearer <key>'")
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
