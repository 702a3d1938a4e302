# Device command. The GPU machine has torch, transformers, accelerate, safetensors, numpy and
# pillow but no diffusers and no pydantic: their wheels (and the few dependencies it may lack:
# requests and its four, a huggingface_hub >= 1.32 that transformers 5.17 accepts, a newer
# typing_extensions) are downloaded into .whl/, git-ignored (.git/info/exclude), so the device
# call must name it in `carry` (11 MB). Every device command starts with this prefix:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
# and the whole call, install included, must end within 8 minutes:
#   <prefix> && python3 -m bench.gpu --out $OUT/gpu.md
"""Real-size models on one GPU: raw diffusers, the step engine, torch.compile, peak memory.

    python -m bench.gpu [--out $OUT/gpu.md] [--budget-s 420] [--models sd15,sdxl,sd3,flux]
    python -m bench.gpu --smoke --out /tmp/gpu.md    # CPU, shrunk models, in seconds

SD 1.5, SDXL base, SD3-medium and FLUX.1-schnell are built from their published configs with
random weights (bench/real_models.py; speed does not depend on the weights) and run at native
size in fp16 (U-Nets) or bf16 (transformers). Per model: diffusers' own pipeline call (batch 1,
s/image), the engine's images/s for B jobs of one image submitted together (B = 1, 4, 8),
eager and with `torch.compile` on the denoiser, and peak GPU memory. The table and a JSON next
to it are rewritten after every cell, so a kill leaves a partial table. The script keeps to
`--budget-s` (imports and builds included): a cell whose estimate does not fit, keeping the
later models' eager cells in reserve, is "skipped (time)" (compile cells go first, being the
slowest); at the budget an alarm stops the cell running and writes the table.
"""

from __future__ import annotations

import time

START = time.monotonic()  # the budget counts imports and builds too

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.gpu_cells import Bench, engine_rate, make_engine, raw_s_per_image  # noqa: E402
from bench.gpu_report import SKIPPED_TIME, Report  # noqa: E402

GRACE_S = 30.0  # after the budget, the watchdog's last resort if a cell will not stop


class TimeUp(BaseException):
    """The budget's alarm (or SIGTERM): not an Exception, so no cell's handler swallows it."""


def _raise_time_up(signum: int, frame: object) -> None:
    raise TimeUp(signal.Signals(signum).name)


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


def _cell(bench: Bench, report: Report, name: str, key: str, estimate: float,
          run: Callable[[], float]) -> None:  # fmt: skip
    """Run one timed cell if it fits the budget; a failure is recorded, not raised."""
    if not bench.fits(name, estimate):
        log(f"{name} {key}: skipped (estimate {estimate:.0f} s, {bench.left():.0f} s left)")
        report.set(name, key, SKIPPED_TIME)
        return
    bench.reset_peak()
    started = time.perf_counter()
    try:
        value: float | str = run()
        error = None
    except Exception as exc:  # one cell's failure (OOM, compile, engine) must not end the run
        value, error = f"failed: {type(exc).__name__}", f"{exc}"[:2000]
        traceback.print_exc()
        bench.free()
    peak = bench.peak_gib()
    row = report.rows[name]
    if peak is not None:
        row["peak_gib"] = max(row["peak_gib"] or 0.0, peak)
    report.set(name, key, value, peak_gib=peak, wall_s=time.perf_counter() - started, error=error)
    shown = f"{value:.3g}" if isinstance(value, float) else value
    log(f"{name} {key}: {shown}" + (f" ({error[:200]})" if error else ""))


