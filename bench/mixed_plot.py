"""bench.mixed's latency-vs-load figure: p50 and p95 latency at each offered load."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot(loads: list[dict[str, Any]], limit: float, machine: str, path: Path) -> None:
    """Latency against offered load (a fraction of the raw batched limit), kept-up noted."""
    x = [row["load"] for row in loads]
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for key, label, style in (("p50_latency_s", "p50", "-o"), ("p95_latency_s", "p95", "-s")):
        axes.plot(x, [row[key] for row in loads], style, label=f"{label} latency")
    axes.axhline(2.0, color="#999", linestyle=":", label="p95 target at 0.7 (2 s)")
    for row in loads:
        axes.annotate(
            f"kept up {row['kept_up']:.2f}",
            (row["load"], row["p95_latency_s"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=7,
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.set_xlabel(f"offered load, fraction of the raw batched limit ({limit:.1f} jobs/s)")
    axes.set_ylabel("finished_at - created_at (s)")
    axes.set_title(f"tiny-sd 64x64 mixed load, one worker\n{machine}", fontsize=9)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
