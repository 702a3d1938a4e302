"""One server span per HTTP request, the child of the client's `traceparent` when it sends one.

Hand-made rather than opentelemetry-instrumentation-fastapi: one span per request is all the
job traces need, while the instrumentation brings several more packages and, by default, a span
per ASGI message too (one per event of a Server-Sent Events stream). Installed only when tracing
is on (app/api/main.py), so a service without it pays nothing per request."""

from typing import Any

from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import tracing

# Probes and scrapes come every few seconds from machines, not clients: a trace each is noise.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class TraceRequests:
    """ASGI middleware: a `SERVER` span named `METHOD /route/{template}` around each request;
    a job submitted inside it carries it (`tracing.traceparent()`) to its worker."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.tracer().start_as_current_span(
            method,
            context=tracing.request_context(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                # Named by route template once routing found it (never by raw path: ids).
                route: Any = scope.get("route")
                if template := getattr(route, "path", None):
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
