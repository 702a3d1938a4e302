"""Inpainting examples in the shapes world: a scene of one or two shapes, a rectangular mask
over one of them, and the caption of the shape inside the mask.

The shapes, colours, sizes, backgrounds, captions and drawing are `shapes.world`'s: the
target is `world.scene(seed)` moved into the mask (its caption is the example's), the other
shape (if any) is another scene's shape on the same background, wholly outside the mask,
with at least `GAP` pixels between the two. Masks are halves, quarters, random boxes that
hold the target, or (one-shape scenes only) the whole image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from shapes.world import BACKGROUNDS, HELD_OUT_START, SIZE, Scene, render, scene

HALF = SIZE // 2
GAP = 2  # pixels between the other shape's box and the mask (so, the target)
# Mask kinds and their shares; a target too large for a half or a quarter gets a box.
KINDS = (("whole", 0.08), ("half", 0.50), ("quarter", 0.15), ("box", 0.27))
TWO_SHAPES = 0.8  # share of examples (other than "whole") with a second shape
BOX_MAX = 48
HALVES = ((0, 0, HALF, SIZE), (HALF, 0, SIZE, SIZE), (0, 0, SIZE, HALF), (0, HALF, SIZE, SIZE))
QUARTERS = tuple((x, y, x + HALF, y + HALF) for y in (0, HALF) for x in (0, HALF))

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1, y1 exclusive


@dataclass(frozen=True)
class Example:
    """One inpainting example: the shape to paint, the one to keep, the mask rectangle."""

    target: Scene  # inside the mask; its caption is the example's caption
    other: Scene | None  # outside the mask, same background
    box: Box
    kind: str

    @property
    def caption(self) -> str:
        return self.target.caption


def shape_box(s: Scene) -> tuple[float, float, float, float]:
    """The shape's bounding box (floats)."""
    return s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius


def apart(s: Scene, box: Box, gap: float = GAP) -> bool:
    """Whether the shape's box keeps at least `gap` pixels from the rectangle `box`."""
    x0, y0, x1, y1 = shape_box(s)
    return x1 <= box[0] - gap or x0 >= box[2] + gap or y1 <= box[1] - gap or y0 >= box[3] + gap


def inside(s: Scene, box: Box) -> bool:
    """Whether every pixel the shape touches is in the rectangle `box`."""
    x0, y0, x1, y1 = shape_box(s)
    return (
        box[0] <= math.floor(x0)
        and box[1] <= math.floor(y0)
        and (math.ceil(x1) <= box[2] and math.ceil(y1) <= box[3])
    )


def _place(rng: random.Random, radius: float, box: Box) -> tuple[float, float]:
    """A centre that keeps a shape of `radius` one pixel inside `box`."""
    m = radius + 1
    return rng.uniform(box[0] + m, box[2] - m), rng.uniform(box[1] + m, box[3] - m)


def _random_box(rng: random.Random, radius: float) -> Box:
    """A rectangle, anywhere in the image, large enough for a shape of `radius` (and, up to
    `BOX_MAX` wide, small enough to leave room for another)."""
    least = math.ceil(2 * radius) + 3
    most = max(least, BOX_MAX)
    w, h = rng.randint(least, most), rng.randint(least, most)
    x0, y0 = rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)
    return x0, y0, x0 + w, y0 + h


def example(seed: int) -> Example:
    """The example of `seed`: its target's attributes and caption are `world.scene(seed)`'s."""
    rng = random.Random(f"inpaint:{seed}")
    target = scene(seed)
    r, kind = rng.random(), "box"
    for name, share in KINDS:
        if r < share:
            kind = name
            break
        r -= share
    fits = 2 * target.radius + 2 <= HALF
    if kind in ("half", "quarter") and not fits:
        kind = "box"
    if kind == "whole":
        box: Box = (0, 0, SIZE, SIZE)
    elif kind == "half":
        box = rng.choice(HALVES)
    elif kind == "quarter":
        box = rng.choice(QUARTERS)
    else:
        box = _random_box(rng, target.radius)
    cx, cy = _place(rng, target.radius, box)
    target = replace(target, cx=cx, cy=cy)
    other = None
    if kind != "whole" and rng.random() < TWO_SHAPES:
        # Another scene's shape, colour and size, on this scene's background (tries favour
        # small shapes, which fit beside more masks).
        for _ in range(50):
            look = scene(rng.randrange(HELD_OUT_START))
            cx, cy = _place(rng, look.radius, (0, 0, SIZE, SIZE))
            candidate = replace(look, background=target.background, cx=cx, cy=cy, caption="")
            if apart(candidate, box):
                other = candidate
                break
    return Example(target, other, box, kind)


def render_shapes(shapes: list[Scene]) -> Image.Image:
    """Shapes that do not touch, on their (shared) background, each drawn by `world.render`."""
    first, *rest = shapes
    out = np.asarray(render(first)).copy()
    bg = np.array(BACKGROUNDS[first.background], np.uint8)
    for s in rest:
        px = np.asarray(render(s))
        drawn = (px != bg).any(axis=2)
        out[drawn] = px[drawn]
    return Image.fromarray(out)


def mask_image(box: Box) -> Image.Image:
    """The mask as diffusers takes it: white (255) = repaint, black = keep."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(mask, "L")


def render_example(ex: Example) -> tuple[Image.Image, Image.Image]:
    """The full scene (the training target) and the mask."""
    shapes = [ex.target] + ([ex.other] if ex.other else [])
    return render_shapes(shapes), mask_image(ex.box)


def dataset(start: int, count: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Examples `start .. start+count-1`: uint8 scenes (N, 64, 64, 3), uint8 masks (N, 64, 64;
    255 = repaint) and the captions of the masked shapes."""
    examples = [example(seed) for seed in range(start, start + count)]
    pairs = [render_example(ex) for ex in examples]
    images = np.stack([np.asarray(image) for image, _ in pairs])
    masks = np.stack([np.asarray(mask) for _, mask in pairs])
    return images, masks, [ex.caption for ex in examples]
