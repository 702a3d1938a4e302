"""Read a shapes-world image back into attributes with simple, documented image analysis.

1. Background: the median colour of the 2-pixel border, named by the nearest of white,
   black and gray.
2. Foreground: pixels whose RGB distance from that border colour exceeds `FG_DISTANCE`;
   only the largest 4-connected blob counts (stray specks are ignored).
3. Colour: the median RGB of the blob, named by the nearest of the six palette colours
   (or of the colours of a `palette` argument, e.g. `FULL_PALETTE`).
4. Shape: the fill ratio of the blob in its bounding box -- square ~1, circle ~pi/4 = 0.785,
   triangle ~1/2 -- split at `SQUARE_MIN_FILL` and `CIRCLE_MIN_FILL`. With `diamond=True`
   (the shape adapter's `world.NEW_SHAPES`), a blob below `SQUARE_MIN_FILL` is a diamond when
   (a) its upper quarter (rows 15-35% of the box height) is narrow, on average under
   `DIAMOND_MAX_UPPER_WIDTH` of the blob's widest row (diamond ~1/2, circle ~0.87, square 1),
   and (b) its centre of mass sits near the middle of the box height, under
   `DIAMOND_MAX_CENTROID` from the top (diamond 1/2, upright triangle 2/3). Both survive the
   VAE rounding a small diamond's corners, which pushes its fill ratio into the circle range.
5. Size: the bounding box's longer side, small below `LARGE_MIN_SIDE` pixels.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shapes.world import BACKGROUNDS, COLOURS, NEW_COLOURS

FG_DISTANCE = 60.0
SQUARE_MIN_FILL = 0.89
CIRCLE_MIN_FILL = 0.64
LARGE_MIN_SIDE = 25
DIAMOND_MAX_UPPER_WIDTH = 0.70  # of the widest row: diamond ~1/2, circle ~0.87
DIAMOND_MAX_CENTROID = 0.57  # of the box height, from the top: diamond 1/2, triangle 2/3
MIN_BLOB = 12  # pixels; a smaller blob means "no shape"
# The base colours and the LoRA adapters' new ones (`world.NEW_COLOURS`), for `classify`.
FULL_PALETTE: dict[str, tuple[int, int, int]] = {**COLOURS, **NEW_COLOURS}


@dataclass(frozen=True)
class Reading:
    """What the analysis sees in one image; "none" where no shape was found."""

    shape: str
    colour: str
    size: str
    background: str
    fill: float


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dist = np.linalg.norm(np.array([palette[n] for n in names], float) - rgb, axis=1)
    return names[int(dist.argmin())]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of `mask` (a breadth-first flood fill)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        blob, todo = [], deque([(int(y0), int(x0))])
        while todo:
            y, x = todo.popleft()
            blob.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    todo.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def _diamond_like(mask: np.ndarray, ys: np.ndarray, height: int) -> bool:
    """Step 4's diamond test: a narrow upper quarter and a centre of mass near mid-height."""
    rows = mask[ys.min() : ys.max() + 1].sum(axis=1)
    top, bottom = int(0.15 * height), int(0.35 * height)
    upper = rows[top : max(bottom, top + 1)].mean() / rows.max()
    centroid = (ys.mean() + 0.5 - ys.min()) / height
    return bool(upper < DIAMOND_MAX_UPPER_WIDTH and centroid < DIAMOND_MAX_CENTROID)


def classify(
    image: Image.Image,
    palette: dict[str, tuple[int, int, int]] | None = None,
    diamond: bool = False,
) -> Reading:
    """The attributes of the one shape in `image` (any size; analysed at 64x64). Its colour
    is named from `palette` (default: the six base `COLOURS`; `FULL_PALETTE` adds the LoRA
    adapters' `NEW_COLOURS`); `diamond` lets the shape be read as a diamond (default: only
    the base `SHAPES`)."""
    px = np.asarray(image.convert("RGB").resize((64, 64)), dtype=float)
    border = np.concatenate(
        [
            px[:2].reshape(-1, 3),
            px[-2:].reshape(-1, 3),
            px[:, :2].reshape(-1, 3),
            px[:, -2:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    mask = _largest_blob(np.linalg.norm(px - bg_rgb, axis=2) > FG_DISTANCE)
    if mask.sum() < MIN_BLOB:
        return Reading("none", "none", "none", background, 0.0)
    colour = _nearest(np.median(px[mask], axis=0), COLOURS if palette is None else palette)
    ys, xs = np.nonzero(mask)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = float(mask.sum() / (height * width))
    if fill >= SQUARE_MIN_FILL:
        shape = "square"
    elif diamond and _diamond_like(mask, ys, height):
        shape = "diamond"
    elif fill >= CIRCLE_MIN_FILL:
        shape = "circle"
    else:
        shape = "triangle"
    size = "large" if max(height, width) >= LARGE_MIN_SIDE else "small"
    return Reading(shape, colour, size, background, fill)
