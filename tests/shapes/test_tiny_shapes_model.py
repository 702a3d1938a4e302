"""The shipped tiny-shapes model follows prompts: colour and shape on held-out prompts and
seeds, guidance that matters, and image-to-image that recolours a shape but keeps it.

A small sample (64 held-out captions, about 10 s on one CPU thread) held to the issue's goals
(colour >= 90%, shape >= 80%), which the full evaluation beats (README, "The offline model"),
so that a broken conditioning path -- prompts ignored (colour right 1 time in 6), a wrong
tokenizer, guidance not applied -- fails.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from shapes.classify import classify  # noqa: E402
from shapes.evaluate import generate, load, recolour, score  # noqa: E402
from shapes.world import Scene, held_out  # noqa: E402
from worker.pipeline import SHAPES_WEIGHTS  # noqa: E402

MODEL = SHAPES_WEIGHTS
GUIDANCE = 5.0  # the model's default guidance scale
SAMPLE = 64
MIN_COLOUR = 0.90  # the full evaluation (240 captions): 99% colour, 96% shape
MIN_SHAPE = 0.80
# Share of images right on everything their caption names: 95% at guidance 5 against 69%
# without guidance over 240 captions; on this sample the gap must be at least this.
MIN_GUIDANCE_GAIN = 0.10


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipe():
    return load(MODEL)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return held_out(SAMPLE)


@pytest.fixture(scope="module")
def accuracy(pipe, scenes) -> dict[str, float]:
    images = generate(pipe, [s.caption for s in scenes], list(range(SAMPLE)), GUIDANCE)
    return score(scenes, images)


def test_is_a_stable_diffusion_folder_at_64px(pipe) -> None:
    assert isinstance(pipe, diffusers.StableDiffusionPipeline)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    weights = sum(f.stat().st_size for f in MODEL.rglob("*.safetensors"))
    assert weights < 6 * 2**20  # float16: a few MB in the repository


def test_follows_colour_and_shape(accuracy) -> None:
    assert accuracy["colour"] >= MIN_COLOUR, accuracy
    assert accuracy["shape"] >= MIN_SHAPE, accuracy


def test_guidance_matters(pipe, scenes, accuracy) -> None:
    # Same captions, same noise; only classifier-free guidance differs (1 turns it off).
    weak = score(scenes, generate(pipe, [s.caption for s in scenes], list(range(SAMPLE)), 1.0))
    assert accuracy["all"] >= weak["all"] + MIN_GUIDANCE_GAIN, (weak, accuracy)
    assert accuracy["colour"] > weak["colour"] and accuracy["shape"] > weak["shape"], (
        weak,
        accuracy,
    )


def test_image_to_image_recolours_and_keeps_the_shape(pipe) -> None:
    # A large red circle on white, "a blue circle" at strength 0.7, four noise seeds.
    _, out = recolour(pipe, count=4, strength=0.7, guidance=GUIDANCE)
    readings = [classify(img) for img in out]
    assert sum(r.colour == "blue" for r in readings) >= 3, readings
    assert sum(r.shape == "circle" for r in readings) >= 3, readings
