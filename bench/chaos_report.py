"""The figures of `bench.chaos`: what one pass's clients saw and what the workers' logs say
ran (`summarize`), and the markdown table of both passes (`table`)."""

import collections
import statistics
from typing import Any

from bench.chaos_clients import Outcome
from bench.chaos_faults import killed_before_publishing, ran_twice

LATENCY = "{p50_s} / {p95_s} / {p99_s} / {max_s}"


def _p(values: list[float], q: int) -> float | None:
    """The q-th percentile of sorted `values`, in seconds to 10 ms (None if there are none)."""
    if len(values) < 2:
        return round(values[0], 2) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


def summarize(
    outcomes: list[Outcome], runs: dict[str, list[int]], hits: list[dict[str, int]]
) -> dict[str, Any]:
    """What one pass's clients saw, and what the workers' logs say ran (`hits`: what each
    kill hit, which explains some double runs)."""
    accepted = [o for o in outcomes if o.job_id]
    ended = [o for o in accepted if o.final]
    finals = [o.final for o in ended if o.final]
    lost = {str(o.job_id): o.lost for o in accepted if not o.final}
    twice = ran_twice(runs, [str(o.job_id) for o in accepted])
    explained = killed_before_publishing(twice, hits)
    # Canceled by its client: canceled, or succeeded if the cancel came too late; else succeeded.
    unexpected = [
        f"{o.job_id}: {o.final['status']} {o.final.get('error') or ''} (cancel: {o.planned.cancel})"
        for o in ended
        if o.final
        and o.final["status"]
        not in (("canceled", "succeeded") if o.planned.cancel else ("succeeded",))
    ]
    succeeded = [job for job in finals if job["status"] == "succeeded"]
    latencies = sorted(o.latency for o in ended if o.latency is not None and not o.planned.cancel)
    return {
        "submitted": len(outcomes),
        "accepted": len(accepted),
        "not_accepted": [o.lost for o in outcomes if not o.job_id],
        "terminal": len(ended),
        "terminal_pct": round(100 * len(ended) / max(1, len(accepted)), 2),
        "lost": len(lost),
        "lost_jobs": lost,
        "statuses": dict(collections.Counter(job["status"] for job in finals)),
        "errors": dict(collections.Counter(job["error"]["code"] for job in finals if job["error"])),
        "unexpected": unexpected,
        "cancels_planned": sum(1 for o in outcomes if o.planned.cancel),
        "retried": sum(1 for job in finals if job["attempt"] > 1),
        "max_attempt": max((job["attempt"] for job in finals), default=0),
        "wrong_image_count": sum(1 for j in succeeded if len(j["images"]) != 1),
        "ran_twice": len(twice),
        "ran_twice_jobs": twice,
        # Denoised, then killed before the outcome was recorded: at-least-once by nature.
        "ran_twice_killed_before_publishing": len(explained),
        # Run again while the first run's worker lived: a bug.
        "ran_twice_unexplained": len(twice) - len(explained),
        "succeeded_without_log_line": sum(1 for j in succeeded if j["id"] not in runs),
        "p50_s": _p(latencies, 50),
        "p95_s": _p(latencies, 95),
        # The few jobs a kill hit wait out the heartbeat timeout: the tail shows them.
        "p99_s": _p(latencies, 99),
        "max_s": round(latencies[-1], 2) if latencies else None,
    }


def table(result: dict[str, Any]) -> str:
    """The outcome as a markdown table: fault-free pass and chaos pass side by side."""
    quiet, chaos = result["fault_free"], result["chaos"]
    seeds = result["seed_check"]

    def both(fmt: str) -> tuple[str, str]:
        return fmt.format(**quiet), fmt.format(**chaos)

    def statuses(p: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(p["statuses"].items())) or "-"

    rows = [
        ("jobs accepted", *both("{accepted}")),
        ("reached a terminal state", *both("{terminal_pct}%")),
        ("lost", *both("{lost}")),
        ("ran to completion more than once (workers' logs)", *both("{ran_twice}")),
        (
            "... of which killed between denoising and publishing; unexplained",
            *both("{ran_twice_killed_before_publishing}; {ran_twice_unexplained}"),
        ),
        ("statuses", statuses(quiet), statuses(chaos)),
        ("unexpected statuses", str(len(quiet["unexpected"])), str(len(chaos["unexpected"]))),
        ("retried (attempt > 1); most attempts", *both("{retried}; {max_attempt}")),
        ("latency p50 / p95 / p99 / max, submit to end (s)", *both(LATENCY)),
        (
            "p95 with faults / without",
            "",
            f"{result['p95_ratio']}x" if result["p95_ratio"] else "-",
        ),
        (
            "kills (that hit running jobs; jobs hit)",
            "-",
            f"{result['kills']} ({result['kills_hit_running']}; {result['jobs_hit']})",
        ),
        ("Redis restarts (s into the pass)", "-", str(result["redis_restarts_at_s"])),
        (
            "images not matching their seed (regenerated alone)",
            "-",
            f"{len(seeds['mismatches'])} of {seeds['checked']} "
            f"(max diff {seeds['max_difference']})",
        ),
        ("seconds", *both("{seconds}")),
    ]
    lines = ["| | fault-free | chaos |", "|---|---|---|"]
    return "\n".join(lines + [f"| {name} | {a} | {b} |" for name, a, b in rows])
