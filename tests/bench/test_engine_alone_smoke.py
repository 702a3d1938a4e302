"""`python -m bench.engine_alone` runs end to end on a small burst and prints both ratios (a
smoke run proves the bench works, not how fast the engine is)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_small_run_prints_both_ratios_and_the_budget() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.engine_alone", "--rounds", "1", "--jobs", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert re.search(r"budget: \d+ rows a forward", run.stdout), run.stdout
    for name in ("mixed_over_raw", "homogeneous_over_raw"):
        ratio = re.search(rf"{name}: median ([0-9.]+)", run.stdout)
        assert ratio is not None and float(ratio.group(1)) > 0, run.stdout
