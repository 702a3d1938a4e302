"""`python -m bench.loras` runs end to end on a small burst with its adapters and prints both
ratios (a smoke run proves the bench works, not what adapters cost)."""

import re

import pytest

from tests.bench.run_bench import run_bench


@pytest.mark.timeout(300)
def test_a_quick_run_prints_both_ratios() -> None:
    out = run_bench("bench.loras", "--quick")
    assert re.search(r"\(\d+ stacks\)", out), out
    for name in ("mixed_over_base", "split_over_mixed"):
        ratio = re.search(rf"{name}: median ([0-9.]+)", out)
        assert ratio is not None and float(ratio.group(1)) > 0, out
