"""Jobs from HTTP through the queue to a worker and back as stored images."""

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from scripts.stack import LocalStack
from tests.e2e.conftest import SLOW


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_text_to_image_goes_queued_running_succeeded(stack: LocalStack) -> None:
    # Exactly what the README's `curl -X POST localhost:8000/v1/jobs -d '{...}'` sends.
    response = stack.http.post(
        "/v1/jobs",
        content=b'{"prompt": "a red circle"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["started_at"] <= done["finished_at"]
    assert done["progress"] == {"step": 20, "total_steps": 20}
    (info,) = done["images"]
    assert info["url"] == f"/v1/jobs/{job['id']}/images/0"
    assert (info["width"], info["height"], info["seed"]) == (64, 64, job["request"]["seed"])
    response = stack.image(done)
    assert response.headers["content-type"] == "image/png"
    image = decode(response.content)
    assert image.format == "PNG" and image.size == (64, 64)


def test_image_to_image(stack: LocalStack) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 96), "white").save(buffer, format="JPEG")
    init = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    job = stack.submit(
        {"prompt": "a cat", "init_image": init, "strength": 0.5, "num_inference_steps": 10}
    )
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["request"]["mode"] == "image-to-image"
    assert done["progress"] == {"step": 5, "total_steps": 5}
    assert decode(stack.image(done).content).size == (128, 96)


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
def test_each_output_format(stack: LocalStack, fmt: str, pil_format: str) -> None:
    done = stack.wait(
        stack.submit({"prompt": "a", "output_format": fmt, "num_inference_steps": 4})["id"]
    )
    response = stack.image(done)
    assert response.headers["content-type"] == f"image/{fmt}"
    assert done["images"][0]["content_type"] == f"image/{fmt}"
    assert decode(response.content).format == pil_format


def test_same_seed_same_bytes(stack: LocalStack) -> None:
    body = {"prompt": "a blue square", "seed": 1234, "num_inference_steps": 6}
    first, second = (stack.wait(stack.submit(body)["id"]) for _ in range(2))
    assert first["request"]["seed"] == second["request"]["seed"] == 1234
    assert stack.image(first).content == stack.image(second).content
    other = stack.wait(stack.submit(body | {"seed": 1235})["id"])
    assert stack.image(other).content != stack.image(first).content


def test_image_i_of_a_batch_reproduces_alone_with_seed_plus_i(stack: LocalStack) -> None:
    batch = stack.wait(
        stack.submit({"prompt": "dots", "seed": 500, "num_images": 3, "num_inference_steps": 6})[
            "id"
        ]
    )
    assert [i["seed"] for i in batch["images"]] == [500, 501, 502]
    alone = stack.wait(
        stack.submit({"prompt": "dots", "seed": 502, "num_inference_steps": 6})["id"]
    )
    a = np.asarray(decode(stack.image(batch, 2).content), dtype=np.int16)
    b = np.asarray(decode(stack.image(alone).content), dtype=np.int16)
    assert np.abs(a - b).max() <= 2


def test_progress_advances_step_by_step(stack: LocalStack) -> None:
    job = stack.submit(SLOW)
    seen: list[int] = []
    while (current := stack.job(job["id"]))["status"] in ("queued", "running"):
        if current["progress"]:
            assert current["progress"]["total_steps"] == 60
            seen.append(current["progress"]["step"])
        time.sleep(0.02)  # poll like a client, leaving the CPU to the worker
    assert current["status"] == "succeeded"
    assert seen == sorted(seen) and len(set(seen)) >= 5
    assert current["progress"]["step"] == 60
