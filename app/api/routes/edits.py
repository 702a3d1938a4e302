"""OpenAI-compatible image edits (`POST /v1/images/edits`, multipart/form-data): OpenAI's
image and mask become an inpainting (or image-to-image) job, answered as generations are.

OpenAI's mask marks what to edit with fully transparent pixels (alpha 0); this service's
`mask_image` marks it white. So the job's mask is white exactly where the OpenAI mask (or,
without one, the image itself) has alpha 0, and black everywhere else, partly transparent
pixels included: they are kept, as OpenAI keeps them."""

import asyncio
import base64
import io
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import StreamingResponse
from PIL import Image

from app.api.openai_errors import OpenAIProblem, OpenAIRoute
from app.api.openai_schemas import ImageEdit, ImagesResponse
from app.api.routes.images import ROUTE, AnswerDep, to_job
from app.core.images import decode_init_image, to_png
from app.core.settings import Settings

PATH = "/v1/images/edits"
router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=OpenAIRoute)


def _bad(param: str, message: str) -> OpenAIProblem:
    return OpenAIProblem(400, f"{param}: {message}", param=param, code="invalid_value")


def _open(raw: bytes, param: str, settings: Settings) -> tuple[Image.Image, Image.Image | None]:
    """An upload as an RGB image and its alpha channel (None if it has none), checked against
    the init image bounds; `InvalidRequest` naming `param` if it is not a usable image."""
    data = base64.b64encode(raw).decode()
    limits = (settings.max_init_image_bytes, settings.max_init_image_pixels)
    rgb = decode_init_image(data, *limits, field=param)  # bounded and checked before decoding
    with Image.open(io.BytesIO(raw)) as image:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            return rgb, image.convert("RGBA").getchannel("A")
    return rgb, None


def _to_edit(alpha: Image.Image) -> Image.Image:
    """OpenAI's alpha as this service's mask: white (repaint) where fully transparent."""
    return alpha.point(lambda a: 255 if a == 0 else 0)


async def _uploads(body: ImageEdit, request: Request) -> tuple[bytes, bytes | None]:
    """The bytes of the one image and of the mask (None without one)."""
    form = await request.form()  # the form FastAPI parsed: counts repeated fields too
    count = len(form.getlist("image")) + len(form.getlist("image[]"))
    upload = body.image or (body.images[0] if body.images else None)
    if upload is None:
        message = "image: required; send the image to edit"
        raise OpenAIProblem(400, message, param="image", code="missing_required_parameter")
    if count > 1:
        message = f"{count} images sent; this service edits exactly one image per request"
        raise _bad("image", message)
    return await upload.read(), await body.mask.read() if body.mask is not None else None


def _inputs(raw: bytes, raw_mask: bytes | None, settings: Settings) -> dict[str, object]:
    """The job fields of an edit's image and mask (blocking: decodes and encodes them):
    `init_image`, and `mask_image` unless nothing is fully transparent."""
    image, alpha = _open(raw, "image", settings)
    fields: dict[str, object] = {"init_image": base64.b64encode(to_png(image)).decode()}
    if raw_mask is not None:
        mask, alpha = _open(raw_mask, "mask", settings)
        if mask.size != image.size:
            message = (
                f"{mask.width}x{mask.height} but the image is "
                f"{image.width}x{image.height}; send a mask of the image's size"
            )
            raise _bad("mask", message)
        if alpha is None:
            raise _bad(
                "mask", "has no alpha channel; its fully transparent pixels mark what to edit"
            )
        if alpha.getextrema()[0] != 0:
            raise _bad("mask", "has no fully transparent pixels (alpha 0): nothing to edit")
    if alpha is not None and alpha.getextrema()[0] == 0:
        fields["mask_image"] = base64.b64encode(to_png(_to_edit(alpha))).decode()
    return fields


@router.post("/edits", **ROUTE)
async def edit_images(
    body: Annotated[ImageEdit, Form(media_type="multipart/form-data")], answer: AnswerDep
) -> ImagesResponse | StreamingResponse:
    """Edit an image where its mask is transparent and answer once the images are ready, in
    OpenAI's Images API shape (multipart/form-data, as `images.edit` of the openai package).

    One `image` (PNG, JPEG or WebP). Its `mask` (PNG or WebP, the image's size) marks what
    to repaint with fully transparent pixels (alpha 0), as OpenAI's does; the rest comes back
    exactly as it was. Without a mask the image's own fully transparent pixels mark it; an
    image with neither is edited as a whole (image-to-image, `strength` 0.8 by default).
    `size` defaults to the image's own (scaled into the model's limits). Waits, streams
    (`image_edit.partial_image`, `image_edit.completed`), errs and names its job (`X-Job-Id`)
    as /v1/images/generations does; `param` names the field at fault (`image`, `mask`)."""
    raw, raw_mask = await _uploads(body, answer.request)
    inputs = await asyncio.to_thread(_inputs, raw, raw_mask, answer.services.settings)
    if body.strength is not None:
        inputs["strength"] = body.strength
    return await answer(body, to_job(body, **inputs), "image_edit")
