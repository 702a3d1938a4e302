"""POST /v1/images/edits in-process, with a real Redis and no worker: what an OpenAI edit
becomes (the job, its init image and mask in storage) and how bad forms are refused."""

import io
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from app.api.main import create_app
from app.core.settings import Settings
from app.core.storage import init_image_key, mask_image_key
from tests.api.conftest import assert_problem
from tests.api.test_images_api import assert_openai_error, job_ids

EDITS = "/v1/images/edits"


def png(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def picture(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """An opaque RGB picture with distinct pixels."""
    image = Image.new("RGB", size)
    image.putdata(
        [(x * 4 % 256, y * 5 % 256, (x + y) % 256) for y in range(size[1]) for x in range(size[0])]
    )
    return image


def openai_mask(size: tuple[int, int], hole: tuple[int, int, int, int]) -> Image.Image:
    """OpenAI's kind of mask: opaque, fully transparent (alpha 0) in `hole`, half transparent
    in the column right of it (kept: only alpha 0 is edited)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    mask.paste((0, 0, 0, 128), (hole[2], hole[1], hole[2] + 1, hole[3]))
    return mask


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    # No worker: every edit gives up at once (504) and leaves its job (canceled) to inspect.
    quick = settings.model_copy(update={"sync_wait_timeout": 0.05})
    with TestClient(create_app(quick)) as client:
        yield client


def submitted(
    client: TestClient, response: httpx.Response
) -> tuple[dict, Image.Image, Image.Image | None]:
    """The job an edit submitted, its init image and its mask (None if it has none)."""
    assert_openai_error(response, 504, "server_error", "timeout")
    job_id = response.headers["x-job-id"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    storage = client.app.state.services.storage
    init = Image.open(io.BytesIO(storage.get(init_image_key(job_id))))
    mask = None
    if job["request"]["mode"] == "inpainting":
        mask = Image.open(io.BytesIO(storage.get(mask_image_key(job_id))))
    return job, init, mask


def test_a_mask_becomes_an_inpainting_job_white_where_it_is_fully_transparent(
    client: TestClient,
) -> None:
    image = picture()
    files = {"image": ("in.png", png(image), "image/png")}
    files["mask"] = ("mask.png", png(openai_mask(image.size, (8, 8, 24, 40))), "image/png")
    data = {"prompt": "a cat", "n": "2", "seed": "3", "num_inference_steps": "4"}
    job, init, mask = submitted(client, client.post(EDITS, files=files, data=data))
    request = job["request"]
    assert (request["mode"], request["strength"]) == ("inpainting", 1.0)
    assert (request["width"], request["height"], request["num_images"]) == (96, 64, 2)
    assert (request["seed"], request["num_inference_steps"]) == (3, 4)
    assert init.convert("RGB").tobytes() == image.tobytes()
    expected = Image.new("L", image.size, 0)
    expected.paste(255, (8, 8, 24, 40))
    assert mask.convert("L").tobytes() == expected.tobytes()


def test_without_a_mask_the_images_own_transparency_marks_the_edit(client: TestClient) -> None:
    image = picture().convert("RGBA")
    image.paste((0, 0, 0, 0), (0, 0, 16, 16))
    files = {"image": ("in.png", png(image), "image/png")}
    data = {"prompt": "a cat", "size": "96x64", "strength": "0.9", "output_format": "webp"}
    job, _, mask = submitted(client, client.post(EDITS, files=files, data=data))
    assert (job["request"]["mode"], job["request"]["strength"]) == ("inpainting", 0.9)
    assert job["request"]["output_format"] == "webp"
    assert mask.getbbox() == (0, 0, 16, 16)


def test_an_opaque_image_without_a_mask_is_edited_as_a_whole(client: TestClient) -> None:
    # Sent as the openai package sends a list of images (`image[]`), of one image here.
    files = {"image[]": ("in.jpg", png(picture((96, 64)), "JPEG"), "image/jpeg")}
    job, init, mask = submitted(client, client.post(EDITS, files=files, data={"prompt": "x"}))
    request = job["request"]
    assert (request["mode"], request["strength"], mask) == ("image-to-image", 0.8, None)
    assert (request["width"], request["height"]) == (96, 64) == init.size


def test_bad_forms_name_the_openai_parameter_and_queue_nothing(
    client: TestClient, redis: Redis
) -> None:
    image = png(picture())
    mask = png(openai_mask((96, 64), (0, 0, 8, 8)))
    cases = [
        ({"image": ("a.png", image)} | {"image[]": ("b.png", image)}, {}, "image", "invalid_value"),
        ({}, {}, "image", "missing_required_parameter"),
        ({"image": ("a.txt", b"not an image")}, {}, "image", "invalid_value"),
        ({"image": ("a.png", image), "mask": ("m.png", b"GIF89a")}, {}, "mask", "invalid_value"),
        (
            {
                "image": ("a.png", image),
                "mask": ("m.png", png(openai_mask((32, 32), (0, 0, 8, 8)))),
            },
            {},
            "mask",
            "invalid_value",
        ),
        (
            {"image": ("a.png", image), "mask": ("m.png", png(picture()))},
            {},
            "mask",
            "invalid_value",
        ),
        (
            {
                "image": ("a.png", image),
                "mask": ("m.png", png(Image.new("RGBA", (96, 64), "black"))),
            },
            {},
            "mask",
            "invalid_value",
        ),
        ({"image": ("a.png", image), "mask": ("m.png", mask)}, {"n": "two"}, "n", "invalid_value"),
        ({"image": ("a.png", image)}, {"size": "64x65"}, "size", "invalid_value"),
        ({"image": ("a.png", image)}, {"strength": "0"}, "strength", "invalid_value"),
        ({"image": ("a.png", image)}, {"style": "vivid"}, "style", "unknown_parameter"),
        ({"mask": ("m.png", mask)}, {"image": "text"}, "image", "invalid_value"),
    ]
    for files, data, param, code in cases:
        response = client.post(EDITS, files=files, data={"prompt": "x"} | data)
        error = assert_openai_error(response, 400, "invalid_request_error", code)
        assert error["param"] == param, (files.keys(), data, error)
        assert param in error["message"], error
    assert job_ids(redis) == set()
    # A form, or nothing: JSON is refused before routing (problem+json, as every 415).
    assert_problem(client.post(EDITS, json={"prompt": "x"}), 415)


def test_the_openapi_documents_the_form(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][EDITS]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["$ref"].endswith("/ImageEdit")
    n = spec["components"]["schemas"]["ImageEdit"]["properties"]["n"]
    assert {"type": "integer", "minimum": 1, "maximum": 4} in n["anyOf"]  # LDM_MAX_IMAGES
    assert "422" not in operation["responses"]
