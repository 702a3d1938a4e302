"""bench/gpu.py's CPU smoke run: the GPU script must not rot between the rare GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]
TITLES = ["SD 1.5", "SDXL base", "SD3-medium", "FLUX.1-schnell"]


def run_gpu(tmp_path: Path, *args: str, timeout: float = 540) -> tuple[str, list[dict[str, str]]]:
    """Run ``python -m bench.gpu --smoke`` as the device session would; return its markdown
    and the table's rows as {column: cell}."""
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in table[2:]]  # fmt: skip
    return text, rows


def is_number(cell: str) -> bool:
    try:
        return float(cell) > 0
    except ValueError:
        return False


@pytest.mark.timeout(600)
def test_smoke_table_has_every_model_with_figures(tmp_path: Path) -> None:
    text, rows = run_gpu(tmp_path)
    assert [row["model"] for row in rows] == TITLES
    for row in rows:
        figures = ["raw s/image"] + [f"engine img/s b{b}" for b in (1, 4, 8)]
        # The smoke run compiles one shape per model (dynamo, eager backend).
        figures.append("compiled img/s b1")
        assert all(is_number(row[column]) for column in figures), row
        assert row["size"] == "128²" and row["steps"] == "2"
        assert row["peak GiB"] == "n/a (cpu)"
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert list(data["rows"]) == ["sd15", "sdxl", "sd3", "flux"]
    assert isinstance(data["rows"]["sd15"]["eager_8"], float)
    assert "skipped" not in text


@pytest.mark.timeout(300)
def test_out_of_time_still_writes_the_table(tmp_path: Path) -> None:
    # A budget already spent by the imports: nothing runs, yet every row is there and says why.
    _, rows = run_gpu(tmp_path, "--budget-s", "1", "--models", "sd15,flux")
    assert [row["model"] for row in rows] == ["SD 1.5", "FLUX.1-schnell"]
    for row in rows:
        assert row["raw s/image"] == "skipped (time)"
        assert row["engine img/s b8"] == "skipped (time)"
        assert row["compiled img/s b1"] == "skipped (time)"


@pytest.mark.timeout(300)
def test_compile_is_skipped_first_when_it_would_not_fit(tmp_path: Path) -> None:
    # A compile expected to take longer than the whole budget: the eager cells still run.
    _, rows = run_gpu(
        tmp_path, "--models", "sd15", "--batches", "1,4", "--compile-batches", "1,4",
        "--compile-guess-s", "1e6",
    )  # fmt: skip
    (row,) = rows
    assert is_number(row["raw s/image"]) and is_number(row["engine img/s b4"]), row
    assert row["compiled img/s b1"] == row["compiled img/s b4"] == "skipped (time)"
