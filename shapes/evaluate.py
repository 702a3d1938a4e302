"""Generate images for held-out prompts and seeds, read them back, report accuracies.

    python -m shapes.evaluate worker/weights/tiny-shapes --count 240 --guidance 1 5 \
        --grid docs/tiny-shapes-samples.png --json docs/tiny-shapes-eval.json

Prompts come from `world.held_out` (seeds training never used); image i is generated from
noise seed i. Each image is read by `shapes.classify` and compared with its caption:
colour and shape always; background always (an unnamed background means white); size
only where the caption names it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageDraw

from shapes.classify import classify
from shapes.world import Scene, caption_for, held_out

ATTRIBUTES = ("colour", "shape", "background", "size")


def load(folder: str | Path) -> DiffusionPipeline:
    """The pipeline in `folder` in float32 (the weights are stored in float16), progress bars
    off."""
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    pipe, prompts: list[str], seeds: list[int], guidance: float, steps: int = 20, batch: int = 32
) -> list[Image.Image]:
    """One image per prompt, each from a CPU generator seeded with its seed."""
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        with torch.inference_mode():
            images += pipe(
                prompts[i : i + batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
            ).images
    return images


def expected(s: Scene) -> dict[str, str | None]:
    """What the caption of `s` asks for (None: not asked)."""
    named = s.caption.split()
    return {
        "colour": s.colour,
        "shape": s.shape,
        "background": s.background,
        "size": s.size if s.size in named else None,
    }


def score(scenes: list[Scene], images: list[Image.Image]) -> dict[str, float]:
    """Accuracy per attribute over the images whose caption names it, and "all": the share
    of images right on every attribute their caption names."""
    hits: dict[str, list[bool]] = {a: [] for a in (*ATTRIBUTES, "all")}
    for s, img in zip(scenes, images, strict=True):
        reading = classify(img)
        right = [
            getattr(reading, attr) == want for attr, want in expected(s).items() if want is not None
        ]
        for attr, want in expected(s).items():
            if want is not None:
                hits[attr].append(getattr(reading, attr) == want)
        hits["all"].append(all(right))
    return {a: float(np.mean(h)) for a, h in hits.items() if h}


def grid(pipe, path: Path, guidance: float, seed: int = 0) -> None:
    """Rows of colours, columns of shapes x backgrounds, labelled; saved as a PNG."""
    from shapes.world import BACKGROUNDS, COLOURS, SHAPES

    cells = [(c, s, b) for c in COLOURS for b in BACKGROUNDS for s in SHAPES]
    prompts = [caption_for(s, c, None, None if b == "white" else b) for c, s, b in cells]
    images = generate(pipe, prompts, [seed + i for i in range(len(prompts))], guidance)
    cols, cell, pad = len(SHAPES) * len(BACKGROUNDS), 64 * 2, 14
    sheet = Image.new("RGB", (cols * cell, len(COLOURS) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, prompts, strict=True)):
        x, y = (i % cols) * cell, (i // cols) * (cell + pad)
        sheet.paste(img.resize((cell, cell), Image.Resampling.NEAREST), (x, y + pad))
        draw.text(
            (x + 2, y + 1),
            text.removeprefix("a ").replace(" on a ", " / ").replace(" background", ""),
            fill="black",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def recolour(
    pipe, count: int = 4, strength: float = 0.7, guidance: float = 5.0
) -> tuple[Image.Image, list[Image.Image]]:
    """Image-to-image: a large red circle, and "a blue circle" made from it at `strength` with
    noise seeds 0..count-1."""
    from diffusers import AutoPipelineForImage2Image

    from shapes.world import render

    init = render(Scene("circle", "red", "large", "white", 32, 32, 18, "a red circle"))
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        out = img2img(
            ["a blue circle"] * count,
            image=[init] * count,
            strength=strength,
            num_inference_steps=20,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s) for s in range(count)],
        ).images
    return init, out


def img2img_strip(pipe, path: Path) -> None:
    """`recolour`'s init image and results side by side, as a PNG."""
    init, out = recolour(pipe)
    cell = 128
    strip = Image.new("RGB", (5 * cell, cell), "white")
    for i, img in enumerate([init, *out]):
        strip.paste(img.resize((cell, cell), Image.Resampling.NEAREST), (i * cell, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grid", type=Path, help="write a labelled sample grid PNG here")
    parser.add_argument("--grid-guidance", type=float, default=5.0)
    parser.add_argument("--img2img", type=Path, help="write the image-to-image strip PNG here")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load(args.model)
    scenes = held_out(args.count)
    prompts = [s.caption for s in scenes]
    results = {"model": str(args.model), "count": args.count, "steps": args.steps, "runs": []}
    # One image alone, as a service job gets it (after a warm-up call).
    generate(pipe, ["a red circle"], [0], 5.0, args.steps)
    start = time.monotonic()
    generate(pipe, ["a large blue square on a black background"], [1], 5.0, args.steps)
    results["seconds_one_image"] = time.monotonic() - start
    print(f"one image, {args.steps} steps: {results['seconds_one_image'] * 1000:.0f} ms")
    for g in args.guidance:
        start = time.monotonic()
        images = generate(pipe, prompts, list(range(args.count)), g, args.steps)
        seconds = time.monotonic() - start
        acc = score(scenes, images)
        results["runs"].append(
            {"guidance_scale": g, "accuracy": acc, "seconds_per_image": seconds / args.count}
        )
        print(
            f"guidance {g:4.1f}: "
            + "  ".join(f"{a} {v:6.1%}" for a, v in acc.items())
            + f"  ({seconds / args.count * 1000:.0f} ms/image)",
            flush=True,
        )
    if args.grid:
        grid(pipe, args.grid, args.grid_guidance)
    if args.img2img:
        img2img_strip(pipe, args.img2img)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
