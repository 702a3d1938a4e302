"""Tracing is off (no-op tracer, no SDK loaded) unless the OTEL_* variables name an endpoint;
on, a job's `traceparent` names the span it was submitted in."""

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.core import tracing

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Nothing listens there: these tests export nothing, they only look at the set-up.
CLOSED = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (*ENDPOINTS, "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    yield
    tracing.shutdown()


def test_without_an_endpoint_tracing_is_off_and_spans_record_nothing() -> None:
    assert tracing.setup("ldm-api") is False
    assert not tracing.enabled()
    assert isinstance(tracing.tracer(), trace.NoOpTracer)
    with tracing.tracer().start_as_current_span("submit") as span:
        assert isinstance(span, trace.NonRecordingSpan)
        assert not span.is_recording()
        assert tracing.traceparent() is None  # a job carries nothing


@pytest.mark.parametrize(
    "switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}]
)
def test_an_endpoint_with_the_sdk_switched_off_stays_off(
    monkeypatch: pytest.MonkeyPatch, switch: dict[str, str]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", CLOSED)
    for name, value in switch.items():
        monkeypatch.setenv(name, value)
    assert tracing.setup("ldm-api") is False
    assert isinstance(tracing.tracer(), trace.NoOpTracer)


def test_a_process_with_tracing_off_never_loads_the_sdk_or_the_exporter() -> None:
    code = (
        "import sys\n"
        "from app.core import tracing\n"
        "assert not tracing.setup('ldm-worker')\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_either_endpoint_turns_it_on_under_the_services_own_name(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, CLOSED)
    assert tracing.setup("ldm-worker") is True
    assert tracing.tracer().start_span("x").is_recording()
    assert tracing._provider.resource.attributes[SERVICE_NAME] == "ldm-worker"


def test_otel_service_name_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", CLOSED)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ldm-api-eu")
    assert tracing.setup("ldm-api") is True
    assert tracing._provider.resource.attributes[SERVICE_NAME] == "ldm-api-eu"


def test_a_jobs_traceparent_names_the_span_it_was_submitted_in() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracing.install(provider)
    with tracing.tracer().start_as_current_span("POST /v1/jobs") as span:
        carried = tracing.traceparent()
    ids = span.get_span_context()
    assert carried == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"
    assert ids.trace_flags.sampled
    parent = trace.get_current_span(tracing.job_context(carried)).get_span_context()
    assert (parent.trace_id, parent.span_id, parent.is_remote) == (ids.trace_id, ids.span_id, True)
    assert not trace.get_current_span(tracing.job_context(None)).get_span_context().is_valid


def test_unix_ns_keeps_every_microsecond() -> None:
    assert tracing.unix_ns("2024-05-01T12:00:00.123457+00:00") == 1714564800_123457000
    assert tracing.unix_ns("2024-05-01T14:00:00.000001+02:00") == 1714564800_000001000
