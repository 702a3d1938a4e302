"""Jobs batched together still get traces of their own: each job's span, under the span it was
submitted in, parents its own stages, with the batch's size on the batched ones."""

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app.core import tracing
from app.core.queue import JobQueue
from tests.factories import make_params, submitted
from tests.worker.conftest import ServerFactory
from worker.traces import TracedFamily

STAGES = ["queue.wait", "admission", "text.encode", "denoise", "vae.decode", "encode.upload"]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.shutdown()


def of_trace(spans: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    found = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    named = {s.name: s for s in found}
    assert len(named) == len(found), [s.name for s in found]  # one span of each name
    return named


def test_jobs_denoised_in_one_batch_each_get_their_own_stage_spans(
    queue: JobQueue, make_server: ServerFactory, spans: InMemorySpanExporter
) -> None:
    submits = []
    for seed in (1, 2):
        with tracing.tracer().start_as_current_span("POST /v1/jobs") as submit:
            submitted(queue, make_params(seed=seed, num_inference_steps=3))
        submits.append(submit)
    server = make_server(max_batch=8)
    server.engine.family = TracedFamily(server.engine.family)
    server.serve(burst=True)

    for submit in submits:
        named = of_trace(spans, submit.context.trace_id)
        job = named["job"]
        assert job.parent.span_id == submit.context.span_id
        assert job.attributes["ldm.job.outcome"] == "succeeded"
        stages = [named[name] for name in STAGES]
        assert all(stage.parent.span_id == job.context.span_id for stage in stages)
        assert named["queue.wait"].start_time == job.start_time
        for before, after in zip(stages, stages[1:], strict=False):
            assert before.end_time <= after.start_time, (before.name, after.name)
        assert stages[-1].end_time <= job.end_time
        # Batched with the other job, yet recorded in this job's trace alone.
        assert named["text.encode"].attributes["ldm.batch.size"] == 2
        assert named["vae.decode"].attributes["ldm.batch.size"] == 2
        assert named["denoise"].attributes["ldm.batch.size.max"] == 2
        assert named["denoise"].attributes["ldm.steps"] == 3


def test_a_job_that_fails_ends_its_span_as_an_error(
    queue: JobQueue, make_server: ServerFactory, spans: InMemorySpanExporter
) -> None:
    with tracing.tracer().start_as_current_span("POST /v1/jobs") as submit:
        # Image-to-image without its init image in storage: the worker cannot read it.
        submitted(queue, make_params(mode="image-to-image", strength=0.5))
    make_server().serve(burst=True)

    job = of_trace(spans, submit.context.trace_id)["job"]
    assert job.attributes["ldm.job.outcome"] == "invalid_input"
    assert job.status.status_code is StatusCode.ERROR
