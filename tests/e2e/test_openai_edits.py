"""The official `openai` package's `images.edit`, unchanged, against a real service (Redis,
API, worker): OpenAI's mask (transparent = edit) becomes an inpainting job whose images keep
every other pixel of the input exactly."""

import base64
import io

import httpx
import openai
import pytest
from PIL import Image, ImageChops

from scripts.stack import LocalStack
from tests.api.test_edits_api import openai_mask, picture, png
from tests.e2e.test_openai_images import FAST, client_of

HOLE = (16, 8, 40, 48)  # where the mask is fully transparent: what is repainted


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def kept_equal(result: Image.Image, source: Image.Image, keep: Image.Image) -> bool:
    """Whether `result` equals `source` wherever `keep` is white."""
    difference = ImageChops.difference(result.convert("RGB"), source.convert("RGB"))
    return (
        ImageChops.multiply(difference.convert("L").point(lambda v: 255 * bool(v)), keep).getbbox()
        is None
    )


def test_an_edit_repaints_the_transparent_part_of_the_mask_and_keeps_the_rest(
    stack: LocalStack,
) -> None:
    source, mask = picture((64, 64)), openai_mask((64, 64), HOLE)
    raw = client_of(stack.http).images.with_raw_response.edit(
        image=("in.png", png(source), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a red circle",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body=FAST | {"seed": 1},
    )
    result = raw.parse()
    assert (result.size, result.output_format) == ("64x64", "png")
    images = [decoded(item.b64_json) for item in result.data]
    assert [(image.format, image.size) for image in images] == [("PNG", (64, 64))] * 2
    keep = mask.getchannel("A").point(lambda a: 255 * (a != 0))  # half transparent is kept
    hole = ImageChops.invert(keep)
    for image in images:
        assert kept_equal(image, source, keep)
        assert not kept_equal(image, source, hole)  # the hole itself was repainted
    job = stack.job(raw.headers["x-job-id"])
    assert (job["status"], job["request"]["mode"]) == ("succeeded", "inpainting")
    assert (job["request"]["strength"], job["request"]["num_images"]) == (1.0, 2)


def test_without_a_mask_the_images_transparency_is_edited(stack: LocalStack) -> None:
    source = picture((64, 64)).convert("RGBA")
    source.paste((0, 0, 0, 0), HOLE)
    result = client_of(stack.http).images.edit(
        image=("in.png", png(source), "image/png"), prompt="a blue square", extra_body=FAST
    )
    (item,) = result.data
    image = Image.open(io.BytesIO(httpx.get(item.url, timeout=10).content))
    assert image.size == (64, 64) and result.size == "64x64"  # the image's own size
    assert kept_equal(image, source, source.getchannel("A"))


def test_bad_edits_raise_the_packages_bad_request_error(stack: LocalStack) -> None:
    client = client_of(stack.http)
    image = ("in.png", png(picture((64, 64))), "image/png")
    with pytest.raises(openai.BadRequestError) as wrong_size:
        small = ("mask.png", png(openai_mask((32, 32), (0, 0, 8, 8))), "image/png")
        client.images.edit(image=image, mask=small, prompt="x", extra_body=FAST)
    assert wrong_size.value.param == "mask" and "mask" in wrong_size.value.message
    assert "32x32" in wrong_size.value.message
    with pytest.raises(openai.BadRequestError) as two:
        client.images.edit(image=[image, image], prompt="x", extra_body=FAST)
    assert two.value.param == "image" and "exactly one image" in two.value.message


def test_an_edit_streams_as_openai_streams_edits(stack: LocalStack) -> None:
    with client_of(stack.http).images.edit(
        image=("in.png", png(picture((64, 64))), "image/png"),
        mask=("mask.png", png(openai_mask((64, 64), HOLE)), "image/png"),
        prompt="a green star",
        stream=True,
        extra_body=FAST | {"seed": 5},
    ) as stream:
        job_id = stream.response.headers["x-job-id"]
        events = list(stream)
    assert [e.type for e in events] == ["image_edit.completed"]
    job = stack.job(job_id)
    assert base64.b64decode(events[0].b64_json) == stack.image(job).content
