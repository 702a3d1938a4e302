"""`python -m bench.previews --quick` runs end to end and prints its ratio (a smoke run proves
the bench works, not what previews cost)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_quick_run_prints_the_ratio_and_sends_previews() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.previews", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    sent = re.search(r"round 1: previews on [0-9.]+ jobs/s \((\d+) previews\)", run.stdout)
    assert sent is not None and int(sent.group(1)) > 0, run.stdout
    ratio = re.search(r"previews on / off throughput: median ([0-9.]+)", run.stdout)
    assert ratio is not None and float(ratio.group(1)) > 0, run.stdout
