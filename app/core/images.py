"""Decoding of client images (bounded, before anything trusts them) and encoding of results."""

import base64
import binascii
import io
import math
import re
import warnings

from PIL import Image

from app.core.errors import FieldError, InvalidRequest

ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
_DATA_URL = re.compile(r"^data:image/(?P<subtype>[a-z0-9.+-]+);base64,", re.IGNORECASE)


def decode_init_image(
    data: str, max_bytes: int, max_pixels: int, field: str = "body.init_image"
) -> Image.Image:
    """Decode a base64 (or data URL) PNG/JPEG/WebP into an RGB image, within the given bounds."""
    return _decode(data, max_bytes, max_pixels, field).convert("RGB")


def decode_mask(data: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """A base64 (or data URL) mask as a black-and-white "L" image: white (>= 128 after
    conversion to gray, as diffusers binarizes at 0.5) repaints, black keeps."""
    field = "body.mask_image"
    mask = _decode(data, max_bytes, max_pixels, field)
    if mask.mode in ("RGBA", "LA") or "transparency" in mask.info:
        mask = Image.alpha_composite(
            Image.new("RGBA", mask.size, "black"), mask.convert("RGBA")
        )  # transparent pixels read as black: kept
    mask = mask.convert("L").point(lambda v: 255 if v >= 128 else 0)
    if mask.getextrema()[1] == 0:
        raise InvalidRequest(
            [FieldError(field, "the mask has no white pixels: nothing to repaint")]
        )
    return mask


def _decode(data: str, max_bytes: int, max_pixels: int, field: str) -> Image.Image:
    def _reject(message: str) -> InvalidRequest:
        return InvalidRequest([FieldError(field, message)])

    match = _DATA_URL.match(data)
    if match:
        if match["subtype"].lower() not in ("png", "jpeg", "jpg", "webp"):
            raise _reject("data URL must be image/png, image/jpeg or image/webp")
        data = data[match.end() :]
    # Every 4 base64 characters carry 3 bytes: refuse before decoding a huge string.
    if len(data) * 3 // 4 > max_bytes:
        raise _reject(f"image is larger than {max_bytes} bytes; send a smaller file")
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _reject("not valid base64; send the file's bytes base64-encoded") from None
    too_big = f"image has more than {max_pixels} pixels; scale it down"
    with warnings.catch_warnings():
        # The pixel bound below is ours; Pillow's own warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            # open() reads only the header, so the bound is checked before any decoding.
            image = Image.open(io.BytesIO(raw), formats=list(ACCEPTED_FORMATS))
        except Image.DecompressionBombError:
            raise _reject(too_big) from None
        except Exception:
            raise _reject("not a PNG, JPEG or WebP image") from None
        if image.width * image.height > max_pixels:
            raise _reject(too_big)
        try:
            image.load()
        except Exception:
            raise _reject("image data is truncated or corrupt") from None
    return image


def fit_size(
    width: int, height: int, max_side: int, max_pixels: int, multiple: int = 8
) -> tuple[int, int]:
    """The largest size with the same aspect within the limits, in multiples of `multiple`
    (rounded down), at least 64."""
    scale = min(1.0, max_side / max(width, height), math.sqrt(max_pixels / (width * height)))
    smallest = -(-64 // multiple) * multiple
    return tuple(  # type: ignore[return-value]
        max(smallest, int(side * scale) // multiple * multiple) for side in (width, height)
    )


def encode_image(image: Image.Image, output_format: str) -> bytes:
    """Encode an image as png, jpeg or webp."""
    buffer = io.BytesIO()
    options = {"png": {"compress_level": 1}, "jpeg": {"quality": 95}, "webp": {"quality": 90}}
    image.save(buffer, format=output_format.upper(), **options[output_format])
    return buffer.getvalue()


def to_png(image: Image.Image) -> bytes:
    """Lossless encoding for images handed from API to worker."""
    return encode_image(image, "png")
