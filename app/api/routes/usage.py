"""GET /v1/usage: the calling tenant's own usage, what its bill is made from."""

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import ServicesDep, TenantDep
from app.api.errors import PROBLEM_RESPONSE
from app.core.errors import FieldError, InvalidRequest
from app.core.usage import MAX_RANGE_DAYS, UsageReport, today

router = APIRouter(prefix="/v1/usage", tags=["usage"])
# ISO days only: a bare number would otherwise pass as a Unix time.
Day = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$", description="YYYY-MM-DD (UTC)")]


def _day(value: str | None, field: str) -> date | None:
    try:
        return date.fromisoformat(value) if value is not None else None
    except ValueError:
        raise InvalidRequest([FieldError(f"query.{field}", "not a calendar day")]) from None


@router.get(
    "", response_model=UsageReport, responses={401: PROBLEM_RESPONSE, 422: PROBLEM_RESPONSE}
)
def get_usage(
    request: Request, services: ServicesDep, tenant: TenantDep, start: Day = None, end: Day = None
) -> UsageReport:
    """Your jobs, images, denoising steps and worker seconds, per model and UTC day, from
    `start` (default: 30 days before `end`) to `end` (default: today)."""
    # A misspelt parameter would silently get the default range: name it instead.
    unknown = [FieldError(f"query.{name}", "unknown parameter") for name in request.query_params
               if name not in ("start", "end")]  # fmt: skip
    if unknown:
        raise InvalidRequest(unknown)
    last = _day(end, "end") or today()
    first = _day(start, "start") or last - timedelta(days=min(29, (last - date.min).days))
    if first > last:
        raise InvalidRequest([FieldError("query.start", "must not be after end")])
    if (last - first).days >= MAX_RANGE_DAYS:
        message = f"at most {MAX_RANGE_DAYS} days at once; ask for the rest separately"
        raise InvalidRequest([FieldError("query.end", message)])
    return services.usage.report(tenant, first, last)
