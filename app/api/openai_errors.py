"""Errors of the OpenAI-compatible routes in OpenAI's shape, so that the official `openai`
package raises its usual exceptions (`BadRequestError`, `AuthenticationError`, ...).

Only routes declared with `OpenAIRoute` answer this way; every other route keeps problem+json.
Errors raised before routing (415 for a non-JSON body, 413 by Content-Length) stay problem+json.
"""

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.errors import RETRY_AFTER_S, STATUS_OF
from app.api.openai_schemas import OpenAIError, OpenAIErrorDetail
from app.core.errors import InvalidRequest, Overloaded, RateLimited, ServiceError, Unauthorized

log = logging.getLogger(__name__)
INVALID = "invalid_request_error"
SERVER = "server_error"
# Fields of a job request named as the OpenAI request names them.
OPENAI_PARAM = {
    "width": "size",
    "height": "size",
    "num_images": "n",
    "init_image": "image",
    "mask_image": "mask",
}
# pydantic error types as OpenAI's codes; anything else is an invalid_value.
_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "string_type": "invalid_type",
    "int_type": "invalid_type",
    "float_type": "invalid_type",
    "bool_type": "invalid_type",
    "greater_than_equal": "integer_below_min_value",
    "less_than_equal": "integer_above_max_value",
    "string_too_short": "empty_string",
    "string_too_long": "string_above_max_length",
    "json_invalid": "invalid_json",
}


class OpenAIProblem(Exception):
    """An error to answer in OpenAI's shape, with its status and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = OpenAIErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        body = OpenAIError(error=self.detail).model_dump()
        return JSONResponse(body, self.status, headers=self.headers)


def _param(field: str) -> str | None:
    """`body.width` -> `size`; `header.idempotency-key` stays a header's name."""
    parts = field.split(".")
    if parts[0] == "body":
        parts = parts[1:]
    if not parts:
        return None
    return OPENAI_PARAM.get(parts[0], ".".join(parts))


def _from_validation(exc: RequestValidationError) -> OpenAIProblem:
    # OpenAI reports one bad parameter at a time; the first one names the param and code.
    errors = exc.errors()
    first = errors[0]
    param = _param(".".join(str(part) for part in first["loc"]))
    if first["type"] == "extra_forbidden":
        message = f"Unknown parameter: '{param}'."
    else:
        message = "; ".join(
            f"{_param('.'.join(str(p) for p in e['loc'])) or 'body'}: {e['msg']}" for e in errors
        )
    return OpenAIProblem(400, message, param=param, code=_CODES.get(first["type"], "invalid_value"))


def _label(field: str) -> str:
    """How a message names a field: `size (width)`, since both sides are `size` to OpenAI."""
    param, name = _param(field), field.split(".")[-1]
    return param if param == name else f"{param} ({name})"


def _from_invalid(exc: InvalidRequest) -> OpenAIProblem:
    first = exc.errors[0]
    param = _param(first.field)
    if param == "model":
        return OpenAIProblem(404, first.message, param="model", code="model_not_found")
    message = "; ".join(dict.fromkeys(f"{_label(e.field)}: {e.message}" for e in exc.errors))
    return OpenAIProblem(400, message, param=param, code="invalid_value")


def to_openai(exc: Exception) -> OpenAIProblem:
    """The OpenAI-shaped answer to any error a route raised."""
    if isinstance(exc, OpenAIProblem):
        return exc
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    if isinstance(exc, InvalidRequest):
        return _from_invalid(exc)
    if isinstance(exc, Unauthorized):
        # As OpenAI answers a missing or wrong key.
        headers = {"WWW-Authenticate": 'Bearer realm="ldm-serve"'}
        return OpenAIProblem(401, exc.detail, code="invalid_api_key", headers=headers)
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
        return OpenAIProblem(429, exc.detail, "requests", None, "rate_limit_exceeded", headers)
    if isinstance(exc, Overloaded):  # queue full, not durable
        headers = {"Retry-After": str(exc.retry_after)}
        return OpenAIProblem(503, exc.detail, SERVER, None, "overloaded", headers)
    if isinstance(exc, ServiceError):
        status = next(code for cls, code in STATUS_OF.items() if isinstance(exc, cls))
        return OpenAIProblem(status, exc.detail, INVALID if status < 500 else SERVER)
    if isinstance(exc, StarletteHTTPException):  # e.g. 413 while the body is read
        detail = exc.detail if isinstance(exc.detail, str) else "invalid request"
        code = "request_too_large" if exc.status_code == 413 else None
        kind = INVALID if exc.status_code < 500 else SERVER
        return OpenAIProblem(exc.status_code, detail, kind, code=code, headers=exc.headers)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        log.warning("queue store unavailable: %s", exc)
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        message = "the queue store is unavailable; retry shortly"
        return OpenAIProblem(503, message, SERVER, None, "unavailable", headers)
    log.exception("unhandled error", exc_info=exc)
    return OpenAIProblem(500, "internal error; the request can be retried", SERVER)


class OpenAIRoute(APIRoute):
    """A route whose every error, its own, its dependencies' and its body's validation,
    answers in OpenAI's error shape instead of problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return to_openai(exc).response()

        return handle


_DESCRIPTIONS = {
    400: "Invalid request; `param` names the field (e.g. `size`, `n`, `prompt`).",
    401: "Missing or wrong API key (`code`: invalid_api_key).",
    404: "Not a served model (`code`: model_not_found).",
    409: "The job was canceled meanwhile (`code`: canceled).",
    413: "The request body is too large.",
    429: "Rate limited; retry after `Retry-After` seconds.",
    500: "The job failed; `code` is its error code (e.g. out_of_memory, worker_lost).",
    503: "Queue full or queue store unavailable; retry after `Retry-After` seconds.",
    504: "Not ready within LDM_SYNC_WAIT_TIMEOUT seconds; the job was canceled.",
}


def error_responses() -> dict[int | str, dict[str, Any]]:
    """For the route declaration: every error status, answered with an OpenAI error body."""
    documented: dict[int | str, dict[str, Any]] = {
        status: {"model": OpenAIError, "description": text}
        for status, text in _DESCRIPTIONS.items()
    }
    # Also keeps FastAPI from listing a 422 that these routes never send.
    documented["4XX"] = {"model": OpenAIError, "description": "Other client errors."}
    return documented
