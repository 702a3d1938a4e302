"""`python -m bench.engine_alone` runs end to end on a small burst and prints both ratios (a
smoke run proves the bench works, not how fast the engine is)."""

import re

import pytest

from tests.bench.run_bench import run_bench


@pytest.mark.timeout(300)
def test_a_small_run_prints_both_ratios_and_the_budget() -> None:
    out = run_bench("bench.engine_alone", "--rounds", "1", "--jobs", "4")
    assert re.search(r"budget: \d+ rows a forward", out), out
    for name in ("mixed_over_raw", "homogeneous_over_raw"):
        ratio = re.search(rf"{name}: median ([0-9.]+)", out)
        assert ratio is not None and float(ratio.group(1)) > 0, out
