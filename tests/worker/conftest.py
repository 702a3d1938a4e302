from pathlib import Path

import pytest

from app.core.settings import Settings
from worker.pipeline import ResidentPipeline


@pytest.fixture(scope="session")
def resident(model_cache: Path) -> ResidentPipeline:
    """The random-weight tiny model, loaded once through the same path a real model takes."""
    return ResidentPipeline.load(Settings(model="tiny-sd", model_cache=model_cache, device="cpu"))
