from pathlib import Path

import pytest

from app.core.jobs import JobParams
from app.core.settings import Settings
from worker.pipeline import ResidentPipeline


@pytest.fixture(scope="session")
def resident(model_cache: Path) -> ResidentPipeline:
    """The tiny model, loaded once through the same path a real model takes."""
    return ResidentPipeline.load(Settings(model_cache=model_cache, device="cpu"))


def make_params(**changes: object) -> JobParams:
    base = dict(
        prompt="a red circle",
        negative_prompt=None,
        mode="text-to-image",
        strength=None,
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        num_images=1,
        seed=42,
        output_format="png",
        model="tiny-sd",
    )
    return JobParams(**(base | changes))
