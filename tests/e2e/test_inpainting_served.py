"""Inpainting end to end with the shipped checkpoint `tiny-shapes-inpaint`: a red circle in
the left half, the right half masked, "a small blue square" asked for. Through the real API
and a worker: the unmasked half comes back unchanged, pixel for pixel, and the masked half
holds a blue square (the shapes classifier) for nearly every seed."""

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.stack import LocalStack
from shapes.classify import classify
from shapes.inpaint_tasks import PROMPT, red_circle, right_half_mask

SEEDS = range(8)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def inpaint_stack(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("inpaint")
    with LocalStack(workdir, model_cache, LDM_MODEL="tiny-shapes-inpaint") as stack:
        stack.start_api()
        stack.start_worker(queue="ldm:tiny-shapes-inpaint")
        yield stack


def test_the_masked_half_gets_a_blue_square_and_the_rest_is_kept(
    inpaint_stack: LocalStack,
) -> None:
    mask = b64(right_half_mask())
    scenes = {seed: red_circle(seed) for seed in SEEDS}
    jobs = {
        seed: inpaint_stack.submit(
            {"prompt": PROMPT, "init_image": b64(scene), "mask_image": mask, "seed": seed}
        )
        for seed, scene in scenes.items()
    }
    squares = 0
    for seed, job in jobs.items():
        done = inpaint_stack.wait(job["id"])
        assert done["status"] == "succeeded", done
        assert (done["request"]["mode"], done["request"]["strength"]) == ("inpainting", 1.0)
        image = Image.open(io.BytesIO(inpaint_stack.image(done).content)).convert("RGB")
        ours, scene = np.asarray(image, int), np.asarray(scenes[seed], int)
        assert np.array_equal(ours[:, :32], scene[:, :32]), seed
        reading = classify(image.crop((32, 0, 64, 64)))
        squares += (reading.colour, reading.shape) == ("blue", "square")
    assert squares >= 6, squares  # shapes.inpaint_evaluate: 46 of 50 seeds


def test_it_refuses_jobs_without_a_mask(inpaint_stack: LocalStack) -> None:
    response = inpaint_stack.http.post("/v1/jobs", json={"prompt": PROMPT})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.mask_image"
