"""The engine: admit -> one denoiser forward -> each job's scheduler step -> retire, one
iteration at a time, with jobs joining and leaving at every step boundary.

It knows nothing of Redis or storage: the worker feeds it requests and takes its outcomes
(worker/serve.py), and a benchmark can drive it directly (bench/gpu.py)."""

import logging
import time
from collections import deque
from collections.abc import Callable

import torch

from app.core.jobs import JobParams
from worker.engine.admission import Admission, rank
from worker.engine.memory import (
    INTERNAL,
    OUT_OF_MEMORY,
    decode_in_tiles,
    free_memory,
    is_out_of_memory,
)
from worker.engine.preemption import to_pause
from worker.engine.state import EngineRequest, JobState, Outcome, charge
from worker.families.base import Family, InvalidInput

log = logging.getLogger(__name__)


class Engine:
    """Continuous batching over one model family.

    `max_cost` bounds a forward in denoiser rows x latent pixels (see `Family.cost`); jobs are
    admitted while the active set fits, so each forward runs everything of one group. Groups
    (latent shapes) take turns: the one that waited longest runs next, so none starves."""

    def __init__(
        self,
        family: Family,
        max_cost: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.family = family
        native = family.native_size // getattr(family, "vae_scale", 8)
        # Default: 16 guided images at native size, as the old batch size meant.
        self.max_cost = max_cost or 32 * native * native
        self.clock = clock
        self.pending: deque[EngineRequest] = deque()
        self.active: list[JobState] = []
        self.paused: list[JobState] = []  # set aside for a higher priority, resumed first
        self.resumed: list[str] = []  # jobs resumed since the worker last looked
        self.iteration = 0
        self.last_forward: tuple[int, float] | None = None  # images, seconds (for metrics)
        self._cancels: set[str] = set()
        self._loading = False  # a job waits for its adapters to load

    # What the worker asks of it

    def submit(self, request: EngineRequest) -> None:
        """Queue a job; it joins at the next iteration."""
        self.pending.append(request)

    def cancel(self, job_id: str) -> None:
        """The job leaves at the next step boundary (an outcome with `canceled`)."""
        self._cancels.add(job_id)

    @property
    def idle(self) -> bool:
        return not self.pending and not self.active and not self.paused

    def admission(self) -> Admission:
        """What may join now: per group (latent shape), jobs fit while that group's cost stays
        within `max_cost`; a group with nothing in it takes any one job. Paused jobs keep
        their room against jobs of their priority or lower."""
        admission = Admission(self.family, self.max_cost)
        for params in [s.request.params for s in self.active] + [r.params for r in self.pending]:
            admission.add(params)
        for state in self.paused:
            admission.reserve(state.request.params)
        return admission

    def preempt(self, newcomer: JobParams) -> list[str]:
        """Pause the fewest lower-priority jobs that make room for `newcomer` (a job that
        does not fit now); the ids of those paused, none if it cannot be done."""
        chosen = to_pause(self.active, self.admission(), newcomer)
        gone = {s.job_id for s in chosen}
        self.active = [s for s in self.active if s.job_id not in gone]
        self.paused += chosen
        return [s.job_id for s in chosen]

    def progress(self) -> dict[str, tuple[int, int]]:
        """Steps done and total per active job."""
        return {s.job_id: (s.index, s.total_steps) for s in self.active}

    def run(self) -> list[Outcome]:
        """Iterate until every job submitted has left (for benchmarks and tests)."""
        outcomes: list[Outcome] = []
        while not self.idle:
            outcomes += self.iterate()
        return outcomes

    # One iteration

    def iterate(self) -> list[Outcome]:
        """Admit, run one forward over one group, step, retire; returns jobs that left."""
        self.iteration += 1
        self._loading = False
        outcomes = self._retire_stopped()
        outcomes += self._admit()
        batch = self._pick()
        if not batch and self._loading and not outcomes:
            time.sleep(0.01)  # only jobs waiting for their adapters: do not spin a core
        if batch:
            outcomes += self._step(batch)
            finished = [s for s in batch if s.done]
            if finished:
                outcomes += self._finish(finished)
        return outcomes

    def _retire_stopped(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        self.active = self._stopped(self.active, outcomes)
        self.paused = self._stopped(self.paused, outcomes)
        for request in list(self.pending):
            if request.job_id in self._cancels:
                self.pending.remove(request)
                outcomes.append(Outcome(request.job_id, error=("canceled", "canceled")))
        self._cancels -= {o.job_id for o in outcomes}
        return outcomes

    def _stopped(self, states: list[JobState], outcomes: list[Outcome]) -> list[JobState]:
        """Those of `states` neither canceled nor past their deadline; outcomes for the rest."""
        now, kept = self.clock(), []
        for state in states:
            deadline = state.request.deadline
            if state.job_id in self._cancels:
                outcomes.append(state.outcome(error=("canceled", "canceled")))
            elif deadline is not None and now > deadline:
                outcomes.append(state.outcome(error=("timeout", "the job ran too long")))
            else:
                kept.append(state)
        return kept

    def _admit(self) -> list[Outcome]:
        """Paused jobs and claimed ones join in priority order (paused first within one), as
        long as they fit; the first that does not fit waits, and so do all after it."""
        admission = Admission(self.family, self.max_cost)
        for state in self.active:
            admission.add(state.request.params)
        waiting: list[JobState | EngineRequest] = [*self.paused, *self.pending]
        waiting.sort(key=lambda w: rank(w.request.params if isinstance(w, JobState) else w.params))
        newcomers: list[EngineRequest] = []
        outcomes: list[Outcome] = []
        for item in waiting:
            if isinstance(item, JobState):
                if not admission.take(item.request.params):
                    break
                self.paused.remove(item)
                self.active.append(item)
                self.resumed.append(item.job_id)
                continue
            try:
                self.family.check(item.params, item.init_image)
                if not self.family.ready(item):
                    self._loading = True
                    continue  # its adapters load meanwhile; later jobs may pass it
            except InvalidInput as exc:
                self.pending.remove(item)
                outcomes.append(Outcome(item.job_id, error=("invalid_input", str(exc))))
                continue
            if not admission.take(item.params):
                break  # in order: it waits for room rather than let later jobs pass it
            self.pending.remove(item)
            newcomers.append(item)
        if newcomers:
            outcomes += self._prepare(newcomers)
        return outcomes

    def _prepare(self, requests: list[EngineRequest]) -> list[Outcome]:
        try:
            started = time.perf_counter()
            states = self.family.prepare(requests)
            charge(states, time.perf_counter() - started)  # text encoding, first latents
            self.active += states
            return []
        except Exception as exc:
            if len(requests) > 1:
                # One bad job must not fail its batch-mates: prepare them one by one.
                outcomes = []
                for request in requests:
                    outcomes += self._prepare([request])
                return outcomes
            log.warning("could not prepare job %s", requests[0].job_id, exc_info=True)
            error = OUT_OF_MEMORY if is_out_of_memory(exc) else INTERNAL
            free_memory(self.family.device)
            return [Outcome(requests[0].job_id, error=error)]

    def _pick(self) -> list[JobState]:
        """The jobs of the group that ran least recently, as many as fit, longest-waiting first."""
        if not self.active:
            return []
        groups: dict[tuple, list[JobState]] = {}
        for state in self.active:
            groups.setdefault(state.group, []).append(state)
        group = min(groups.values(), key=lambda states: min(s.last_run for s in states))
        group.sort(key=lambda s: s.last_run)
        batch, used = [], 0
        for state in group:
            cost = self.family.cost(state.request.params)
            if batch and used + cost > self.max_cost:
                break
            batch.append(state)
            used += cost
        return batch

    def _step(self, batch: list[JobState]) -> list[Outcome]:
        outcomes = []
        started = time.perf_counter()
        try:
            predictions = self._forward(batch, split=False)
        except Exception as exc:
            # A broken forward: those jobs fail, the engine and everyone else go on.
            error = OUT_OF_MEMORY if is_out_of_memory(exc) else INTERNAL
            log.warning("a forward over %d jobs failed", len(batch), exc_info=True)
            free_memory(self.family.device)
            return self._drop(batch, error)
        self.last_forward = (
            sum(s.request.params.num_images for s in batch),
            time.perf_counter() - started,
        )
        with torch.inference_mode():
            for state, prediction in zip(batch, predictions, strict=True):
                if isinstance(prediction, BaseException):
                    outcomes += self._drop([state], OUT_OF_MEMORY)  # too big even alone
                    continue
                try:
                    stepped = state.scheduler.step(
                        prediction,
                        state.timestep,
                        state.latents,
                        **state.step_kwargs,
                        return_dict=False,
                    )
                    state.latents = stepped[0]
                    if state.request.params.previews:
                        state.estimate = stepped[1] if len(stepped) > 1 else None
                    state.index += 1
                    if state.after_step is not None:
                        state.latents = state.after_step(
                            state.latents, state.scheduler, state.timesteps, state.index
                        )
                    state.last_run = self.iteration
                except Exception:
                    log.exception("the scheduler step of job %s failed", state.job_id)
                    outcomes += self._drop([state], INTERNAL)
        charge(batch, time.perf_counter() - started)
        return outcomes

    def _forward(self, batch: list[JobState], split: bool) -> list[torch.Tensor | BaseException]:
        """Each job's prediction; out of memory, the batch is split in halves (each may fit),
        and within a split a job that does not fit even alone gets its error instead."""
        try:
            return list(self.family.forward(batch))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if len(batch) == 1:
                if not split:
                    raise
                free_memory(self.family.device)
                return [exc]
        log.warning("a forward over %d jobs ran out of memory; splitting it", len(batch))
        free_memory(self.family.device)
        half = len(batch) // 2
        return self._forward(batch[:half], True) + self._forward(batch[half:], True)

    def _finish(self, finished: list[JobState]) -> list[Outcome]:
        self.active = [s for s in self.active if not s.done]
        try:
            started = time.perf_counter()
            images = self.family.decode(finished)
            charge(finished, time.perf_counter() - started)
        except Exception as exc:
            if len(finished) > 1:
                free_memory(self.family.device)
                return [o for state in finished for o in self._finish([state])]
            free_memory(self.family.device)
            if is_out_of_memory(exc) and (tiled := decode_in_tiles(self.family, finished[0])):
                return tiled
            error = OUT_OF_MEMORY if is_out_of_memory(exc) else INTERNAL
            log.warning("could not decode job %s", finished[0].job_id, exc_info=True)
            return [finished[0].outcome(error=error)]
        return [state.outcome(images) for state, images in zip(finished, images, strict=True)]

    def _drop(self, states: list[JobState], error: tuple[str, str]) -> list[Outcome]:
        gone = {s.job_id for s in states}
        self.active = [s for s in self.active if s.job_id not in gone]
        return [s.outcome(error=error) for s in states]
