"""`python -m bench.mixed --quick` runs end to end and writes every figure (not its target: a
quick run on a shared machine proves the bench works, not the service's speed)."""

import json
from pathlib import Path

import pytest

from tests.bench.run_bench import run_bench

FIGURES = {
    "raw_limit_per_s",
    "burst_over_raw",
    "kept_up",
    "p50_latency_s",
    "p95_latency_s",
    "p95_slowdown",
    "homogeneous_over_raw",
    "one_at_a_time_over_raw",
}


@pytest.mark.timeout(900)
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    run_bench("bench.mixed", "--quick", "--out", str(out), timeout=880)
    result = json.loads(out.with_suffix(".json").read_text())
    figures = result["figures"]
    assert set(figures) == FIGURES
    for name, figure in figures.items():
        value = figure["value"]
        assert isinstance(value, float) and value > 0, (name, value)
    assert [row["load"] for row in result["loads"]] == [0.7]
    assert (tmp_path / "latency-vs-load.png").stat().st_size > 0
    assert "| 2. Shuffled burst" in out.with_suffix(".md").read_text()
