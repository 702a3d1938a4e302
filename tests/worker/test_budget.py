"""The engine's budget: a worker measures its own denoiser at start and batches only as far as
it pays. The timing rules run on a stand-in denoiser whose speed is given (and a clock of its
own); the real tiny-sd checks that the worker's pipeline sets the budget it measured."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from app.core.models import model_spec
from app.core.settings import Settings
from worker.engine.budget import SLOW_FORWARD_S, candidates, fit_rows
from worker.engine.state import EngineRequest
from worker.pipeline import ResidentPipeline


class Denoiser:
    """A family whose forward over n rows takes `seconds(n)` of its own clock; the first run
    at each size and the `slow_runs` given are a neighbour's burst (ten times as long)."""

    name = "stand-in"
    device = torch.device("cpu")

    def __init__(self, seconds: Callable[[int], float], out_of_memory_from: int = 10**9):
        self.seconds = seconds
        self.out_of_memory_from = out_of_memory_from
        self.now = 0.0
        self.runs: list[int] = []

    def clock(self) -> float:
        return self.now

    def prepare(self, requests: list[EngineRequest]) -> list[str]:
        return [request.job_id for request in requests]

    def forward(self, states: list[str]) -> None:
        rows = len(states)
        if rows >= self.out_of_memory_from:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        first = rows not in self.runs
        self.runs.append(rows)
        self.now += self.seconds(rows) * (10 if first else 1)


def requests(rows: int) -> list[EngineRequest]:
    return [EngineRequest(f"j{i}", None) for i in range(rows)]  # type: ignore[arg-type]


def fit(denoiser: Denoiser, up_to: int = 128) -> tuple[int, dict[int, float]]:
    result = fit_rows(denoiser, requests, up_to, clock=denoiser.clock)  # type: ignore[arg-type]
    return result.rows, result.rates


def test_the_budget_stops_where_more_rows_stop_paying() -> None:
    # A fixed 10 ms a forward until 16 rows; past that, time grows with the rows.
    rows, rates = fit(Denoiser(lambda n: max(0.010, n * 0.010 / 16)))
    assert rows == 16
    assert rates[16] == pytest.approx(1600) and rates[128] == pytest.approx(1600)
    assert list(rates) == candidates(128) == [1, 2, 4, 8, 16, 32, 64, 128]


def test_a_few_percent_more_rate_is_not_worth_twice_the_rows() -> None:
    # 4 ms of overhead a forward, then 0.5 ms a row: 64 rows reach 1778 rows/s, 128 rows
    # 1882; within 5% of the best, 64 rows halve every step's time for 6% less.
    rows, _ = fit(Denoiser(lambda n: 0.004 + 0.0005 * n))
    assert rows == 128  # 1778 is 5.5% below 1882: still too far
    rows, _ = fit(Denoiser(lambda n: 0.002 + 0.0005 * n))  # 64: 1882, 128: 1939 (3%)
    assert rows == 64


def test_out_of_memory_ends_the_search_below_it() -> None:
    denoiser = Denoiser(lambda n: 0.001 * n**0.5, out_of_memory_from=32)
    rows, rates = fit(denoiser)
    assert list(rates) == [1, 2, 4, 8, 16] and rows == 16
    assert max(denoiser.runs) == 16


def test_a_slow_forward_ends_the_search_there() -> None:
    # The first run is the slow one (10x): 2 rows already take longer than SLOW_FORWARD_S.
    denoiser = Denoiser(lambda n: SLOW_FORWARD_S / 15 * n)
    rows, rates = fit(denoiser)
    assert list(rates) == [1, 2] and max(denoiser.runs) == 2


def test_the_worker_pipeline_sets_the_budget_it_measured(
    resident: ResidentPipeline, model_cache: Path
) -> None:
    settings = Settings(model="tiny-sd", model_cache=model_cache, device="cpu")
    spec = model_spec(settings)
    before = resident.max_cost
    try:
        fitted = resident.fit_budget(spec, settings)
        assert fitted is not None and fitted.rows in candidates(4 * 2 * spec.max_batch)
        one_row = 64 // 8 * 64 // 8  # a 64x64 image without guidance: one row of 8x8 latents
        assert resident.max_cost == fitted.rows * one_row
        assert resident.engine().max_cost == resident.max_cost
        # The operator's LDM_MAX_BATCH wins: no measuring, that many guided images a forward.
        fixed = settings.model_copy(update={"max_batch": 3})
        assert resident.fit_budget(model_spec(fixed), fixed) is None
        assert resident.engine().max_cost == 3 * 2 * one_row
    finally:
        resident.max_cost = before
