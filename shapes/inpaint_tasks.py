"""The inpainting tasks `shapes.inpaint_evaluate` reads back: a scene with one shape in one
half, the other half masked, and what the prompt asks to paint there."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shapes.world import SIZE, Scene, render

PROMPT = "a small blue square"
HALF = SIZE // 2
# x0, y0, x1, y1 of each half
HALVES = {
    "left": (0, 0, HALF, SIZE),
    "right": (HALF, 0, SIZE, SIZE),
    "top": (0, 0, SIZE, HALF),
    "bottom": (0, HALF, SIZE, SIZE),
}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


@dataclass(frozen=True)
class Task:
    """A scene of one shape (`kept`) in the half opposite `masked`, and what to paint there."""

    prompt: str
    kept: tuple[str, str]  # shape, colour of the shape in the kept half
    background: str
    masked: str  # the half to repaint
    want: tuple[str, str]  # colour, shape expected in the masked half


TASKS = {
    "blue-square": Task(PROMPT, ("circle", "red"), "white", "right", ("blue", "square")),
    "green-triangle": Task(
        "a small green triangle", ("square", "yellow"), "white", "left", ("green", "triangle")
    ),
    "purple-circle": Task(
        "a small purple circle on a black background",
        ("triangle", "orange"),
        "black",
        "bottom",
        ("purple", "circle"),
    ),
    "red-square": Task(
        "a small red square on a gray background",
        ("circle", "green"),
        "gray",
        "top",
        ("red", "square"),
    ),
}


def kept_scene(seed: int, task: Task) -> Image.Image:
    """The task's shape (radius 8..12) wholly inside the half opposite the masked one; for
    the default task a red circle in the left half on white (the scenes this file always
    drew)."""
    rng = random.Random(seed)
    radius = rng.uniform(8, 12)
    # Across the halves' axis, two pixels clear of the middle; along it, anywhere.
    across = rng.uniform(radius + 1, HALF - radius - 2)
    along = rng.uniform(radius + 1, SIZE - radius - 1)
    half = OPPOSITE[task.masked]
    if half in ("right", "bottom"):
        across = SIZE - across
    cx, cy = (across, along) if half in ("left", "right") else (along, across)
    shape, colour = task.kept
    return render(Scene(shape, colour, "small", task.background, cx, cy, radius, ""))


def red_circle(seed: int) -> Image.Image:
    """A red circle (radius 8..12) wholly inside the left half, on white."""
    return kept_scene(seed, TASKS["blue-square"])


def half_mask(half: str) -> Image.Image:
    """White (repaint) over `half`, black elsewhere."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    x0, y0, x1, y1 = HALVES[half]
    mask[y0:y1, x0:x1] = 255
    return Image.fromarray(mask, "L")


def right_half_mask() -> Image.Image:
    return half_mask("right")
