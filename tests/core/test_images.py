import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from app.core.errors import InvalidRequest
from app.core.images import decode_init_image, encode_image

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 512 * 512}


def b64(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepts_png_jpeg_webp_plain_and_data_url(fmt: str) -> None:
    data = b64(Image.new("RGB", (80, 48), "red"), fmt)
    for text in (data, f"data:image/{fmt.lower()};base64,{data}"):
        image = decode_init_image(text, **LIMITS)
        assert image.size == (80, 48) and image.mode == "RGB"


def test_rgba_and_palette_images_become_rgb() -> None:
    image = decode_init_image(b64(Image.new("RGBA", (64, 64)), "PNG"), **LIMITS)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64 !!", "base64"),
        (base64.b64encode(b"plain text, not an image").decode(), "not a PNG"),
        (b64(Image.new("RGB", (8, 8)), "GIF"), "not a PNG"),
        ("data:image/gif;base64,R0lGODlh", "data URL"),
    ],
)
def test_rejects_what_is_not_an_accepted_image(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        decode_init_image(text, **LIMITS)
    assert caught.value.errors[0].field == "body.init_image"


def test_rejects_oversized_payload_before_decoding() -> None:
    with pytest.raises(InvalidRequest, match="larger than"):
        decode_init_image("A" * 2_000_000, **LIMITS)


def png_header_only(width: int, height: int) -> str:
    """A valid PNG that claims width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
    return base64.b64encode(png).decode()


@pytest.mark.parametrize("side", [1000, 60000])  # over our limit; also over Pillow's own
def test_decompression_bomb_is_refused_from_its_header(side: int) -> None:
    with pytest.raises(InvalidRequest, match="more than 262144 pixels"):
        decode_init_image(png_header_only(side, side), **LIMITS)


def test_truncated_image_with_a_lying_header_is_refused() -> None:
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buffer, format="PNG")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    with pytest.raises(InvalidRequest, match="truncated or corrupt"):
        decode_init_image(base64.b64encode(truncated).decode(), **LIMITS)


@pytest.mark.parametrize(
    ("fmt", "magic"), [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")]
)
def test_encodes_each_output_format(fmt: str, magic: bytes) -> None:
    data = encode_image(Image.new("RGB", (64, 64), "blue"), fmt)
    assert data.startswith(magic)
    assert Image.open(io.BytesIO(data)).size == (64, 64)
