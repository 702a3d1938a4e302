"""The shapes world: seeded scenes, captions from the grammar, and the classifier that reads
images back (it must be right on the generator's own images)."""

from __future__ import annotations

import numpy as np
import pytest

from shapes.classify import classify
from shapes.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_START,
    SHAPES,
    caption_for,
    dataset,
    held_out,
    render,
    scene,
)


def test_scenes_are_deterministic() -> None:
    a, captions_a = dataset(100, 16)
    b, captions_b = dataset(100, 16)
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and captions_a == captions_b
    assert not np.array_equal(a[0], a[1])


def test_captions_follow_the_grammar() -> None:
    assert caption_for("circle", "red", None, None) == "a red circle"
    assert caption_for("square", "blue", "large", "black") == (
        "a large blue square on a black background"
    )
    assert caption_for("triangle", "orange", None, None) == "an orange triangle"
    for seed in range(300):
        s = scene(seed)
        words = s.caption.split()
        assert s.colour in words and s.shape in words
        # Black and gray are always named; an unnamed background is white.
        assert (s.background in words) or (s.background == "white" and "background" not in words)


def test_held_out_scenes_are_beyond_training_seeds() -> None:
    assert held_out(3) == [scene(HELD_OUT_START + i) for i in range(3)]


def test_every_attribute_value_occurs() -> None:
    scenes = [scene(seed) for seed in range(500)]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {s.size for s in scenes} == {"small", "large"}


@pytest.mark.parametrize("start", [0, HELD_OUT_START])
def test_classifier_reads_generated_images_exactly(start: int) -> None:
    for seed in range(start, start + 300):
        s = scene(seed)
        r = classify(render(s))
        assert (r.shape, r.colour, r.size, r.background) == (
            s.shape,
            s.colour,
            s.size,
            s.background,
        ), (seed, s, r)


def test_classifier_sees_no_shape_in_a_blank_image() -> None:
    from PIL import Image

    r = classify(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert (r.shape, r.colour, r.background) == ("none", "none", "gray")
