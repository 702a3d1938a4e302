"""tiny-shapes' shipped LoRA adapters served end to end: listed with their sha256, applied per
request, and a burst mixing base-only, one-adapter and two-adapter jobs gives each job the
images it gets when it runs alone (the worker batches them into shared forwards)."""

import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.loras import Registry
from scripts.stack import LocalStack
from shapes.classify import classify

DIAMOND = {"name": "diamond", "scale": 1.0}
PINK = {"name": "pink", "scale": 1.0}
JOBS = {
    "base": {"prompt": "a large red diamond", "seed": 1},
    "diamond": {"prompt": "a large red diamond", "seed": 1, "loras": [DIAMOND]},
    "pink": {"prompt": "a large pink square", "seed": 4, "loras": [PINK]},
    "both": {"prompt": "a large blue diamond", "seed": 5, "loras": [DIAMOND, PINK]},
    "half": {"prompt": "a large green diamond", "seed": 6, "loras": [DIAMOND | {"scale": 0.5}]},
}


@pytest.fixture(scope="module")
def shapes_stack(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("loras")
    with LocalStack(workdir, model_cache, LDM_MODEL="tiny-shapes") as stack:
        stack.start_api()
        stack.start_worker(queue="ldm:tiny-shapes")
        yield stack


def picture(stack: LocalStack, job: dict) -> Image.Image:
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done
    return Image.open(io.BytesIO(stack.image(done).content)).convert("RGB")


def test_models_list_the_shipped_adapters(shapes_stack: LocalStack) -> None:
    (model,) = shapes_stack.http.get("/v1/models").json()["models"]
    listed = {a["name"]: a["sha256"] for a in model["loras"]}
    shipped = Registry(None).adapters("tiny-shapes")
    assert listed == {name: a.sha256 for name, a in shipped.items()}
    assert {"diamond", "cyan", "pink"} <= set(listed)


def test_a_mixed_burst_gives_each_job_its_images_alone(shapes_stack: LocalStack) -> None:
    together = {name: shapes_stack.submit(body) for name, body in JOBS.items()}
    images = {name: picture(shapes_stack, job) for name, job in together.items()}
    records = {name: shapes_stack.job(job["id"]) for name, job in together.items()}
    # They ran at the same time (one worker: its forwards held them together).
    starts = [datetime.fromisoformat(r["started_at"]) for r in records.values()]
    ends = [datetime.fromisoformat(r["finished_at"]) for r in records.values()]
    assert max(starts) < min(ends)
    for name, body in JOBS.items():
        alone = picture(shapes_stack, shapes_stack.submit(body))
        difference = np.abs(np.asarray(alone, int) - np.asarray(images[name], int)).max()
        assert difference <= 2, (name, difference)
    # The adapter is what draws the new shape; the base model, without it, does not.
    assert classify(images["diamond"], diamond=True).shape == "diamond"
    assert classify(images["base"], diamond=True).shape != "diamond"


def test_an_unknown_adapter_is_a_422_naming_it(shapes_stack: LocalStack) -> None:
    response = shapes_stack.http.post(
        "/v1/jobs", json={"prompt": "a red circle", "loras": [{"name": "teal"}]}
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "body.loras.0.name" and "diamond" in error["message"]
