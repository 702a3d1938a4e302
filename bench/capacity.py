"""How many workers a load needs: M/M/c (Erlang C) closed forms and a FIFO c-server simulation.

    python -m bench.capacity --table [--seed 1] [--mix NAME=MEAN_S:CV ...] [--targets 1 5]
    python -m bench.capacity --validate

Model: jobs arrive as a Poisson stream at `arrival_rate` jobs/s and wait in one FIFO queue
served by `c` identical workers (one GPU each, one job at a time). The wait is the time from
submit to the start of the job, as in the service's `started_at - created_at`.

- M/M/c (exponential service): closed forms from Erlang C,
  P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t), a = lambda / mu.
- M/G/c by simulation: Poisson arrivals, any service-time distribution (measured samples,
  lognormal, deterministic, exponential), c FIFO servers; reports wait quantiles and utilisation.

Diffusion jobs of one kind take nearly the same time every run, so M/M/c (service CV = 1) is
pessimistic for them; the simulation with the real spread is the figure to size with, M/M/c is
the quick upper bound.

The GPU service times of the default job mixes are ASSUMPTIONS taken from public benchmarks of
H100-class GPUs, not measured here (this project's machines have no GPU); pass `--mix` to use
your own measurements.
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# -- service-time distributions ------------------------------------------------------------


@dataclass(frozen=True)
class ServiceTime:
    """A service-time distribution in seconds: deterministic, lognormal, exponential or samples."""

    kind: str
    mean: float
    cv: float = 0.0
    samples: tuple[float, ...] = ()

    @classmethod
    def deterministic(cls, mean: float) -> ServiceTime:
        """Every job takes exactly `mean` seconds."""
        return cls("deterministic", mean)

    @classmethod
    def lognormal(cls, mean: float, cv: float) -> ServiceTime:
        """Lognormal with this mean and coefficient of variation (std / mean)."""
        return cls("lognormal", mean, cv) if cv > 0 else cls.deterministic(mean)

    @classmethod
    def exponential(cls, mean: float) -> ServiceTime:
        """Exponential (the M/M/c assumption)."""
        return cls("exponential", mean, 1.0)

    @classmethod
    def empirical(cls, samples: Sequence[float]) -> ServiceTime:
        """Resampled (with replacement) from measured service times."""
        values = tuple(float(x) for x in samples)
        if not values or min(values) < 0:
            raise ValueError("need at least one non-negative sample")
        mean = sum(values) / len(values)
        std = float(np.std(values))
        return cls("empirical", mean, std / mean if mean else 0.0, values)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` independent service times."""
        if self.kind == "deterministic":
            return np.full(n, self.mean)
        if self.kind == "exponential":
            return rng.exponential(self.mean, n)
        if self.kind == "lognormal":
            sigma2 = math.log1p(self.cv**2)
            return rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), n)
        if self.kind == "empirical":
            return rng.choice(np.asarray(self.samples), n, replace=True)
        raise ValueError(f"unknown service-time kind {self.kind!r}")


def as_service(service: float | Sequence[float] | np.ndarray | ServiceTime) -> ServiceTime:
    """A mean becomes exponential (M/M/c), samples become an empirical distribution."""
    if isinstance(service, ServiceTime):
        return service
    if isinstance(service, int | float):
        return ServiceTime.exponential(float(service))
    return ServiceTime.empirical(list(service))


# -- M/M/c closed forms ----------------------------------------------------------------------


def erlang_c(c: int, offered_load: float) -> float:
    """Probability that a job has to wait, C(c, a), with a = lambda / mu; 1.0 if unstable.

    Uses the Erlang B recursion, which stays finite for thousands of servers.
    """
    if offered_load <= 0:
        return 0.0
    if offered_load >= c:
        return 1.0
    b = 1.0
    for k in range(1, c + 1):
        b = offered_load * b / (k + offered_load * b)
    return c * b / (c - offered_load * (1 - b))


def mmc_wait_tail(arrival_rate: float, service_mean: float, c: int, t: float) -> float:
    """P(W > t) in M/M/c."""
    a = arrival_rate * service_mean
    if a >= c:
        return 1.0
    return erlang_c(c, a) * math.exp(-(c / service_mean - arrival_rate) * t)


