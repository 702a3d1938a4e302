"""Service endpoints: liveness, readiness, metrics, the served models."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from app.api.deps import Services, ServicesDep, TenantDep
from app.api.errors import PROBLEM_RESPONSE, RETRY_AFTER_S, problem
from app.api.schemas import Health, LoraPublic, ModelLimits, ModelList, ModelPublic
from app.core.models import ModelSpec

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: answers while the process runs."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: PROBLEM_RESPONSE})
def readyz(services: ServicesDep) -> Health | JSONResponse:
    """Readiness: 200 when the queue store answers, else 503."""
    try:
        services.redis.ping()
    except RedisError:
        return problem(
            503, "the queue store does not answer", headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    return Health(status="ready")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    # Cluster figures are read from Redis as the registry is collected (cluster_metrics).
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _loras(services: Services, spec: ModelSpec) -> list[LoraPublic]:
    if not spec.takes_loras:
        return []
    adapters = services.loras.adapters(spec.name).values()
    return [LoraPublic(name=a.name, sha256=a.sha256) for a in adapters]


@router.get(
    "/v1/models", response_model=ModelList, tags=["models"], responses={401: PROBLEM_RESPONSE}
)
def list_models(services: ServicesDep, _tenant: TenantDep) -> ModelList:
    """The served models: defaults, limits, family, schedulers, queue length and live workers."""
    settings = services.settings
    limits = ModelLimits(
        max_side=settings.max_side,
        max_pixels=settings.max_pixels,
        max_steps=settings.max_steps,
        max_images=settings.max_images,
    )
    return ModelList(
        models=[
            ModelPublic(
                name=spec.name,
                default=spec.name == services.default_model,
                native_width=spec.native_size,
                native_height=spec.native_size,
                default_steps=spec.default_steps,
                default_guidance_scale=spec.default_guidance_scale,
                limits=limits,
                queue_length=services.queue.depth(spec.name),
                live_workers=services.workers.live(spec.name),
                family=spec.family,
                size_multiple=spec.size_multiple,
                schedulers=list(spec.schedulers),
                modes=list(spec.modes),
                loras=_loras(services, spec),
                engine=spec.engine,
            )
            for spec in services.models.values()
        ]
    )
