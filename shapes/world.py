"""The shapes world: seeded scenes of one coloured shape on a plain background, with captions.

A scene is drawn from its seed alone (`scene(seed)`), so a data set is a range of seeds.
Training uses seeds below `HELD_OUT_START`; evaluation draws prompts and noise from seeds at
or above it, which training never sees.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
HELD_OUT_START = 1_000_000
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 20),
    "orange": (250, 130, 10),
    "purple": (140, 40, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
# Half the side of the shape's bounding box, in pixels.
SIZES: dict[str, tuple[int, int]] = {"small": (7, 10), "large": (15, 20)}
_SUPERSAMPLE = 4  # drawn at 4x and downsampled, for anti-aliased edges


@dataclass(frozen=True)
class Scene:
    """One image's attributes and caption."""

    shape: str
    colour: str
    size: str
    background: str
    cx: float
    cy: float
    radius: float
    caption: str


def caption_for(shape: str, colour: str, size: str | None, background: str | None) -> str:
    """The grammar: `[a|an ][small|large ]<colour> <shape>[ on a <background> background]`."""
    first = size or colour
    words = ["an" if first[0] in "aeiou" else "a"] + ([size] if size else []) + [colour, shape]
    if background:
        words += ["on", "a", background, "background"]
    return " ".join(words)


def scene(seed: int) -> Scene:
    """The scene of `seed`: uniform shape, colour and size; white background half the time."""
    rng = random.Random(seed)
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    size = rng.choice(list(SIZES))
    r = rng.random()
    background = "white" if r < 0.5 else "black" if r < 0.75 else "gray"
    radius = rng.uniform(*SIZES[size])
    margin = radius + 1
    cx, cy = rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin)
    # Size is named 60% of the time; white, the default, is named a third of the time;
    # black and gray always; the leading "a" is sometimes dropped.
    named_size = size if rng.random() < 0.6 else None
    named_bg = background if background != "white" or rng.random() < 1 / 3 else None
    text = caption_for(shape, colour, named_size, named_bg)
    if rng.random() < 0.2:
        text = text.split(" ", 1)[1]
    return Scene(shape, colour, size, background, cx, cy, radius, text)


def render(s: Scene) -> Image.Image:
    """Draw the scene as a 64x64 RGB image."""
    k = _SUPERSAMPLE
    img = Image.new("RGB", (SIZE * k, SIZE * k), BACKGROUNDS[s.background])
    draw = ImageDraw.Draw(img)
    x0, y0 = (s.cx - s.radius) * k, (s.cy - s.radius) * k
    x1, y1 = (s.cx + s.radius) * k, (s.cy + s.radius) * k
    fill = COLOURS.get(s.colour) or NEW_COLOURS[s.colour]
    if s.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif s.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif s.shape == "diamond":  # a square turned 45 degrees, corners on the box: fill 1/2
        cx, cy = s.cx * k, s.cy * k
        draw.polygon(((cx, y0), (x1, cy), (cx, y1), (x0, cy)), fill=fill)
    else:  # upright isosceles triangle filling its bounding box: fill ratio 1/2
        draw.polygon(((s.cx * k, y0), (x1, y1), (x0, y1)), fill=fill)
    return img.resize((SIZE, SIZE), Image.Resampling.BOX)


def dataset(start: int, count: int) -> tuple[np.ndarray, list[str]]:
    """Scenes `start .. start+count-1` as uint8 images (N, 64, 64, 3) and their captions."""
    scenes = [scene(seed) for seed in range(start, start + count)]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    return images, [s.caption for s in scenes]


def held_out(count: int, offset: int = 0) -> list[Scene]:
    """`count` evaluation scenes (prompts and attributes), from seeds training never uses."""
    return [scene(HELD_OUT_START + offset + i) for i in range(count)]


# Colours the base model never saw, for the LoRA adapters (`shapes/lora_train.py`). A separate
# palette: adding them to `COLOURS` would change every seeded scene. Each is more than 90 RGB
# units from every base colour and background.
NEW_COLOURS: dict[str, tuple[int, int, int]] = {
    "cyan": (0, 190, 200),
    "pink": (255, 110, 190),
}


def lora_scene(seed: int, colour: str) -> Scene:
    """`scene(seed)` with its shape drawn in `colour` (a `NEW_COLOURS` name) and the caption
    naming it; same shape, size, position and background."""
    return recolour(scene(seed), colour)


def recolour(s: Scene, colour: str) -> Scene:
    """`s` drawn in `colour`, its caption naming it (the article agreeing with its next word)."""
    words = s.caption.split()
    words[words.index(s.colour)] = colour
    if words[0] in ("a", "an"):  # the article agrees with the word after it
        words[0] = "an" if words[1][0] in "aeiou" else "a"
    return replace(s, colour=colour, caption=" ".join(words))


def lora_dataset(start: int, count: int, colour: str) -> tuple[np.ndarray, list[str]]:
    """`dataset` for `lora_scene(seed, colour)`: uint8 images (N, 64, 64, 3) and captions."""
    scenes = [lora_scene(seed, colour) for seed in range(start, start + count)]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    return images, [s.caption for s in scenes]


# Shapes the base model never saw, for the shape adapters (`shapes/lora_train.py --shape`).
# Kept out of `SHAPES` for the same reason as `NEW_COLOURS`.
NEW_SHAPES = ("diamond",)


def shape_scene(seed: int, shape: str) -> Scene:
    """`scene(seed)` with its shape replaced by `shape` (a `NEW_SHAPES` name) and the caption
    naming it; same colour, size, position and background (the article is unchanged: it agrees
    with the size or colour word before the shape)."""
    s = scene(seed)
    words = s.caption.split()
    words[words.index(s.shape)] = shape
    return replace(s, shape=shape, caption=" ".join(words))


def shape_dataset(start: int, count: int, shape: str) -> tuple[np.ndarray, list[str]]:
    """`dataset` for `shape_scene(seed, shape)`: uint8 images (N, 64, 64, 3) and captions."""
    scenes = [shape_scene(seed, shape) for seed in range(start, start + count)]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    return images, [s.caption for s in scenes]
