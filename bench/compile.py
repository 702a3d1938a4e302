"""What `LDM_COMPILE=1` buys: a compiled U-Net against the plain one, same weights, one run.

    python -m bench.compile [--calls 10] [--steps 20]

Loads the tiny model twice through the worker's own path (`ResidentPipeline.load`), one with
`compile=True`, warms both up as a worker does (the compiled one compiles there), then
alternates single-job calls and reports the median call time of each, the warm-up time, and
the largest pixel difference between their images for the same seed. Not in `python -m
bench`: compiling takes a minute or more on a CPU.
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from app.core.jobs import JobCreate
from app.core.models import model_spec
from app.core.resolve import resolve_request
from app.core.settings import Settings
from worker.libraries import route_library_logs
from worker.pipeline import ResidentPipeline


def main() -> None:
    """Print warm-up times, median call times and the image difference."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    route_library_logs()
    cache = Path(".cache/models").resolve()
    pipelines, warm_up = {}, {}
    for name, compile_ in (("plain", False), ("compiled", True)):
        settings = Settings(model="tiny-sd", model_cache=cache, compile=compile_)
        start = time.perf_counter()
        pipelines[name] = ResidentPipeline.load(settings)
        pipelines[name].warm_up(model_spec(settings), settings)
        warm_up[name] = time.perf_counter() - start
    params = resolve_request(
        JobCreate(prompt="a red circle", num_inference_steps=args.steps, seed=1),
        model_spec(settings),
        settings,
    )
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    images = {}
    for _ in range(args.calls):
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            images[name] = pipeline.generate(params)[0]
            times[name].append(time.perf_counter() - start)
    plain, compiled = (statistics.median(times[n]) for n in ("plain", "compiled"))
    diff = np.abs(np.asarray(images["plain"], int) - np.asarray(images["compiled"], int)).max()
    print(f"device {pipelines['plain'].device}, tiny-sd, {args.steps} steps, {args.calls} calls")
    print(f"warm-up: plain {warm_up['plain']:.1f} s, compiled {warm_up['compiled']:.1f} s")
    print(
        f"median call: plain {1000 * plain:.0f} ms, compiled {1000 * compiled:.0f} ms "
        f"({plain / compiled:.2f}x); largest pixel difference {diff}/255"
    )


if __name__ == "__main__":
    main()
