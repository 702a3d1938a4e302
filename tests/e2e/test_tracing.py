"""One trace per job across processes: a real API and worker export over OTLP/HTTP to a
receiver in this test, and a job's spans form one tree under the client's `traceparent`."""

import gzip
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model

STAGES = ["queue.wait", "admission", "text.encode", "denoise", "vae.decode", "encode.upload"]


@dataclass(frozen=True)
class Span:
    """A received span, with what the assertions need."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start: int
    end: int
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value"))


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver (protobuf, as the SDK's exporter sends) on a free port."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start=s.start_time_unix_nano,
                            end=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self.lock:
            self.spans += received

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        self.server.receive(body)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reports what matters


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, receiver: Receiver
) -> Iterator[LocalStack]:
    """API and worker exporting to `receiver`, in batches every 100 ms (standard variables)."""
    ensure_tiny_model(model_cache)
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with LocalStack(tmp_path_factory.mktemp("traced"), model_cache, **otel) as stack:
        stack.start_api()
        stack.start_worker()
        yield stack


def client_span() -> tuple[str, str, dict[str, str]]:
    """A client's trace id, span id and the `traceparent` header naming them (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def spans_of(receiver: Receiver, trace_id: str, names: set[str], timeout: float = 30) -> dict:
    """The trace's spans by name, once every one of `names` has arrived."""
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.of_trace(trace_id)
        if names <= {s.name for s in spans}:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"trace {trace_id} has only {sorted(s.name for s in spans)}")
        time.sleep(0.05)
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), sorted(s.name for s in spans)  # one of each
    return named


def assert_job_tree(named: dict[str, Span], submit: Span, steps: int) -> None:
    """The worker's `job` span is the submit's child; the stages are its children, in order."""
    job = named["job"]
    assert (job.service, job.parent_id) == ("ldm-worker", submit.span_id)
    assert job.attributes["ldm.job.outcome"] == "succeeded"
    assert submit.start <= job.start  # the job was created during its submit
    stages = [named[name] for name in STAGES]
    for stage in stages:
        assert (stage.service, stage.parent_id) == ("ldm-worker", job.span_id), stage.name
        assert job.start <= stage.start <= stage.end <= job.end, stage.name
    for before, after in zip(stages, stages[1:], strict=False):
        assert before.end <= after.start, (before.name, after.name)
    assert named["queue.wait"].start == job.start  # from the job's creation to its claim
    assert named["denoise"].attributes["ldm.steps"] == steps
    assert named["text.encode"].attributes["ldm.batch.size"] >= 1


def test_a_jobs_spans_form_one_tree_under_the_clients_span(
    traced: LocalStack, receiver: Receiver
) -> None:
    trace_id, span_id, header = client_span()
    body = {"prompt": "a traced circle", "num_inference_steps": 3, "seed": 5}
    response = traced.http.post("/v1/jobs", json=body, headers=header)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert traced.wait(job_id)["status"] == "succeeded"

    named = spans_of(receiver, trace_id, {"POST /v1/jobs", "job", *STAGES})
    submit = named["POST /v1/jobs"]
    assert (submit.service, submit.parent_id) == ("ldm-api", span_id)
    assert submit.attributes["http.route"] == "/v1/jobs"
    assert submit.attributes["http.response.status_code"] == 202
    assert named["job"].attributes["ldm.job.id"] == job_id
    assert_job_tree(named, submit, steps=3)


def test_an_openai_generation_carries_the_clients_trace_to_its_worker(
    traced: LocalStack, receiver: Receiver
) -> None:
    trace_id, span_id, header = client_span()
    body = {"prompt": "a traced square", "num_inference_steps": 2}
    response = traced.http.post("/v1/images/generations", json=body, headers=header, timeout=60)
    assert response.status_code == 200, response.text

    route = "POST /v1/images/generations"
    named = spans_of(receiver, trace_id, {route, "job", *STAGES})
    assert (named[route].service, named[route].parent_id) == ("ldm-api", span_id)
    assert_job_tree(named, named[route], steps=2)


def test_probes_make_no_spans_and_other_requests_one_each(
    traced: LocalStack, receiver: Receiver
) -> None:
    trace_id, _, header = client_span()
    assert traced.http.get("/healthz", headers=header).status_code == 200
    assert traced.http.get("/v1/jobs/j_unknown", headers=header).status_code == 404
    named = spans_of(receiver, trace_id, {"GET /v1/jobs/{job_id}"})
    assert set(named) == {"GET /v1/jobs/{job_id}"}  # probes make no spans
    assert named["GET /v1/jobs/{job_id}"].attributes["http.response.status_code"] == 404
