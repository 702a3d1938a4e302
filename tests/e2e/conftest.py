"""End-to-end: real redis-server, API and worker processes on free ports, driven over HTTP."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LocalStack]:
    ensure_tiny_model(model_cache)  # built once here, not raced by workers
    with LocalStack(tmp_path_factory.mktemp("stack"), model_cache) as stack:
        stack.start_api()
        stack.start_worker()
        yield stack


# Big and long enough on the tiny model to be caught while running (about 2 s on a CPU).
SLOW = {"prompt": "slow", "width": 256, "height": 256, "num_inference_steps": 60}
# Keeps the worker busy far longer than any test needs (tens of seconds); tests cancel it.
BUSY = {"prompt": "busy", "width": 512, "height": 512, "num_inference_steps": 100}
# BUSY alone fills a forward at its size (it costs four full tiny-sd batches): a job of that
# size waits in the queue behind it, while jobs of other sizes join it at the next step.
BEHIND_BUSY = {"width": 512, "height": 512}
