"""Inpainting with tiny-shapes (or tiny-shapes-inpaint), read back: a red circle in the left
half, the right half masked, the prompt asks for a blue square. Over a set of seeds, through
the worker's own engine (what the service runs) or diffusers' own inpainting pipeline:

- the unmasked (left) half must be unchanged: the largest pixel difference to the scene;
- the masked (right) half must hold a blue square: the shapes classifier on that half (its
  fill-ratio rule does not change when the half is stretched back to a square).

Other tasks (`--task`) put another shape, colour, background and half to the same test.

    python -m shapes.inpaint_evaluate --count 50 --grid docs/tiny-shapes-inpaint.png \
        --json docs/tiny-shapes-inpaint.json
    python -m shapes.inpaint_evaluate --model worker/weights/tiny-shapes-inpaint \
        --engine diffusers --task green-triangle --count 50
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.core.jobs import JobParams
from app.core.models import SHAPES_MODEL
from app.core.settings import Settings
from shapes.classify import classify
from shapes.inpaint_tasks import HALVES, PROMPT, TASKS, half_mask, kept_scene
from shapes.world import SIZE


@dataclass
class Result:
    seed: int
    kept_difference: int  # max |pixel - scene| over the unmasked half
    colour: str
    shape: str
    want: tuple[str, str] = ("blue", "square")

    @property
    def hit(self) -> bool:
        return (self.colour, self.shape) == tuple(self.want)

    @property
    def ok(self) -> bool:
        return self.kept_difference == 0 and self.hit


def params(
    seed: int,
    steps: int = 20,
    guidance: float = 5.0,
    prompt: str = PROMPT,
    model: str = SHAPES_MODEL,
) -> JobParams:
    return JobParams(
        prompt=prompt,
        negative_prompt=None,
        mode="inpainting",
        strength=1.0,
        width=SIZE,
        height=SIZE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_images=1,
        seed=seed,
        output_format="png",
        model=model,
    )


def worker_inpainter(model: str, steps: int, guidance: float, prompt: str):
    """(scene, mask, seed) -> image, through the worker's engine (what the service runs)."""
    from worker.pipeline import ResidentPipeline  # torch: only when run

    resident = ResidentPipeline.load(Settings(model=model, device="cpu"))

    def run(scene: Image.Image, mask: Image.Image, seed: int) -> Image.Image:
        (image,) = resident.generate(params(seed, steps, guidance, prompt, model), scene, mask)
        return image

    return run


def diffusers_pipeline(model: str):
    """diffusers' own inpainting pipeline for `model` (a name or a folder, as the worker
    resolves it): the folder's pipeline when
    it is an inpainting one (tiny-shapes-inpaint), else StableDiffusionInpaintPipeline over
    its components (masked latent blending for a 4-channel U-Net)."""
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionInpaintPipeline

    from worker.pipeline import model_source

    pipe = DiffusionPipeline.from_pretrained(model_source(Settings(model=model, device="cpu")))
    if not isinstance(pipe, StableDiffusionInpaintPipeline):
        pipe = StableDiffusionInpaintPipeline(**pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=torch.float32)


def diffusers_inpainter(model: str, steps: int, guidance: float, prompt: str):
    """(scene, mask, seed) -> image, through diffusers' StableDiffusionInpaintPipeline, the
    unmasked pixels pasted back with diffusers' own overlay (as the service does)."""
    import torch

    pipe = diffusers_pipeline(model)

    def run(scene: Image.Image, mask: Image.Image, seed: int) -> Image.Image:
        image = pipe(
            prompt,
            image=scene,
            mask_image=mask,
            height=SIZE,
            width=SIZE,
            strength=1.0,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        return pipe.image_processor.apply_overlay(mask, scene, image)

    return run


def evaluate(
    count: int,
    start: int = 0,
    model: str = SHAPES_MODEL,
    engine: str = "worker",
    task: str = "blue-square",
    steps: int = 20,
    guidance: float = 5.0,
) -> tuple[list[Result], list[tuple[Image.Image, ...]]]:
    """`count` inpainting jobs (scene seed = noise seed = start + i), read back."""
    spec = TASKS[task]
    make = worker_inpainter if engine == "worker" else diffusers_inpainter
    inpaint = make(model, steps, guidance, spec.prompt)
    mask = half_mask(spec.masked)
    x0, y0, x1, y1 = HALVES[spec.masked]
    keep = np.asarray(mask) == 0
    results, samples = [], []
    for seed in range(start, start + count):
        scene = kept_scene(seed, spec)
        image = inpaint(scene, mask, seed)
        ours, theirs = np.asarray(image, np.int16), np.asarray(scene, np.int16)
        kept = int(np.abs(ours[keep] - theirs[keep]).max())
        reading = classify(image.crop((x0, y0, x1, y1)))
        results.append(Result(seed, kept, reading.colour, reading.shape, spec.want))
        samples.append((scene, mask.convert("RGB"), image))
    return results, samples


def summarise(results: list[Result], task: str) -> dict:
    n = len(results)
    colour, shape = TASKS[task].want
    return {
        "unmasked_half_unchanged": sum(r.kept_difference == 0 for r in results) / n,
        f"{colour}_{shape}_in_masked_half": sum(r.hit for r in results) / n,
        colour: sum(r.colour == colour for r in results) / n,
        shape: sum(r.shape == shape for r in results) / n,
    }


def grid(samples: list[tuple[Image.Image, ...]], path: Path, columns: int = 8) -> None:
    """Each sample's pictures (scene over result, or scene / mask / result) stacked in a
    column, `columns` samples a row, at 2x."""
    per = len(samples[0])
    rows = -(-len(samples) // columns)
    sheet = Image.new("RGB", (columns * (SIZE + 4) * 2, rows * (per * SIZE + 8) * 2), "white")
    for i, pictures in enumerate(samples):
        x, y = (i % columns) * (SIZE + 4), (i // columns) * (per * SIZE + 8)
        for j, picture in enumerate(pictures):
            big = picture.resize((2 * SIZE, 2 * SIZE), Image.Resampling.NEAREST)
            sheet.paste(big, (2 * x, 2 * (y + j * SIZE)))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument(
        "--model",
        default=SHAPES_MODEL,
        help="a model name the worker knows (tiny-shapes, tiny-shapes-inpaint) or a folder",
    )
    parser.add_argument("--engine", choices=("worker", "diffusers"), default="worker")
    parser.add_argument("--task", choices=list(TASKS), nargs="+", default=["blue-square"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--grid", type=Path, help="a PNG of 16 samples (shared by the tasks)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    summaries, shown = [], []
    for task in args.task:
        started = time.perf_counter()
        results, samples = evaluate(
            args.count, args.start, args.model, args.engine, task, args.steps, args.guidance
        )
        summary = {
            "model": args.model,
            "engine": args.engine,
            "task": task,
            "prompt": TASKS[task].prompt,
            "count": len(results),
            "guidance": args.guidance,
            **summarise(results, task),
            "seconds": round(time.perf_counter() - started, 1),
            "misses": [vars(r) for r in results if not r.ok],
        }
        print(json.dumps({k: v for k, v in summary.items() if k != "misses"}, indent=2))
        summaries.append(summary)
        shown += samples[: 16 // len(args.task)]
    if args.json:
        report = summaries[0] if len(summaries) == 1 else summaries
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.grid:
        grid(shown, args.grid)


if __name__ == "__main__":
    main()
