"""The LoRA adapters for tiny-shapes: the new-colour and new-shape scenes, the classifier's
palette and diamond reading, shrunken LoRA training runs whose files diffusers loads, and the
shipped adapters' accuracy.

The shipped-adapter tests are a small sample (16 held-out prompts per colour adapter, 32 for
the diamond one; about 6 / 10 s on one CPU thread) held to the issue's goals: the base model
follows the new word at most 20% of the time, the base model with the adapter at least 80%
(docs/tiny-shapes-lora.md has the full evaluation). The diamond adapter meets them; the colour
adapters miss them, and are held only to drawing their colour where the base model never does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shapes.classify import FULL_PALETTE, classify
from shapes.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_START,
    NEW_COLOURS,
    NEW_SHAPES,
    SHAPES,
    dataset,
    lora_dataset,
    lora_scene,
    render,
    scene,
    shape_dataset,
    shape_scene,
)

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ROOT / "worker/weights/loras/tiny-shapes"
SAMPLE = 16
# The diamond test's sample: the base model's unsure shapes for the unknown word read as
# diamonds ~8% of the time (docs/tiny-shapes-lora.md), 4 of the first 16 prompts; 32 keep
# the test's base-side check from hanging on two or three images.
SHAPE_SAMPLE = 32
MAX_BASE_FOLLOWS, MIN_ADAPTER_FOLLOWS = 0.20, 0.80


def test_new_colours_are_far_from_the_base_palette() -> None:
    assert not set(NEW_COLOURS) & set(COLOURS)
    for rgb in NEW_COLOURS.values():
        for other in [*COLOURS.values(), *BACKGROUNDS.values()]:
            assert np.linalg.norm(np.subtract(rgb, other)) > 90


def test_base_scenes_are_unchanged() -> None:
    # sha256 of dataset(0, 200) (pixels, then captions) before the new colours were added.
    images, captions = dataset(0, 200)
    digest = hashlib.sha256(images.tobytes())
    digest.update("\n".join(captions).encode())
    assert digest.hexdigest() == (
        "136072760f49b20b82b2f0b73af0deec4d42f7fb24c1cf8d36ed3865d01070dd"
    )


@pytest.mark.parametrize("colour", sorted(NEW_COLOURS))
@pytest.mark.parametrize("start", [0, HELD_OUT_START])
def test_new_colour_scenes_render_and_read_back_exactly(colour: str, start: int) -> None:
    images, captions = lora_dataset(start, 200, colour)
    for i, (img, caption) in enumerate(zip(images, captions, strict=True)):
        base, s = scene(start + i), lora_scene(start + i, colour)
        assert caption == s.caption and colour in caption.split()
        # The same caption but for the colour word (and the article agreeing with it).
        strip = ("a", "an")
        assert [w for w in caption.split() if w not in strip] == [
            colour if w == base.colour else w for w in base.caption.split() if w not in strip
        ]
        assert (s.shape, s.size, s.background, s.cx, s.cy, s.radius) == (
            base.shape,
            base.size,
            base.background,
            base.cx,
            base.cy,
            base.radius,
        )
        r = classify(Image.fromarray(img), FULL_PALETTE)
        assert (r.shape, r.colour, r.size, r.background) == (s.shape, colour, s.size, s.background)
        # The default palette knows no new colour: it names the nearest base colour.
        assert classify(render(s)).colour in COLOURS


def test_full_palette_reads_base_scenes_as_the_default_does() -> None:
    for seed in range(100):
        img = render(scene(seed))
        assert classify(img, FULL_PALETTE) == classify(img)


@pytest.mark.usefixtures("single_thread")
def test_a_shrunken_training_run_writes_an_adapter_diffusers_loads(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from safetensors import safe_open

    from shapes.evaluate import generate, load
    from shapes.lora_train import main

    out = tmp_path / "pink.safetensors"
    main(
        ["--colour", "pink", "--out", str(out), "--images", "4", "--prior-images", "4"]
        + ["--invert-steps", "2", "--steps", "3", "--batch", "4", "--lr", "0.05"]
    )
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["colour"] == "pink" and report["lora"]["rank"] == 8
    with safe_open(out, framework="pt") as weights:
        keys = list(weights.keys())
        assert {weights.get_slice(k).get_dtype() for k in keys} == {"F16"}
        meta = json.loads(weights.metadata()["lora_adapter_metadata"])
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder"}
    assert meta["unet.lora_alpha"] == meta["text_encoder.lora_alpha"] == 8

    pipe = load(ROOT / "worker/weights/tiny-shapes")
    prompt = ["a large pink circle on a black background"]
    before = np.asarray(generate(pipe, prompt, [0], 5.0, steps=4)[0], float)
    pipe.load_lora_weights(out, adapter_name="pink")
    assert pipe.get_list_adapters() == {"unet": ["pink"], "text_encoder": ["pink"]}
    after = np.asarray(generate(pipe, prompt, [0], 5.0, steps=4)[0], float)
    assert np.abs(after - before).mean() > 0.01


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("colour", sorted(NEW_COLOURS))
def test_the_shipped_colour_adapters_teach_their_word_in_part(colour: str) -> None:
    """They miss the 80% goal (23% cyan, 52% pink over 100 prompts: the VAE cannot encode the
    colours, docs/tiny-shapes-lora.md); what holds is that only the adapter draws them."""
    pytest.importorskip("diffusers")
    from shapes.evaluate import generate, load
    from shapes.lora_evaluate import new_word_scenes

    path = ADAPTERS / f"{colour}.safetensors"
    pipe = load(ROOT / "worker/weights/tiny-shapes")
    scenes = new_word_scenes(colour, SAMPLE)
    prompts, seeds = [s.caption for s in scenes], list(range(SAMPLE))

    def follows() -> float:
        images = generate(pipe, prompts, seeds, 5.0)
        return float(np.mean([classify(i, FULL_PALETTE).colour == colour for i in images]))

    base = follows()
    pipe.load_lora_weights(path, adapter_name=colour)
    pipe.set_adapters([colour], [1.0])
    adapted = follows()
    assert base == 0 and adapted >= 2 / SAMPLE, (base, adapted)


def test_new_shapes_are_not_base_shapes() -> None:
    assert NEW_SHAPES == ("diamond",) and not set(NEW_SHAPES) & set(SHAPES)


@pytest.mark.parametrize("start", [0, HELD_OUT_START])
def test_diamond_scenes_render_and_read_back_exactly(start: int) -> None:
    images, captions = shape_dataset(start, 300, "diamond")
    seen = set()
    for i, (img, caption) in enumerate(zip(images, captions, strict=True)):
        base, s = scene(start + i), shape_scene(start + i, "diamond")
        assert caption == s.caption
        assert caption.split() == [
            "diamond" if w == base.shape else w for w in base.caption.split()
        ]
        assert (s.colour, s.size, s.background, s.cx, s.cy, s.radius) == (
            base.colour,
            base.size,
            base.background,
            base.cx,
            base.cy,
            base.radius,
        )
        r = classify(Image.fromarray(img), diamond=True)
        assert (r.shape, r.colour, r.size, r.background) == (
            "diamond",
            s.colour,
            s.size,
            s.background,
        ), (start + i, s, r)
        assert 0.45 < r.fill < 0.64  # ~1/2, as an upright triangle's
        # Without the option the classifier knows only the base shapes.
        assert classify(Image.fromarray(img)).shape in SHAPES
        seen.add((s.colour, s.size, s.background))
    assert len(seen) == len(COLOURS) * 2 * len(BACKGROUNDS)  # every combination occurs


@pytest.mark.parametrize("start", [0, HELD_OUT_START])
def test_the_diamond_option_reads_base_scenes_as_the_default_does(start: int) -> None:
    for seed in range(start, start + 300):
        img = render(scene(seed))
        assert classify(img, diamond=True) == classify(img)
        assert classify(img, FULL_PALETTE, diamond=True) == classify(img, FULL_PALETTE)


@pytest.mark.usefixtures("single_thread")
def test_a_shrunken_shape_training_run_skips_the_inversion(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from safetensors import safe_open

    from shapes.lora_train import main

    out = tmp_path / "diamond.safetensors"
    main(
        ["--shape", "diamond", "--out", str(out), "--images", "4", "--prior-images", "4"]
        + ["--steps", "2", "--batch", "4"]
    )
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["shape"] == "diamond" and "colour" not in report
    assert "invert" not in report["seconds"] and "invert_mse" not in report["final_loss"]
    assert out.stat().st_mode & 0o777 == 0o644
    with safe_open(out, framework="pt") as weights:
        assert {k.split(".")[0] for k in weights.keys()} == {"unet", "text_encoder"}


@pytest.mark.usefixtures("single_thread")
def test_the_shipped_diamond_adapter_teaches_its_word() -> None:
    pytest.importorskip("diffusers")
    from shapes.evaluate import generate, load
    from shapes.lora_evaluate import new_word_scenes

    path = ADAPTERS / "diamond.safetensors"
    assert path.stat().st_mode & 0o777 == 0o644
    assert (ADAPTERS / "diamond.json").stat().st_mode & 0o777 == 0o644
    pipe = load(ROOT / "worker/weights/tiny-shapes")
    scenes = new_word_scenes("diamond", SHAPE_SAMPLE)
    prompts, seeds = [s.caption for s in scenes], list(range(SHAPE_SAMPLE))

    def follows() -> float:
        images = generate(pipe, prompts, seeds, 5.0)
        return float(np.mean([classify(i, diamond=True).shape == "diamond" for i in images]))

    base = follows()
    pipe.load_lora_weights(path, adapter_name="diamond")
    pipe.set_adapters(["diamond"], [1.0])
    adapted = follows()
    assert base <= MAX_BASE_FOLLOWS and adapted >= MIN_ADAPTER_FOLLOWS, (base, adapted)