def _engine_cells(
    bench: Bench, report: Report, name: str, pipe: Any, kind: str, batches: list[int]
) -> None:
    """``kind`` "eager" or "compiled": one cell per batch size over one engine, smallest
    first. Once one does not fit the budget, the larger ones (costlier) are skipped too."""
    raw, steps, repeats = bench.raw_s.get(name, 0.0), bench.steps[name], bench.args.repeats
    compile_guess = 0.0 if kind == "eager" else bench.args.compile_guess_s
    engine = None
    shapes_run = 0  # compiling costs most at the first shape, again (dynamic) at the second
    for b in set(bench.args.batches) - set(batches):
        report.set(name, f"{kind}_{b}", "not asked")
    for batch in sorted(batches):
        key = f"{kind}_{batch}"
        # Timed repeats of about batch x raw each, a warm-up of min(2, steps) steps (and its
        # prompt encoding and decode), a 30% margin, and the compile guess.
        runs = batch * raw * (repeats + min(2, steps) / steps + 0.1)
        estimate = 1.3 * runs + compile_guess * (1.0, 0.5, 0.0)[min(shapes_run, 2)]
        if not bench.fits(name, estimate):
            log(f"{name} {key} and larger: skipped (estimate {estimate:.0f} s)")
            for b in [b for b in batches if b >= batch]:
                report.set(name, f"{kind}_{b}", SKIPPED_TIME)
            return
        if engine is None:
            try:
                engine = make_engine(pipe, bench.device)
            except Exception as exc:  # the engine (or its family) is missing or refuses
                traceback.print_exc()
                for b in batches:
                    report.set(name, f"{kind}_{b}", f"failed: {type(exc).__name__}",
                               error=f"{exc}"[:2000])  # fmt: skip
                log(f"{name} {kind}: no engine ({type(exc).__name__}: {exc})")
                return
        _cell(bench, report, name, key, estimate,
              lambda e=engine, b=batch: engine_rate(bench, e, name, b))  # fmt: skip
        shapes_run += 1
        if str(report.rows[name][key]).startswith("failed"):
            # A compile that failed (or OOM) once fails again, at a larger shape, slower.
            for b in [b for b in batches if b > batch]:
                report.set(name, f"{kind}_{b}", f"not run (b{batch} failed)")
            return


def bench_model(bench: Bench, report: Report, name: str) -> None:
    """Build ``name``, run its cells, free it."""
    from bench.real_models import build

    torch = bench.torch
    if not bench.fits(name, 0.0):  # not even time to build it
        report.skip_rest(name)
        return
    bench.reset_peak()
    started = time.perf_counter()
    try:
        pipe = build(name, bench.device, bench.dtype(name), smoke=bench.smoke)
        bench.sync()
    except Exception as exc:  # e.g. out of memory: the next model may still fit
        traceback.print_exc()
        report.set(name, "build_s", f"failed: {type(exc).__name__}", error=f"{exc}"[:2000])
        report.skip_rest(name, "failed: build")
        bench.free()
        return
    report.rows[name]["peak_gib"] = bench.peak_gib() if bench.cuda else "n/a (cpu)"
    report.set(name, "build_s", time.perf_counter() - started)
    log(f"{name}: built in {report.rows[name]['build_s']:.1f} s")
    try:
        _cell(bench, report, name, "raw", 0.0, lambda: raw_s_per_image(bench, pipe, name))
        if isinstance(report.rows[name]["raw"], float):
            bench.raw_s[name] = report.rows[name]["raw"]
        _engine_cells(bench, report, name, pipe, "eager", bench.args.batches)
        if name not in bench.args.compile_models:
            _engine_cells(bench, report, name, pipe, "compiled", [])
            return
        attr = "unet" if hasattr(pipe, "unet") else "transformer"
        # What a user does: compile the denoiser module in place, then hand the pipeline over.
        setattr(pipe, attr, torch.compile(getattr(pipe, attr), backend=bench.args.compile_backend))
        _engine_cells(bench, report, name, pipe, "compiled", bench.args.compile_batches)
    finally:
        pipe = None  # the last reference: the model is freed before the next one is built
        torch._dynamo.reset()  # compiled graphs hold the model's weights
        bench.free()


