"""`python -m bench.previews --quick` runs end to end and prints its ratio (a smoke run proves
the bench works, not what previews cost)."""

import re

import pytest

from tests.bench.run_bench import run_bench


@pytest.mark.timeout(300)
def test_a_quick_run_prints_the_ratio_and_sends_previews() -> None:
    out = run_bench("bench.previews", "--quick")
    sent = re.search(r"round 1: previews on [0-9.]+ jobs/s \((\d+) previews\)", out)
    assert sent is not None and int(sent.group(1)) > 0, out
    ratio = re.search(r"previews on / off throughput: median ([0-9.]+)", out)
    assert ratio is not None and float(ratio.group(1)) > 0, out
