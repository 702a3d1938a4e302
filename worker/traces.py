"""One job's spans on its worker, in the trace its submit began (the `traceparent` its record
carries): a `job` span from the job's creation to its end, with the stages as its children, in
order: `queue.wait` (created to claimed), `admission` (claimed to taken in by the engine: room,
LoRA adapters), `text.encode` (its prompt, with its batch-mates', and its first latents),
`denoise` (every step, one span), `vae.decode` and `encode.upload` (encoded, stored).

The engine batches jobs; each job's trace still gets spans of its own, with the batch's size as
an attribute, so that one trace tells one job's story. Stages are timed where the work happens
(the claim, the family's batched calls, the finishing thread) and recorded with explicit times.
With tracing off, jobs carry `OFF`, which records nothing, and the family is not wrapped."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from app.core import tracing
from app.core.jobs import JobParams

if TYPE_CHECKING:
    from worker.engine.state import EngineRequest, JobState
    from worker.families.base import Family

T = TypeVar("T")
Attributes = dict[str, Any]


class JobTrace:
    """A job's spans; this one records nothing (tracing is off, or the job has no trace)."""

    def record(
        self,
        name: str,
        start: int,
        end: int,
        attributes: Attributes | None = None,
        error: BaseException | None = None,
    ) -> None:
        """A stage that ran from `start` to `end` (ns since the epoch)."""

    @contextmanager
    def stage(self, name: str, attributes: Attributes | None = None) -> Iterator[None]:
        """A stage timed around the block."""
        yield

    def admitted(self, at: int) -> None:
        """The engine took the job in at `at`: its admission ends, its text encoding begins."""

    def denoising(self, at: int) -> None:
        """Its first denoising step may run from `at`."""

    def batched(self, size: int) -> None:
        """One of its steps ran in a denoiser forward over `size` jobs."""

    def denoised(self, at: int, steps: int) -> None:
        """Its `steps` steps were done by `at`."""

    def end(self, error: str | None = None) -> None:
        """The job ended: succeeded, or `error` ("code: message")."""


OFF = JobTrace()


class _Recording(JobTrace):
    """A job's spans while tracing is on: its `job` span, and what its stages need to know."""

    def __init__(self, span: trace.Span, claimed: int) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.claimed = claimed
        self.admitted_at: int | None = None
        self.denoise_from: int | None = None
        self.widest = 0  # the most jobs in one forward with it
        self.ended = False

    def record(
        self,
        name: str,
        start: int,
        end: int,
        attributes: Attributes | None = None,
        error: BaseException | None = None,
    ) -> None:
        span = tracing.tracer().start_span(
            name, context=self.context, start_time=start, attributes=attributes
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
        span.end(end_time=max(start, end))

    @contextmanager
    def stage(self, name: str, attributes: Attributes | None = None) -> Iterator[None]:
        start, error = time.time_ns(), None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.record(name, start, time.time_ns(), attributes, error)

    def admitted(self, at: int) -> None:
        if self.admitted_at is None:  # a batch that failed to prepare is retried job by job
            self.admitted_at = at
            self.record("admission", self.claimed, at)

    def denoising(self, at: int) -> None:
        self.denoise_from = at

    def batched(self, size: int) -> None:
        self.widest = max(self.widest, size)

    def denoised(self, at: int, steps: int) -> None:
        if self.denoise_from is not None:  # once, though a failed batch decode is retried
            attributes = {"ldm.steps": steps, "ldm.batch.size.max": self.widest}
            self.record("denoise", self.denoise_from, at, attributes)
            self.denoise_from = None

    def end(self, error: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        code = "succeeded" if error is None else error.split(":", 1)[0]
        self.span.set_attribute("ldm.job.outcome", code)
        if error is not None and code != "canceled":
            self.span.set_status(StatusCode.ERROR, error)
        self.span.end()


def begin(
    job_id: str,
    params: JobParams,
    attempt: int,
    traceparent: bytes | None,
    created_at: bytes | None,
) -> JobTrace:
    """The trace of a job just claimed, as the child of its submit (`traceparent`; a trace of
    its own without one): its `job` span opens at its creation, and its queue wait is over."""
    if not tracing.enabled():
        return OFF
    claimed = time.time_ns()
    # The API's clock made `created_at`: a host behind ours must not give a negative wait.
    created = min(tracing.unix_ns(created_at.decode()), claimed) if created_at else claimed
    span = tracing.tracer().start_span(
        "job",
        context=tracing.job_context(traceparent.decode() if traceparent else None),
        kind=SpanKind.CONSUMER,
        start_time=created,
        attributes={
            "ldm.job.id": job_id,
            "ldm.job.model": params.model,
            "ldm.job.attempt": attempt,
        },
    )
    job = _Recording(span, claimed)
    job.record("queue.wait", created, claimed)
    return job


def _batch(traces: list[JobTrace], name: str, call: Callable[[], T]) -> tuple[T, int]:
    """`call()`, recorded as stage `name` in each job's trace; its result and when it ended."""
    attributes = {"ldm.batch.size": len(traces)}
    start = time.time_ns()
    try:
        result = call()
    except BaseException as exc:
        end = time.time_ns()
        for job in traces:
            job.record(name, start, end, attributes, exc)
        raise
    end = time.time_ns()
    for job in traces:
        job.record(name, start, end, attributes)
    return result, end


class TracedFamily:
    """A model family whose batched calls are recorded in each job's own trace; everything
    else is the family's own (attributes, `check`, `cost`, ...)."""

    def __init__(self, family: "Family") -> None:
        self.inner = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, requests: list["EngineRequest"]) -> list["JobState"]:
        traces = [request.trace for request in requests]
        start = time.time_ns()
        for job in traces:
            job.admitted(start)
        states, end = _batch(traces, "text.encode", lambda: self.inner.prepare(requests))
        for job in traces:
            job.denoising(end)
        return states

    def forward(self, states: list["JobState"]) -> list[Any]:
        for state in states:
            state.request.trace.batched(len(states))
        return self.inner.forward(states)

    def decode(self, states: list["JobState"]) -> list[list[Any]]:
        start = time.time_ns()
        for state in states:
            state.request.trace.denoised(start, state.index)
        traces = [state.request.trace for state in states]
        return _batch(traces, "vae.decode", lambda: self.inner.decode(states))[0]


def traced(family: "Family") -> "Family":
    """`family`, recording its jobs' stages when tracing is on (as is when off: no cost)."""
    return TracedFamily(family) if tracing.enabled() else family  # type: ignore[return-value]