def _meta(bench: Bench) -> dict[str, Any]:
    import diffusers
    import transformers

    torch = bench.torch
    device = torch.cuda.get_device_name(bench.device) if bench.cuda else platform.machine()
    return {
        "title": "Real-size models, random weights" + (" (smoke: shrunk)" if bench.smoke else ""),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"{device} ({bench.device})",
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, python {platform.python_version()}",
        "guidance": ", ".join(f"{s.title} {s.guidance:g}" for s in bench.specs.values()),
        "timing": f"warm-up run of min(2, steps) steps, then {bench.args.repeats} timed repeat(s)",
        "compile": f"torch.compile(denoiser, backend={bench.args.compile_backend!r}), default mode",
        "budget": f"{bench.args.budget_s:.0f} s",
    }  # fmt: skip


def _watchdog(report: Report, seconds: float) -> None:
    """If a cell will not yield to the alarm, write what there is and exit anyway."""

    def stop() -> None:
        log("watchdog: the run overstayed its budget; writing the table and exiting")
        # The main thread may be stuck holding the lock: wait a little, then write anyway.
        if report.lock.acquire(timeout=5):
            report.skip_rest()
        else:
            report.skip_rest(locked=False)
        os._exit(0)

    timer = threading.Timer(max(seconds, 1.0), stop)
    timer.daemon = True
    timer.start()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.real_models import MODELS

    def names(text: str) -> list[str]:
        out = [n for n in text.split(",") if n]
        unknown = set(out) - set(MODELS)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; known: {list(MODELS)}")
        return out

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="shrunk models, 128², 2 steps")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu.md")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--models", type=names, default=list(MODELS))
    parser.add_argument("--compile-models", type=names, default=list(MODELS))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")],
                        default=[1, 4, 8])  # fmt: skip
    parser.add_argument("--compile-batches", type=lambda s: [int(b) for b in s.split(",")],
                        default=None, help="default: --batches; smoke: 1")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per cell")
    parser.add_argument("--compile-backend", default=None, help="inductor; smoke: eager")
    parser.add_argument("--compile-guess-s", type=float, default=None,
                        help="expected compile time of a first shape (90 s; smoke 0)")  # fmt: skip
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if args.no_compile:
        args.compile_models = []
    # The smoke run checks the compile path through dynamo without inductor's minutes of
    # C++ codegen on a CPU.
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    if args.compile_batches is None:
        # Smoke: one compiled shape per model keeps the path checked; dynamo's tracing of
        # each further shape costs seconds on a CPU for nothing new.
        args.compile_batches = args.batches[:1] if args.smoke else args.batches
    if args.compile_guess_s is None:
        args.compile_guess_s = 0.0 if args.smoke else 90.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    bench = Bench(args, START)
    if bench.smoke and not bench.cuda:
        bench.torch.set_num_threads(1)  # tiny ops; spare a busy test box's cores
    report = Report(args.out, _meta(bench), args.batches)
    for name, spec in bench.specs.items():
        dtype = str(bench.dtype(name)).removeprefix("torch.")
        info = dict(title=spec.title, size=bench.size[name], steps=bench.steps[name], dtype=dtype)
        report.add_row(name, info)
    report.write()
    log(f"{report.meta['device']}; {report.meta['versions']}; writing {args.out}")
    for each in (signal.SIGALRM, signal.SIGTERM):
        signal.signal(each, _raise_time_up)
    signal.setitimer(signal.ITIMER_REAL, max(bench.left(), 1.0))
    _watchdog(report, bench.left() + GRACE_S)
    timed_out = False
    try:
        for name in bench.specs:
            bench_model(bench, report, name)
    except TimeUp as stop:
        timed_out = True
        log(f"time is up ({stop}): the cells not run are skipped")
        report.meta["stopped"] = f"out of time ({stop})"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    report.meta["total"] = f"{time.monotonic() - START:.0f} s"
    report.skip_rest()
    log(f"done: {args.out}")
    print(report.markdown(), flush=True)
    if timed_out:
        # An interrupted compile may leave inductor's worker pool busy; exiting normally
        # would wait for it, past the call's limit. The files are written and flushed.
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
