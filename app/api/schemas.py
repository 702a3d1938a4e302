"""HTTP-only shapes: problem details and the models listing."""

from pydantic import BaseModel


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


class ModelList(BaseModel):
    models: list[ModelPublic]


class Health(BaseModel):
    status: str
