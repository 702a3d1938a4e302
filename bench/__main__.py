"""The whole benchmark suite in one command: `python -m bench` (or `make bench`).

Runs each bench in turn on this machine (tiny model, CPU), prints one results table, and
writes bench/results.json, bench/results.md and docs/benchmarks.png. Every figure in the
README's performance section comes from here; rerun it rather than copying numbers.
"""

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import dispatch, first_image, memory, overhead, submit, throughput
from bench.plot import plot
from worker.libraries import route_library_logs

OUT = Path("bench")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def run(quick: bool) -> dict[str, Any]:
    """Every bench; `quick` shrinks them to check the suite runs, not to quote."""
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {_cores()} cores, CPU only",
    }
    print("throughput ...", flush=True)
    results["throughput"] = throughput.measure(
        jobs=8 if quick else 32, rounds=1 if quick else 5, steps=4 if quick else 20
    )
    print("overhead ...", flush=True)
    results["overhead"] = overhead.measure(
        jobs=16, rounds=1 if quick else 4, steps=4 if quick else 20
    )
    print("submit ...", flush=True)
    results["submit"] = submit.measure(duration=1 if quick else 5)
    print("dispatch ...", flush=True)
    results["dispatch"] = dispatch.measure(jobs=10 if quick else 100)
    print("memory ...", flush=True)
    results["memory"] = memory.measure(jobs=150 if quick else 2000)
    print("first image ...", flush=True)
    results["first_image"] = first_image.measure(jobs=4 if quick else 20)
    return results


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def report(r: dict[str, Any]) -> str:
    """The results as the markdown table the README quotes."""
    t, o, d, m, f = (r[k] for k in ("throughput", "overhead", "dispatch", "memory", "first_image"))
    top = max(r["submit"], key=lambda row: row["concurrency"])
    rows = [
        (
            "Throughput, service / raw diffusers, batching off",
            ">= 0.98",
            f"{t['ratio_off']:.3f} (per job, medians: {t['per_job_ratio_off']:.3f})",
            "python -m bench.throughput",
        ),
        (
            f"Throughput, service / raw diffusers, batching on ({t['max_batch']})",
            ">= 3.5x",
            f"{t['ratio_on']:.2f}x (raw batches: {t['raw_batch_headroom']:.2f}x)",
            "python -m bench.throughput",
        ),
        (
            f"Per-step engine overhead, batch {o['jobs']}, p50 (p90)",
            "<= 5%",
            f"{100 * o['step_overhead_p50']:.1f}% ({100 * o['step_overhead_p90']:.1f}%) of a "
            f"{o['forward_ms']:.0f} ms step",
            "python -m bench.overhead",
        ),
    ]
    for s in r["submit"]:
        rows.append(
            (
                f"Submit p50 / p99, {s['concurrency']} clients",
                "p99 < 10 ms at 64" if s is top else "",
                f"{s['service_p50_ms']:.1f} / {s['service_p99_ms']:.1f} ms "
                f"(bare {s['bare_p50_ms']:.1f} / {s['bare_p99_ms']:.1f})",
                "python -m bench.submit",
            )
        )
        rows.append(
            (
                f"Submits/s, {s['concurrency']} clients",
                ">= 2,000" if s is top else "",
                f"{s['service_rps']:.0f} ({100 * s['service_over_bare']:.0f}% of bare "
                f"{s['bare_rps']:.0f})",
                "python -m bench.submit",
            )
        )
    rows += [
        (
            "Dispatch latency p50 / p99, idle worker",
            "",
            f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} ms",
            "python -m bench.dispatch",
        ),
        (
            "Worker RSS / bare pipeline",
            "<= 1.1x",
            f"{m['vs_bare']:.2f}x ({m['worker_warm_mb']:.0f} / {m['bare_mb']:.0f} MiB)",
            "python -m bench.memory",
        ),
        (
            f"Worker RSS growth over {m['jobs']} jobs",
            "< 5%",
            f"{100 * m['growth']:+.1f}% (second half {100 * m['growth_second_half']:+.1f}%)",
            "python -m bench.memory",
        ),
        (
            "POST -> image p50, default model (tiny-shapes, 20 steps)",
            "< 1 s",
            f"{f['service_p50_s'] * 1000:.0f} ms ({f['service_over_raw']:.2f}x a direct "
            f"pipeline call, {f['raw_p50_s'] * 1000:.0f} ms)",
            "python -m bench.first_image",
        ),
    ]
    lines = [
        f"{r['machine']}; tiny-sd 64x64, {t['steps']} steps (last row: tiny-shapes); {r['when']}",
        "",
        "| figure | goal | measured | command |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | `{d_}` |" for a, b, c, d_ in rows]
    return "\n".join(lines)


def quote_in_readme(table: str, readme: Path = Path("README.md")) -> None:
    """Put the table between the README's bench markers, so that it quotes this run."""
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main() -> None:
    """Run the suite, print the table, write the results and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: check, do not quote")
    parser.add_argument("--replot", action="store_true", help="redraw from bench/results.json")
    args = parser.parse_args()
    route_library_logs()  # no progress bars from the model libraries
    if args.replot:
        results = json.loads((OUT / "results.json").read_text())
    else:
        results = run(args.quick)
        (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (OUT / "results.md").write_text(table + "\n")
    quote_in_readme(table)
    plot(results, Path("docs/benchmarks.png"))
    print(table)


if __name__ == "__main__":
    main()
