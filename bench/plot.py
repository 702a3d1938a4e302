"""The README's benchmark figure, drawn from bench/results.json."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput against raw diffusers, and submit latency against a bare endpoint."""
    t = results["throughput"]
    per_s = t["jobs"] / min(r["raw_s"] for r in t["rounds"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [
        "raw diffusers\n(single calls)",
        "service\nbatching off",
        "service\nbatching on",
        f"raw diffusers\n(batches of {t['max_batch']})",
    ]
    values = [1.0, t["ratio_off"], t["ratio_on"], t["raw_batch_headroom"]]
    bars = left.bar(labels, values, color=["#999", "#4c72b0", "#55a868", "#bbb"])
    left.bar_label(bars, fmt="%.2fx")
    left.set_ylabel("throughput vs raw single calls")
    left.set_title(f"{t['jobs']}-job burst, tiny-sd {t['steps']} steps (raw {per_s:.1f} jobs/s)")

    rows = results["submit"]
    clients = [r["concurrency"] for r in rows]
    for prefix, name, style in (("service", "service", "-o"), ("bare", "bare FastAPI", "--s")):
        right.plot(clients, [r[f"{prefix}_p50_ms"] for r in rows], style, label=f"{name} p50")
        right.plot(
            clients, [r[f"{prefix}_p99_ms"] for r in rows], style, alpha=0.5, label=f"{name} p99"
        )
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xticks(clients, [str(c) for c in clients])
    right.set_xlabel("concurrent clients")
    right.set_ylabel("submit latency (ms)")
    right.set_title("POST /v1/jobs, one API process")
    right.legend(fontsize=8)
    figure.suptitle(results["machine"], fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
