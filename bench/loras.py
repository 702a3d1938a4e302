"""What per-request LoRA stacks cost, and what batching across adapters buys, in this process.

    python -m bench.loras [--rounds 3] [--jobs 32] [--adapters 4] [--quick]

The worker's own pipeline and engine on tiny-sd (64x64, 20 steps, guidance 7.5, CPU), with
random rank-8 adapters on every attention projection of the U-Net and text encoder. Each
round times three runs of the same burst (all jobs submitted at once), in turn:

- base: no job has an adapter;
- mixed: each job a random stack of 0..2 of the adapters (scale 1: a server that splits by
  adapter would not also split by scale), one engine, so jobs with different stacks share
  forwards (what ldm-serve does);
- split: the same jobs run as one batch per distinct stack, one after the other (what a
  server that batches only requests with the same adapter can do at best).

It prints mixed/base (what the adapters cost) and split/mixed (what mixing saves), per round
and the median. Adapters are loaded before the clock starts (the store keeps them).
"""

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from app.core.jobs import JobParams, LoraUse
from app.core.loras import registry_from
from app.core.models import TINY_MODEL
from app.core.settings import Settings
from worker.engine.state import EngineRequest
from worker.libraries import route_library_logs
from worker.pipeline import ResidentPipeline

RANK = 8


def make_adapters(pipe, folder: Path, count: int) -> list[str]:
    """`count` random kohya-format adapters on every attention projection of the U-Net and
    the text encoder, written as the registry lays them out (`<model>/<name>.safetensors`)."""
    targets = {
        "unet": ("lora_unet_", ("to_q", "to_k", "to_v", "to_out.0")),
        "text_encoder": ("lora_te_text_model_", ("q_proj", "k_proj", "v_proj", "out_proj")),
    }
    names = []
    for i in range(count):
        gen = torch.Generator().manual_seed(100 + i)
        tensors = {}
        for part, (prefix, ends) in targets.items():
            for path, module in getattr(pipe, part).named_modules():
                if isinstance(module, torch.nn.Linear) and path.endswith(ends):
                    key = prefix + path.removeprefix("text_model.").replace(".", "_")
                    down = torch.randn(RANK, module.in_features, generator=gen) * 0.1
                    up = torch.randn(module.out_features, RANK, generator=gen) * 0.1
                    tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
                    tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
        (folder / TINY_MODEL).mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / TINY_MODEL / f"a{i}.safetensors")
        names.append(f"a{i}")
    return names


def burst(rng: random.Random, n: int, uses: list[LoraUse]) -> list[JobParams]:
    """`n` jobs, each with a random stack of 0..2 of the adapters."""
    return [_params(i, tuple(rng.sample(uses, rng.randint(0, 2)))) for i in range(n)]


def _params(seed: int, loras: tuple[LoraUse, ...]) -> JobParams:
    return JobParams(
        prompt="a red circle on a blue background",
        negative_prompt=None,
        mode="text-to-image",
        strength=None,
        width=64,
        height=64,
        num_inference_steps=20,
        guidance_scale=7.5,
        num_images=1,
        seed=seed,
        output_format="png",
        model=TINY_MODEL,
        loras=loras,
    )


def seconds(pipeline: ResidentPipeline, groups: list[list[JobParams]]) -> float:
    """Each group through a fresh engine, one after the other, to their images."""
    started = time.perf_counter()
    for group in groups:
        engine = pipeline.engine()
        for i, params in enumerate(group):
            engine.submit(EngineRequest(f"job-{i}", params))
        outcomes = engine.run()
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    return time.perf_counter() - started


def measure(rounds: int, n: int, adapters: int, seed: int = 7) -> dict[str, list[float]]:
    """Per round: base, mixed and split bursts of the same `n` jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model=TINY_MODEL, device="cpu", log_level="WARNING", lora_dir=tmp)
        pipeline = ResidentPipeline.load(settings)
        make_adapters(pipeline.pipe, Path(tmp), adapters)
        listed = registry_from(settings).adapters(TINY_MODEL)
        uses = [LoraUse(name=a.name, scale=1.0, sha256=a.sha256) for a in listed.values()]
        while not pipeline.family.ready(EngineRequest("load", _params(0, tuple(uses)))):
            time.sleep(0.01)
        rng = random.Random(seed)
        pipeline.generate(_params(0, ()))  # warm
        out: dict[str, list[float]] = {"mixed_over_base": [], "split_over_mixed": []}
        for _ in range(rounds):
            jobs = burst(rng, n, uses)
            base = seconds(pipeline, [[j.model_copy(update={"loras": ()}) for j in jobs]])
            mixed = seconds(pipeline, [jobs])
            by_stack: dict[tuple, list[JobParams]] = {}
            for job in jobs:
                key = tuple(sorted((u.name, u.scale) for u in job.loras))
                by_stack.setdefault(key, []).append(job)
            split = seconds(pipeline, list(by_stack.values()))
            out["mixed_over_base"].append(mixed / base)
            out["split_over_mixed"].append(split / mixed)
            print(
                f"base {base:.2f} s, mixed {mixed:.2f} s, split {split:.2f} s "
                f"({len(by_stack)} stacks)",
                flush=True,
            )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="check it runs: 1 round of 6")
    args = parser.parse_args()
    route_library_logs()
    if args.quick:
        args.rounds, args.jobs = 1, 6
    r = measure(args.rounds, args.jobs, args.adapters)
    print(f"tiny-sd 64x64, CPU, bursts of {args.jobs}, {args.adapters} adapters (rank {RANK})")
    for name, ratios in r.items():
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{name}: median {statistics.median(ratios):.2f} ({listed})")


if __name__ == "__main__":
    main()