def mmc_mean_wait(arrival_rate: float, service_mean: float, c: int) -> float:
    """E[W] = C(c, a) / (c*mu - lambda) in M/M/c; inf if unstable."""
    a = arrival_rate * service_mean
    if a >= c:
        return math.inf
    return erlang_c(c, a) / (c / service_mean - arrival_rate)


def mmc_wait_quantile(arrival_rate: float, service_mean: float, c: int, q: float) -> float:
    """The q-quantile of the wait in M/M/c: 0 when fewer than 1-q of jobs wait at all."""
    a = arrival_rate * service_mean
    if a >= c:
        return math.inf
    p_wait = erlang_c(c, a)
    if p_wait <= 1 - q:
        return 0.0
    return math.log(p_wait / (1 - q)) / (c / service_mean - arrival_rate)


# -- simulation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimResult:
    """Wait statistics (seconds) of the jobs after the warm-up, and the servers' utilisation."""

    servers: int
    jobs: int
    utilisation: float
    p_wait: float
    mean: float
    p50: float
    p95: float
    p99: float


def fifo_waits(arrivals: Sequence[float], services: Sequence[float], c: int) -> list[float]:
    """Waits of jobs served first come, first served by `c` identical servers.

    The next job in line goes to the server that frees first: a heap of free times.
    """
    free = [0.0] * c
    waits = []
    for t, s in zip(arrivals, services, strict=True):
        start = max(free[0], t)
        heapq.heapreplace(free, start + s)
        waits.append(start - t)
    return waits


def poisson_arrivals(rng: np.random.Generator, arrival_rate: float, n: int) -> np.ndarray:
    """`n` arrival times of a Poisson stream starting at 0."""
    return np.cumsum(rng.exponential(1 / arrival_rate, n))


def _default_jobs(arrival_rate: float, service: ServiceTime) -> int:
    # Enough jobs for stable p95s, and at least ~100 service times of simulated time at scale.
    return max(40_000, int(100 * math.ceil(arrival_rate * service.mean)))


def _summarise(
    arrivals: np.ndarray, services: np.ndarray, waits: Sequence[float], c: int, warmup: float
) -> SimResult:
    skip = int(len(waits) * warmup)
    w = np.asarray(waits[skip:])
    span = float(arrivals[-1] - arrivals[skip])
    busy = float(services[skip:].sum())
    p50, p95, p99 = np.quantile(w, [0.5, 0.95, 0.99])
    return SimResult(
        servers=c,
        jobs=len(w),
        utilisation=busy / (c * span) if span > 0 else math.nan,
        p_wait=float(np.mean(w > 0)),
        mean=float(w.mean()),
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
    )


def simulate(
    arrival_rate: float,
    c: int,
    service: float | Sequence[float] | np.ndarray | ServiceTime,
    n_jobs: int | None = None,
    seed: int = 0,
    warmup: float = 0.1,
) -> SimResult:
    """Simulate M/G/c FIFO: Poisson arrivals, `c` servers; the first `warmup` share is dropped.

    It starts empty; near 100 % utilisation the queue settles slowly, so a finite run
    understates the wait there (the M/M/c closed form has no such bias).
    """
    dist = as_service(service)
    n = n_jobs or _default_jobs(arrival_rate, dist)
    rng = np.random.default_rng(seed)
    arrivals = poisson_arrivals(rng, arrival_rate, n)
    services = dist.draw(rng, n)
    waits = fifo_waits(arrivals.tolist(), services.tolist(), c)
    return _summarise(arrivals, services, waits, c, warmup)


# -- sizing ----------------------------------------------------------------------------------


def mmc_workers_needed(
    arrival_rate: float, service_mean: float, wait_target: float, q: float = 0.95
) -> int:
    """Smallest c with the M/M/c q-quantile of the wait at most `wait_target` seconds."""
    c = max(1, math.floor(arrival_rate * service_mean) + 1)
    while mmc_wait_quantile(arrival_rate, service_mean, c, q) > wait_target:
        c += 1
    return c


