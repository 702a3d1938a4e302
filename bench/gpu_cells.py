"""The measurements of bench/gpu.py: diffusers' own pipeline call, and the step engine driven
directly (no Redis, no storage). Everything engine-specific is here: ``make_engine``,
``run_jobs`` and ``engine_rate``, written against worker/engine's API."""

from __future__ import annotations

import argparse
import gc
import inspect
import time
from typing import Any

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
# Guessed H200 seconds for a model's build, raw and eager engine cells at native size: held
# in reserve for the models still to come, so compiling an early one cannot starve them.
EAGER_GUESS_S = {"sd15": 25.0, "sdxl": 60.0, "sd3": 55.0, "flux": 60.0}


class Bench:
    """One run: the device, the models' run settings, the budget and the report."""

    def __init__(self, args: argparse.Namespace, start: float) -> None:
        import torch

        from bench.real_models import MODELS, SMOKE_SIZE, SMOKE_STEPS

        self.torch = torch
        self.start = start  # time.monotonic() when the process began: the budget's origin
        self.args = args
        self.smoke = args.smoke
        default = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
        self.device = torch.device(args.device or default)
        self.cuda = self.device.type == "cuda"
        self.specs = {name: MODELS[name] for name in args.models}
        self.size = {n: SMOKE_SIZE if self.smoke else s.size for n, s in self.specs.items()}
        self.steps = {n: SMOKE_STEPS if self.smoke else s.steps for n, s in self.specs.items()}
        self.guess = dict.fromkeys(self.specs, 0.0) if self.smoke else EAGER_GUESS_S
        self.raw_s: dict[str, float] = {}

    def dtype(self, name: str) -> Any:
        # fp16/bf16 are for CUDA; the CPU smoke run checks the code path in fp32.
        return self.specs[name].cuda_dtype if self.cuda else self.torch.float32

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def fits(self, name: str, estimate: float) -> bool:
        later = list(self.specs)[list(self.specs).index(name) + 1 :]
        return estimate + sum(self.guess.get(m, 0.0) for m in later) <= self.left()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def _params(name: str, size: int, steps: int, guidance: float, seed: int) -> Any:
    from app.core.jobs import JobParams

    return JobParams(
        prompt=PROMPT, negative_prompt=None, mode="text-to-image", strength=None,
        width=size, height=size, num_inference_steps=steps, guidance_scale=guidance,
        num_images=1, seed=seed, output_format="png", model=name, scheduler=None,
    )  # fmt: skip


def make_engine(pipe: Any, device: Any) -> Any:
    """The engine over ``pipe``'s family (``load_family`` picks U-Net or flow)."""
    from worker.engine.loop import Engine
    from worker.families import load_family

    family = load_family(pipe, device)
    # The planned API bounded a forward in rows, the landed one in rows x latent pixels
    # (default: 16 guided native images, so batch 8 with guidance runs as one forward).
    if "max_rows" in inspect.signature(Engine).parameters:
        return Engine(family, max_rows=64)
    return Engine(family)


def run_jobs(bench: Bench, engine: Any, name: str, batch: int, steps: int) -> None:
    from worker.engine.state import EngineRequest

    spec, size = bench.specs[name], bench.size[name]
    for i in range(batch):
        params = _params(name, size, steps, spec.guidance, seed=i)
        engine.submit(EngineRequest(job_id=f"{name}-{batch}-{steps}-{i}", params=params))
    outcomes = engine.run()
    failed = [o for o in outcomes if getattr(o, "error", None)]
    if failed:
        raise RuntimeError(f"job {failed[0].job_id}: {failed[0].error}")
    if len(outcomes) != batch or any(len(o.images) != 1 for o in outcomes):
        raise RuntimeError(f"{len(outcomes)} outcomes for {batch} jobs")


def engine_rate(bench: Bench, engine: Any, name: str, batch: int) -> float:
    """Images/s of ``batch`` one-image jobs submitted together, after a short warm-up run
    (the same shapes, so it also compiles them, with fewer steps to save the budget)."""
    steps = bench.steps[name]
    run_jobs(bench, engine, name, batch, min(2, steps))
    bench.sync()
    start = time.perf_counter()
    for _ in range(bench.args.repeats):
        run_jobs(bench, engine, name, batch, steps)
    bench.sync()
    return batch * bench.args.repeats / (time.perf_counter() - start)


def raw_s_per_image(bench: Bench, pipe: Any, name: str) -> float:
    """diffusers' own pipeline call, one image, after a short warm-up call."""
    torch, spec, size, steps = bench.torch, bench.specs[name], bench.size[name], bench.steps[name]
    kwargs = dict(
        prompt=PROMPT, height=size, width=size, guidance_scale=spec.guidance, **spec.call_kwargs
    )
    pipe(num_inference_steps=min(2, steps), generator=torch.Generator().manual_seed(0), **kwargs)
    bench.sync()
    start = time.perf_counter()
    for i in range(bench.args.repeats):
        pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(i), **kwargs)
    bench.sync()
    return (time.perf_counter() - start) / bench.args.repeats
