"""The results of bench/gpu.py: one row per model, written as markdown and JSON after every
cell, atomically, so a run killed at any point still leaves a readable partial table."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

NOT_REACHED = "not reached"
SKIPPED_TIME = "skipped (time)"

Cell = float | str | None  # a figure, a note ("skipped (time)", "failed: ..."), or not run yet


def cell_keys(batches: list[int]) -> list[str]:
    """The timed cells of a row, in the order they run."""
    return ["raw"] + [f"eager_{b}" for b in batches] + [f"compiled_{b}" for b in batches]


def _fmt(value: Cell, digits: int = 3) -> str:
    if value is None:
        return NOT_REACHED
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value).replace("|", "/")  # a note must not break the table


class Report:
    """Rows of cells, rendered to ``path`` (markdown) and ``path.with_suffix('.json')``."""

    def __init__(self, path: Path, meta: dict[str, Any], batches: list[int]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.batches = batches
        self.rows: dict[str, dict[str, Any]] = {}
        self.details: dict[str, dict[str, Any]] = {}  # per-cell extras (peaks, errors) for JSON
        # The watchdog thread may write while the main thread records a cell.
        self.lock = threading.RLock()

    def add_row(self, name: str, info: dict[str, Any]) -> None:
        with self.lock:
            self.rows[name] = {**info, **dict.fromkeys(cell_keys(self.batches)), "peak_gib": None}
            self.details[name] = {}

    def set(self, name: str, key: str, value: Cell, **detail: Any) -> None:
        with self.lock:
            self.rows[name][key] = value
            if detail:
                self.details[name][key] = detail
        self.write()

    def pending(self, name: str) -> list[str]:
        return [k for k in cell_keys(self.batches) if self.rows[name][k] is None]

    def skip_rest(
        self, name: str | None = None, note: str = SKIPPED_TIME, locked: bool = True
    ) -> None:
        """Every cell not run yet (of ``name``, or of all rows) gets ``note``. ``locked=False``
        is the watchdog's last resort, when the main thread is stuck holding the lock."""
        with self.lock if locked else contextlib.nullcontext():
            for row in [self.rows[name]] if name else list(self.rows.values()):
                for key in cell_keys(self.batches):
                    if row[key] is None:
                        row[key] = note
            self.write(locked)

    def markdown(self) -> str:
        b = self.batches
        head = (
            ["model", "size", "steps", "dtype", "raw s/image"]
            + [f"engine img/s b{n}" for n in b]
            + [f"compiled img/s b{n}" for n in b]
            + ["peak GiB", "build s"]
        )
        lines = [
            f"# {self.meta.get('title', 'GPU benchmark')}",
            "",
            *[f"- {k}: {v}" for k, v in self.meta.items() if k != "title"],
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for row in list(self.rows.values()):
            cells = [row["title"], f"{row['size']}²", str(row["steps"]), row["dtype"]]
            cells += [_fmt(row[k]) for k in cell_keys(b)]
            cells += [_fmt(row["peak_gib"]), _fmt(row.get("build_s"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "raw: diffusers' pipeline call, one image, seconds each (after a warm-up call).",
            "engine: B jobs of one image submitted together and run to completion, images per"
            " second of a timed repeat after a warm-up run; compiled: the same with"
            " torch.compile on the denoiser (its warm-up compiles each batch shape).",
            "peak GiB: torch.cuda.max_memory_allocated over the model's build and runs.",
        ]
        return "\n".join(lines) + "\n"

    def write(self, locked: bool = True) -> None:
        with self.lock if locked else contextlib.nullcontext():
            data = {"meta": self.meta, "rows": self.rows, "details": self.details}
            _atomic_write(self.path, self.markdown())
            _atomic_write(self.path.with_suffix(".json"), json.dumps(data, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
