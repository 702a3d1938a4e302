"""`python -m bench.policy --quick` runs every scenario end to end and prints its table (a smoke
run proves the bench works, not the figures; the two that hold on any machine are checked)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def figure(out: str, label: str) -> str:
    found = re.search(rf"\| {re.escape(label)}[^|]* \| ([^|]+) \|", out)
    assert found is not None, f"{label!r} not in:\n{out}"
    return found.group(1).strip()


@pytest.mark.timeout(300)
def test_a_quick_run_prints_every_figure() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.policy", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = run.stdout
    for label in (
        "Noisy neighbour, fair: B's latency / solo",
        "Noisy neighbour, FIFO: B done at fraction",
        "High job: start delay",
        "High job: latency / solo",
        "ETA: median absolute error",
    ):
        assert float(figure(out, label)) > 0
    # Fair share and preemption do what they say whatever the machine's speed: the heavy
    # tenant gets more than the light one, and a job paused for the high one got the image
    # its solo run gets (within the bound of any job batched with others).
    assert float(figure(out, "Weighted shares heavy:light")) > 1.2
    assert int(figure(out, "High job: paused jobs")) <= 2
