"""`python -m bench.policy --quick` runs every scenario end to end and prints its table (a smoke
run proves the bench works, not the figures; the two that hold on any machine are checked)."""

import re

import pytest

from tests.bench.run_bench import run_bench


def figure(out: str, label: str) -> str:
    found = re.search(rf"\| {re.escape(label)}[^|]* \| ([^|]+) \|", out)
    assert found is not None, f"{label!r} not in:\n{out}"
    return found.group(1).strip()


@pytest.mark.timeout(300)
def test_a_quick_run_prints_every_figure() -> None:
    out = run_bench("bench.policy", "--quick")
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
    assert re.search(r"\| High job: paused jobs \([1-9]\d*\)", out), out  # it paused some
    assert int(figure(out, "High job: paused jobs")) <= 2
