"""What live previews cost: a service's throughput with every job asking for previews, over
the same service with none, in one run.

    python -m bench.previews [--quick] [--rounds N] [--jobs N] [--seed S]

One worker on tiny-sd at 64x64 (its defaults: previews at most every 250 ms a job), an API
and Redis, as `bench.mixed`'s shuffled burst: N jobs of its mix (steps 8/20/40, guidance
1/5/7.5) POSTed at once, jobs/s = N / (last `finished_at` - first submit). Each round runs the
same jobs twice, once with `"previews": true` and once without, the order alternating between
rounds (so a drift of the machine favours neither); the ratio on/off is taken per round and
the median over rounds quoted. A burst keeps every job in the engine for most of it, so most
jobs get a preview every 250 ms: the most previews a worker sends. Nobody follows the events
(what a reader costs is the API's, not the worker's).
"""

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.mixed import alone, body, burst, mix
from scripts.stack import LocalStack
from worker.libraries import route_library_logs


def previews_sent(stack: LocalStack) -> int:
    """Preview events on every job stream of this stack's Redis."""
    total = 0
    for key in stack.redis.scan_iter("ldm:job:*:events"):
        entries = stack.redis.xrange(key)
        total += sum(1 for _, fields in entries if fields.get(b"type") == b"preview")
    return total


def measure(rounds: int, n: int, seed: int) -> dict[str, Any]:
    """Per round: the same burst with previews and without, in alternating order."""
    cache = Path(".cache/models").resolve()
    rng = random.Random(seed)
    r: dict[str, Any] = {"jobs": n, "rounds": []}
    with tempfile.TemporaryDirectory() as workdir, LocalStack(Path(workdir), cache) as stack:
        stack.start_api(LDM_MAX_QUEUE_LENGTH="100000")
        stack.start_worker()
        alone(stack, body(rng, 2, 7.5))  # warm-up
        for i in range(rounds):
            jobs = mix(rng, n)
            rates: dict[bool, float] = {}
            for previews in (True, False) if i % 2 else (False, True):
                before = previews_sent(stack)
                rates[previews] = burst(stack, [job | {"previews": previews} for job in jobs])
                if previews:
                    sent = previews_sent(stack) - before
            row = {"on_per_s": rates[True], "off_per_s": rates[False], "previews": sent}
            row["ratio"] = rates[True] / rates[False]
            r["rounds"].append(row)
            print(
                f"round {i + 1}: previews on {row['on_per_s']:.2f} jobs/s ({sent} previews), "
                f"off {row['off_per_s']:.2f} jobs/s, ratio {row['ratio']:.3f}",
                flush=True,
            )
    r["ratio_median"] = statistics.median(row["ratio"] for row in r["rounds"])
    return r


def main() -> None:
    """Run and print each round, then the median ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run: check, do not quote")
    parser.add_argument("--rounds", type=int, default=None, help="default 6 (quick: 1)")
    parser.add_argument("--jobs", type=int, default=None, help="default 48 (quick: 8)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    route_library_logs()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    rounds = args.rounds or (1 if args.quick else 6)
    r = measure(rounds, args.jobs or (8 if args.quick else 48), args.seed)
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    print(
        f"tiny-sd 64x64, CPU ({machine}), bursts of {r['jobs']}, {rounds} rounds, "
        f"{time.monotonic() - started:.0f} s, load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"command: python -m bench.previews {' '.join(sys.argv[1:])}".rstrip())
    print(f"previews on / off throughput: median {r['ratio_median']:.3f}")


if __name__ == "__main__":
    main()