def workers_needed(
    arrival_rate: float,
    service: float | Sequence[float] | np.ndarray | ServiceTime,
    wait_p95_target: float,
    *,
    q: float = 0.95,
    n_jobs: int | None = None,
    seed: int = 0,
    warmup: float = 0.1,
) -> int:
    """Smallest number of workers whose q-quantile (p95) wait is at most the target, in seconds.

    A plain mean (float) uses the M/M/c closed form; samples or a `ServiceTime` use the
    simulation, with the same random arrivals and services for every c tried (so the answer
    is monotone and reproducible for a seed).
    """
    if isinstance(service, int | float):
        return mmc_workers_needed(arrival_rate, float(service), wait_p95_target, q)
    dist = as_service(service)
    n = n_jobs or _default_jobs(arrival_rate, dist)
    rng = np.random.default_rng(seed)
    arrivals = poisson_arrivals(rng, arrival_rate, n)
    services = dist.draw(rng, n)
    arrivals_list, services_list, skip = arrivals.tolist(), services.tolist(), int(n * warmup)

    def meets(c: int) -> bool:
        waits = fifo_waits(arrivals_list, services_list, c)[skip:]
        return float(np.quantile(waits, q)) <= wait_p95_target

    # Below the offered load no number of jobs is enough; M/M/c is the usual upper bound.
    lo = max(1, math.floor(arrival_rate * dist.mean) + 1)
    hi = max(lo, mmc_workers_needed(arrival_rate, dist.mean, wait_p95_target, q))
    while not meets(hi):
        lo, hi = hi + 1, hi + max(1, hi // 4)
    if meets(lo):
        return lo
    while hi - lo > 1:  # invariant: lo fails, hi meets
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi


# -- the CLI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """A job mix: a name and its per-job service time on one GPU (seconds)."""

    name: str
    service: ServiceTime
    note: str = ""


# ASSUMED GPU service times (one job, one H100-class GPU, fp16, batch 1, including VAE decode
# and image encoding), read from public benchmarks; NOT measured in this project.
DEFAULT_MIXES = (
    Mix("sd-turbo 512px 1-4 steps", ServiceTime.lognormal(0.2, 0.35), "~0.1-0.3 s"),
    Mix("sd-1.5 512px 30 steps", ServiceTime.lognormal(1.5, 0.1), "~1.5 s"),
    Mix("sdxl 1024px 30 steps", ServiceTime.lognormal(5.0, 0.1), "~5 s"),
)
LOADS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


def fmt_s(x: float) -> str:
    """Seconds, short."""
    if math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    if x < 1:
        return f"{x:.3f}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def parse_mix(text: str) -> Mix:
    """NAME=MEAN_S:CV, e.g. 'sdxl=5.0:0.1' (CV 0 means deterministic)."""
    name, _, spec = text.partition("=")
    mean, _, cv = spec.partition(":")
    if not name or not mean:
        raise argparse.ArgumentTypeError(f"expected NAME=MEAN_S[:CV], got {text!r}")
    return Mix(name, ServiceTime.lognormal(float(mean), float(cv or 0)))


def print_header(groups: Sequence[str]) -> None:
    """A markdown table header; each group may hold several ' | '-separated columns."""
    columns = " | ".join(groups)
    print(f"| {columns} |")
    print("|---" * (columns.count(" | ") + 1) + "|")


def sizing_table(
    mix: Mix, targets: Sequence[float], seed: int, max_util: float, max_load: float = 1000
) -> None:
    """Workers needed per load for each p95 target: M/M/c, simulation, and with a headroom cap."""
    s = mix.service
    print_header(
        ["jobs/s", "offered load (GPUs busy)"]
        + [f"p95<{t:g}s: M/M/c | sim | util | sim, util<={max_util:.0%}" for t in targets]
    )
    for load in LOADS:
        a = load * s.mean
        if a < 0.1 or a > max_load:
            continue
        cells = []
        for target in targets:
            mmc = mmc_workers_needed(load, s.mean, target)
            sim = workers_needed(load, s, target, seed=seed)
            capped = max(sim, math.ceil(a / max_util - 1e-9))
            cells.append(f"{mmc} | {sim} | {a / sim:.1%} | {capped}")
        print(f"| {load:g} | {a:.1f} | " + " | ".join(cells) + " |", flush=True)


def utilisation_table(mix: Mix, seed: int, levels: Sequence[float] = (0.70, 0.85)) -> None:
    """Wait (seconds) at fixed utilisation for 1..1000 GPUs, by M/M/c and by simulation."""
    s = mix.service
    print_header(
        ["GPUs"] + [f"{u:.0%}: jobs/s | mean M/M/c | p95 M/M/c | p95 sim | p99 sim" for u in levels]
    )
    for c in GPU_COUNTS:
        cells = []
        for u in levels:
            lam = u * c / s.mean
            sim = simulate(lam, c, s, seed=seed)
            cells.append(
                f"{lam:.4g} | {fmt_s(mmc_mean_wait(lam, s.mean, c))} | "
                f"{fmt_s(mmc_wait_quantile(lam, s.mean, c, 0.95))} | "
                f"{fmt_s(sim.p95)} | {fmt_s(sim.p99)}"
            )
        print(f"| {c} | " + " | ".join(cells) + " |", flush=True)


def validate(seed: int, seeds: int = 4) -> None:
    """The simulation with exponential service against the M/M/c closed forms."""
    print(
        f"simulation (exponential service, 400k jobs, mean of seeds {seed}..{seed + seeds - 1})"
        " vs M/M/c closed form; mean service 1 s"
    )
    print(
        "| c | util | P(wait) formula | P(wait) sim | mean formula | mean sim "
        "| p95 formula | p95 sim |"
    )
    print("|---" * 8 + "|")
    for c, u in ((1, 0.7), (2, 0.7), (2, 0.85), (16, 0.85), (128, 0.95)):
        lam = u * c
        runs = [
            simulate(lam, c, ServiceTime.exponential(1.0), n_jobs=400_000, seed=seed + i)
            for i in range(seeds)
        ]

        def avg(field: str, runs: list[SimResult] = runs) -> float:
            return sum(getattr(r, field) for r in runs) / len(runs)

        print(
            f"| {c} | {avg('utilisation'):.3f} | {erlang_c(c, lam):.3f} | {avg('p_wait'):.3f} | "
            f"{mmc_mean_wait(lam, 1.0, c):.3f} | {avg('mean'):.3f} | "
            f"{mmc_wait_quantile(lam, 1.0, c, 0.95):.3f} | {avg('p95'):.3f} |",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Print the sizing tables (or the validation of the simulation)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print the sizing tables")
    parser.add_argument("--validate", action="store_true", help="simulation vs closed form")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--mix",
        type=parse_mix,
        action="append",
        help="NAME=MEAN_S:CV (lognormal; CV 0 = deterministic); repeat; replaces the defaults",
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument(
        "--max-util", type=float, default=0.85, help="headroom cap for the last sizing column"
    )
    args = parser.parse_args(argv)
    if not (args.table or args.validate):
        parser.error("pass --table and/or --validate")
    if args.validate:
        validate(args.seed)
    if args.table:
        mixes = args.mix or DEFAULT_MIXES
        if not args.mix:
            print(
                "GPU service times below are ASSUMPTIONS from public H100-class benchmarks, "
                "not measured here (no GPU on this machine); override with --mix."
            )
        print(f"seed {args.seed}; simulation: Poisson arrivals, lognormal service, FIFO.")
        for mix in mixes:
            s = mix.service
            note = f" ({mix.note})" if mix.note else ""
            print(f"\n### {mix.name}: service mean {s.mean:g} s{note}, CV {s.cv:g}\n")
            print("Workers needed for a p95 wait target (util = utilisation at the sim's answer)\n")
            sizing_table(mix, args.targets, args.seed, args.max_util)
            print("\nWait in seconds at fixed utilisation\n")
            utilisation_table(mix, args.seed)


if __name__ == "__main__":
    main()
