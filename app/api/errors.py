"""Every error leaves as RFC 9457 problem+json; service errors get their status codes here."""

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.schemas import FieldProblem, Problem
from app.core.errors import (
    ImageNotFound,
    InvalidRequest,
    JobConflict,
    JobNotFound,
    NotDurable,
    Overloaded,
    QueueFull,
    RateLimited,
    ServiceError,
    Unauthorized,
)

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5
STATUS_OF: dict[type[ServiceError], int] = {
    JobNotFound: 404,
    ImageNotFound: 404,
    JobConflict: 409,
    InvalidRequest: 422,
    QueueFull: 503,
    NotDurable: 503,
    RateLimited: 429,
    Unauthorized: 401,
}
# For route declarations, so that /openapi.json documents the problem bodies.
PROBLEM_RESPONSE: dict[str, Any] = {"model": Problem, "content": {PROBLEM_JSON: {}}}


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit (an HTTPException so FastAPI lets it pass)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


def problem(
    status: int,
    detail: str,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True), status, headers=headers, media_type=PROBLEM_JSON
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [FieldProblem(field=_field_name(e["loc"]), message=e["msg"]) for e in exc.errors()]
    fields = ", ".join(sorted({e.field for e in errors}))
    return problem(422, f"invalid request: {fields}", errors)


async def _service(_: Request, exc: ServiceError) -> JSONResponse:
    status = next(code for cls, code in STATUS_OF.items() if isinstance(exc, cls))
    errors = None
    if isinstance(exc, InvalidRequest):
        errors = [FieldProblem(field=e.field, message=e.message) for e in exc.errors]
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(exc.retry_after)}
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="ldm-serve"'}
    return problem(status, exc.detail, errors, headers)


async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("queue store unavailable: %s", exc)
    return problem(
        503,
        "the queue store is unavailable; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal error; the request can be retried")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to a problem+json answer; no stack trace ever leaves."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(Exception, _internal)
