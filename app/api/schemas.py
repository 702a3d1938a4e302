"""HTTP-only shapes: problem details and the models listing."""

from typing import Literal

from pydantic import BaseModel, Field

from app.core.families import Family
from app.core.jobs import Mode


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem details body (`application/problem+json`)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


class ModelLimits(BaseModel):
    max_side: int
    max_pixels: int
    max_steps: int
    max_images: int


class LoraPublic(BaseModel):
    name: str
    sha256: str = Field(description="Of the adapter's file: what a job with it ran.")


class ModelPublic(BaseModel):
    name: str
    default: bool
    native_width: int
    native_height: int
    default_steps: int
    default_guidance_scale: float
    limits: ModelLimits
    queue_length: int
    live_workers: int
    family: Family = Field(
        description="unet (SD 1.x/2.x/XL/Turbo), flow (SD3, FLUX) or pipeline (run as one "
        "diffusers call)."
    )
    size_multiple: int = Field(description="width and height must be multiples of this.")
    schedulers: list[str] = Field(
        description="Names a request's `scheduler` may take; empty: the model's own only."
    )
    modes: list[Mode]
    loras: list[LoraPublic] = Field(
        description="Adapters a request's `loras` may name (the operator's registry)."
    )
    engine: Literal["step", "pipeline"] = Field(
        description="step: the worker's step loop; pipeline: the fallback, one diffusers call."
    )


class ModelList(BaseModel):
    models: list[ModelPublic]


class Health(BaseModel):
    status: str
