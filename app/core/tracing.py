"""OpenTelemetry tracing, set up from the standard `OTEL_*` environment variables.

On only when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT`) and neither `OTEL_SDK_DISABLED=true` nor
`OTEL_TRACES_EXPORTER=none` turns it off. Off, `tracer()` is the API's no-op tracer and the SDK
and exporter are never imported: call sites cost a function call. A job carries its trace from
the API to its worker as a W3C `traceparent` string in its record (see app/core/queue.py)."""

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# The job record's field is W3C's, whatever OTEL_PROPAGATORS says about HTTP headers.
_W3C = TraceContextTextMapPropagator()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NOOP = trace.NoOpTracer()
_provider: "TracerProvider | None" = None
_tracer: trace.Tracer = _NOOP


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def setup(service: str) -> bool:
    """Export this process's spans over OTLP/HTTP as `service` (unless `OTEL_SERVICE_NAME` or
    `OTEL_RESOURCE_ATTRIBUTES` names it) if the environment asks; whether tracing is on."""
    if _provider is not None:
        return True
    if not configured():
        return False
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    # The sampler (OTEL_TRACES_SAMPLER[_ARG]), the exporter (endpoint, headers, timeout) and the
    # batching (OTEL_BSP_*) read their own variables.
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return True


def install(provider: "TracerProvider") -> None:
    """Trace through `provider` (what `setup` does; tests give one with an in-memory exporter)."""
    global _provider, _tracer
    _provider, _tracer = provider, provider.get_tracer("ldm-serve")


def shutdown() -> None:
    """Export the spans still buffered and stop (a process's last step); a no-op when off."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, _NOOP
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    """Whether spans are exported (`setup` found an endpoint)."""
    return _provider is not None


def tracer() -> trace.Tracer:
    """This process's tracer: the SDK's when tracing is on, else a no-op one."""
    return _tracer


def traceparent() -> str | None:
    """The current span's W3C `traceparent`, for a job to carry; None when tracing is off."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def job_context(traceparent: str | None) -> context.Context:
    """The context a job's `traceparent` names (an empty one, a new trace, without it)."""
    return _W3C.extract({"traceparent": traceparent}) if traceparent else context.Context()


def request_context(headers: Mapping[str, str]) -> context.Context:
    """The context an HTTP request's headers carry (`traceparent`, or what OTEL_PROPAGATORS
    names), for the request's span to be its child."""
    from opentelemetry import propagate  # loads the configured propagators once

    return propagate.extract(headers)


def unix_ns(instant: str) -> int:
    """Nanoseconds since the epoch of an ISO 8601 instant with a zone, exact to the
    microsecond (a float timestamp would round it)."""
    delta = datetime.fromisoformat(instant) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000
