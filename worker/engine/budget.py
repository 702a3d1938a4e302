"""The engine's budget: how many denoiser rows one forward holds on this device.

Batching pays while a bigger forward runs more rows a second; past that point more rows only
make every step, and so every job, slower. A worker times its own denoiser at start (rows 1,
2, 4, ... at native size) and takes the fewest rows that reach `TOLERANCE` of the best rate it
saw: a tiny model on a CPU pays up to about 64 rows; a big one on a GPU far fewer."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from worker.engine.memory import free_memory, is_out_of_memory
from worker.engine.state import EngineRequest, JobState
from worker.families.base import Family

log = logging.getLogger(__name__)

TOLERANCE = 0.05  # a budget within 5% of the best rate: the rest is latency for nothing
SLOW_FORWARD_S = 1.0  # stop growing once one forward takes this long (a big model on a CPU)


@dataclass(frozen=True)
class Fit:
    """The rows a forward should hold, and the rates (rows/s) measured on the way."""

    rows: int
    rates: dict[int, float]

    def describe(self) -> str:
        """For the start-up log."""
        rates = ", ".join(f"{rows}: {rate:.0f}" for rows, rate in self.rates.items())
        return f"{self.rows} rows a forward (rows/s by rows in a forward: {rates})"


def candidates(up_to: int) -> list[int]:
    """1, 2, 4, ... and `up_to` itself."""
    rows, out = 1, []
    while rows < up_to:
        out.append(rows)
        rows *= 2
    return [*out, up_to]


def fit_rows(
    family: Family,
    requests: Callable[[int], list[EngineRequest]],
    up_to: int,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> Fit:
    """Time one forward over `requests(n)` (n one-row jobs at native size) for each candidate
    n up to `up_to`, stopping at the first out-of-memory or slow forward. The sizes are timed
    in turn, `repeats` rounds, each size's fastest run kept: a neighbour's burst only ever
    slows a run down, and one that lasts a while slows every size alike."""
    batches: dict[int, list[JobState]] = {}
    for rows in candidates(up_to):
        try:
            states = family.prepare(requests(rows))
            # First run at this shape: allocations, lazy set-up; and is it worth going on?
            if _time(family, states, clock) > SLOW_FORWARD_S:
                up_to = rows
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            free_memory(family.device)
            log.info("budget: %d rows a forward run out of memory", rows)
            break
        batches[rows] = states
        if rows >= up_to:
            break
    best = dict.fromkeys(batches, float("inf"))
    for _ in range(repeats):
        for rows, states in batches.items():
            best[rows] = min(best[rows], _time(family, states, clock))
    rates = {rows: rows / seconds for rows, seconds in best.items()}
    top = max(rates.values())
    return Fit(min(n for n, rate in rates.items() if rate >= (1 - TOLERANCE) * top), rates)


def _time(family: Family, states: list[JobState], clock: Callable[[], float]) -> float:
    _synchronize(family.device)
    started = clock()
    family.forward(states)
    _synchronize(family.device)  # an accelerator runs ahead of the host: time its work
    return clock() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
