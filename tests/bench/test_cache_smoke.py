"""`python -m bench.cache --quick` runs end to end: every repeated POST is answered from the
cache (the bench asserts it) and both parts print their figures (a smoke run proves the bench
works, not what the caches buy)."""

import re

import pytest

from tests.bench.run_bench import run_bench


@pytest.mark.timeout(400)
def test_a_quick_run_prints_both_figures() -> None:
    out = run_bench("bench.cache", "--quick")
    assert re.search(r"repeated request \(cached\), 20 POSTs: p50 [0-9.]+ ms", out), out
    gain = re.search(r"prompt cache, 16 jobs of 8 prompts, 4 steps: .* median ([0-9.]+)", out)
    assert gain is not None and float(gain.group(1)) > 0, out
    assert re.search(r"text encoding of 16 jobs' prompts .*: [0-9.]+ s cached", out), out
