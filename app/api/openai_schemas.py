"""Request and response shapes of the OpenAI-compatible Images API (`/v1/images/generations`,
`/v1/images/edits`)."""

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from app.core.jobs import MAX_SEED, OutputFormat, Prompt


class ImageOptions(BaseModel):
    """What OpenAI's `images.generate` and `images.edit` share, and this service's extensions
    (`seed`, `negative_prompt`, `num_inference_steps`, `guidance_scale`, `scheduler`; send them
    with the openai package's `extra_body`). Fields that change nothing about the picture
    (`quality`, `user`, ...) are accepted and ignored."""

    prompt: Prompt = Field(description="What to draw; 1..2000 characters after trimming.")
    model: str | None = Field(None, description="A served model; the server default when absent.")
    n: int | None = Field(None, ge=1, description="How many images; 1..max_images, default 1.")
    size: str | None = Field(
        None,
        description='"WIDTHxHEIGHT" (e.g. "512x512"; multiples of the model\'s '
        '`size_multiple`, within the limits of /v1/models), or "auto" (the default).',
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        None, description='"url" (default): links to the images; "b64_json": the bytes inline.'
    )
    output_format: OutputFormat | None = Field(None, description="png (default), jpeg or webp.")
    # Accepted for compatibility; they do not change what this service does.
    quality: str | None = Field(None, description="Ignored.")
    user: str | None = Field(None, description="Ignored.")
    safety_identifier: str | None = Field(None, description="Ignored.")
    background: Literal["auto", "opaque"] | None = Field(
        None, description="Ignored; transparent backgrounds are not supported."
    )
    output_compression: int | None = Field(None, ge=0, le=100, description="Ignored.")
    complexity: str | None = Field(None, description="Ignored.")
    stream: bool | None = Field(
        None,
        description="true: answer with Server-Sent Events as OpenAI streams images "
        "(partial images, then one completed event per image).",
    )
    partial_images: int | None = Field(
        None,
        ge=0,
        le=3,
        description="With `stream`: up to this many partial images (live previews, spread over "
        "the run; fewer when the job is quick), default 0.",
    )
    # Extensions: the knobs of POST /v1/jobs that OpenAI's shape lacks.
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random when absent.")
    negative_prompt: str | None = Field(None, max_length=2000)
    num_inference_steps: int | None = Field(None, ge=1, description="Defaults to the model's.")
    guidance_scale: float | None = Field(None, ge=0, le=30, description="Defaults to the model's.")
    scheduler: str | None = Field(
        None, description="One of the model's `schedulers` in /v1/models; default the model's own."
    )


class ImageGenerate(ImageOptions):
    """OpenAI's `images.generate` body (JSON). `size` "auto" is the model's native size.
    Anything unknown is refused, as OpenAI does."""

    model_config = ConfigDict(extra="forbid", strict=True)

    style: str | None = Field(None, description="Ignored.")
    moderation: Literal["low", "auto"] | None = Field(None, description="Ignored.")


class ImageEdit(ImageOptions):
    """OpenAI's `images.edit` form (multipart/form-data). `size` "auto" keeps the image's
    size (scaled into the model's limits). Anything unknown is refused, as OpenAI does."""

    # Form fields arrive as text: "2" is an int here, "true" a bool.
    model_config = ConfigDict(extra="forbid")

    image: UploadFile | None = Field(
        None,
        description="The image to edit: PNG, JPEG or WebP. Exactly one (as `image` or a "
        "one-item `image[]`). Without `mask`, its fully transparent pixels are what to edit.",
    )
    images: list[UploadFile] = Field(
        default_factory=list,
        alias="image[]",
        description="How the openai package sends a list of images; one at the most.",
    )
    mask: UploadFile | None = Field(
        None,
        description="A PNG or WebP with an alpha channel, the image's size: its fully "
        "transparent pixels (alpha 0) are what to edit, the rest is kept as it is.",
    )
    input_fidelity: Literal["high", "low"] | None = Field(None, description="Ignored.")
    # Extension: how far to move away from the image where there is nothing transparent.
    strength: float | None = Field(
        None,
        gt=0,
        le=1,
        description="How far to move away from the image: default 1.0 where a mask (or the "
        "image's transparency) marks what to edit, 0.8 for an image without either.",
    )


class ImageData(BaseModel):
    """One generated image: a `url` or its `b64_json` bytes, as `response_format` asked."""

    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    """OpenAI's `ImagesResponse`."""

    created: int = Field(description="When the images were made, Unix seconds.")
    data: list[ImageData]
    output_format: OutputFormat
    size: str = Field(description='"WIDTHxHEIGHT" of every image.')


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, server_error or requests")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description="A machine-readable reason, e.g. invalid_value.")


class OpenAIError(BaseModel):
    """The error body of the OpenAI-compatible routes (instead of problem+json)."""

    error: OpenAIErrorDetail
