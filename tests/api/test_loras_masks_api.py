"""`loras` and `mask_image` at the API: adapters listed per model and pinned by sha256, masks
stored for the worker, and every bad request a 422 naming its field."""

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from redis import Redis

from app.api.main import create_app
from app.core.settings import Settings
from app.core.storage import init_image_key, mask_image_key
from tests.api.conftest import assert_problem


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def half_mask(size: tuple[int, int] = (64, 64), mode: str = "L") -> Image.Image:
    mask = Image.new(mode, size, 0)
    ImageDraw.Draw(mask).rectangle((size[0] // 2, 0, *size), fill=255 if mode == "L" else "white")
    return mask


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, str]:
    """An operator's folder with two tiny-sd adapters; name -> sha256."""
    hashes = {}
    for name in ("style", "detail"):
        data = f"adapter {name}".encode()
        path = tmp_path / "loras" / "tiny-sd" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    return hashes


@pytest.fixture
def lora_client(
    settings: Settings, redis: Redis, tmp_path: Path, adapters: dict[str, str]
) -> Iterator[TestClient]:
    changed = settings.model_copy(
        update={"lora_dir": str(tmp_path / "loras"), "models": ["tiny-sd", "tiny-flux"]}
    )
    with TestClient(create_app(changed)) as client:
        yield client


def submit(client: TestClient, **body: object):
    return client.post("/v1/jobs", json={"prompt": "a red circle"} | body)


def fields(response) -> dict[str, str]:
    return {e["field"]: e["message"] for e in assert_problem(response, 422)["errors"]}


def test_models_list_their_adapters_with_sha256(
    lora_client: TestClient, adapters: dict[str, str]
) -> None:
    models = {m["name"]: m for m in lora_client.get("/v1/models").json()["models"]}
    listed = {a["name"]: a["sha256"] for a in models["tiny-sd"]["loras"]}
    assert listed == adapters
    assert models["tiny-flux"]["loras"] == []


def test_a_job_pins_its_adapters_to_the_files_listed(
    lora_client: TestClient, adapters: dict[str, str]
) -> None:
    loras = [{"name": "style", "scale": 0.8}, {"name": "detail", "scale": -1.5}]
    response = submit(lora_client, loras=loras)
    assert response.status_code == 202, response.text
    pinned = response.json()["request"]["loras"]
    assert pinned == [
        {"name": "style", "scale": 0.8, "sha256": adapters["style"]},
        {"name": "detail", "scale": -1.5, "sha256": adapters["detail"]},
    ]
    job = lora_client.get(response.headers["location"]).json()
    assert job["request"]["loras"] == pinned
    default = submit(lora_client, loras=[{"name": "style"}]).json()["request"]["loras"]
    assert default[0]["scale"] == 1.0


def test_bad_adapter_requests_name_the_field(lora_client: TestClient) -> None:
    unknown = fields(submit(lora_client, loras=[{"name": "style"}, {"name": "nope"}]))
    assert "'nope' is not an adapter of tiny-sd" in unknown["body.loras.1.name"]
    assert "['detail', 'style']" in unknown["body.loras.1.name"]
    twice = fields(submit(lora_client, loras=[{"name": "style"}, {"name": "style"}]))
    assert "listed twice" in twice["body.loras.1.name"]
    too_many = fields(submit(lora_client, loras=[{"name": "style", "scale": 0.1}] * 5))
    assert "at most 4 adapters" in too_many["body.loras"]
    scale = assert_problem(submit(lora_client, loras=[{"name": "style", "scale": 2.5}]), 422)
    assert [e["field"] for e in scale["errors"]] == ["body.loras.0.scale"]
    url = assert_problem(submit(lora_client, loras=[{"name": "https://x.example/a"}]), 422)
    assert [e["field"] for e in url["errors"]] == ["body.loras.0.name"]
    flow = fields(submit(lora_client, model="tiny-flux", loras=[{"name": "style"}]))
    assert "takes no LoRA adapters" in flow["body.loras"]


def test_an_inpainting_job_stores_its_mask(client: TestClient) -> None:
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    response = submit(client, init_image=b64(image), mask_image=b64(half_mask()))
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["request"]["mode"], job["request"]["strength"]) == ("inpainting", 1.0)
    storage = client.app.state.services.storage
    stored = Image.open(io.BytesIO(storage.get(mask_image_key(job["id"]))))
    assert stored.mode == "L" and stored.getpixel((10, 10)) == 0
    assert stored.getpixel((50, 10)) == 255
    assert storage.get(init_image_key(job["id"]))
    explicit = submit(client, init_image=b64(image), mask_image=b64(half_mask()), strength=0.6)
    assert explicit.json()["request"]["strength"] == 0.6


def test_an_rgba_mask_reads_transparent_as_keep(client: TestClient) -> None:
    mask = half_mask(mode="RGBA")  # transparent black left half, opaque white right half
    image = b64(Image.new("RGB", (64, 64)))
    job = submit(client, init_image=image, mask_image=b64(mask)).json()
    stored = client.app.state.services.storage.get(mask_image_key(job["id"]))
    assert Image.open(io.BytesIO(stored)).getextrema() == (0, 255)


def test_bad_masks_name_mask_image(client: TestClient) -> None:
    image = b64(Image.new("RGB", (64, 64)))
    alone = fields(submit(client, mask_image=b64(half_mask())))
    assert "needs init_image" in alone["body.mask_image"]
    size = fields(submit(client, init_image=image, mask_image=b64(half_mask((96, 64)))))
    assert "the mask is 96x64 but init_image is 64x64" in size["body.mask_image"]
    black = fields(submit(client, init_image=image, mask_image=b64(Image.new("L", (64, 64)))))
    assert "nothing to repaint" in black["body.mask_image"]
    garbage = fields(submit(client, init_image=image, mask_image="bm90IGFuIGltYWdl"))
    assert "not a PNG, JPEG or WebP image" in garbage["body.mask_image"]


def test_flow_models_do_not_inpaint(lora_client: TestClient) -> None:
    image = b64(Image.new("RGB", (64, 64)))
    body = {"init_image": image, "mask_image": b64(half_mask()), "model": "tiny-flux"}
    assert "does not inpaint" in fields(submit(lora_client, **body))["body.mask_image"]


def test_an_inpainting_checkpoint_takes_only_inpainting_jobs(
    settings: Settings, redis: Redis
) -> None:
    served = settings.model_copy(update={"models": ["tiny-sd", "tiny-shapes-inpaint"]})
    with TestClient(create_app(served)) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["tiny-shapes-inpaint"]["modes"] == ["inpainting"]
        plain = fields(submit(client, model="tiny-shapes-inpaint"))
        assert "is an inpainting checkpoint" in plain["body.mask_image"]
        image = b64(Image.new("RGB", (64, 64)))
        job = submit(
            client, model="tiny-shapes-inpaint", init_image=image, mask_image=b64(half_mask())
        )
        assert job.status_code == 202 and job.json()["request"]["mode"] == "inpainting"
