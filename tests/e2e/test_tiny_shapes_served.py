"""The trained tiny-shapes model served by name, end to end: a real API and a worker loading
the weights shipped with it (`LDM_MODEL=tiny-shapes`), images that follow the prompt."""

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from scripts.stack import LocalStack
from shapes.classify import classify

PROMPTS = {
    "a large red circle": ("red", "circle", "white"),
    "a large blue square on a black background": ("blue", "square", "black"),
    "a large yellow triangle on a gray background": ("yellow", "triangle", "gray"),
}


@pytest.fixture(scope="module")
def shapes_stack(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("shapes")
    with LocalStack(workdir, model_cache, LDM_MODEL="tiny-shapes") as stack:
        stack.start_api()
        stack.start_worker(queue="ldm:tiny-shapes")
        yield stack


def test_the_default_model_of_a_deployment_can_be_tiny_shapes(shapes_stack: LocalStack) -> None:
    (model,) = shapes_stack.http.get("/v1/models").json()["models"]
    assert (model["name"], model["native_width"], model["default_steps"]) == ("tiny-shapes", 64, 20)
    assert model["default_guidance_scale"] == 5.0


def test_its_images_show_what_the_prompt_says(shapes_stack: LocalStack) -> None:
    jobs = {prompt: shapes_stack.submit({"prompt": prompt, "seed": 1}) for prompt in PROMPTS}
    for prompt, expected in PROMPTS.items():
        done = shapes_stack.wait(jobs[prompt]["id"])
        assert done["status"] == "succeeded", done
        image = Image.open(io.BytesIO(shapes_stack.image(done).content))
        reading = classify(image)
        assert (reading.colour, reading.shape, reading.background) == expected, prompt
