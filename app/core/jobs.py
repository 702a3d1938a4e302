"""The job: request schema, states and record, shared by API and worker (one definition)."""

import os
import time
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

MAX_SEED = 2**32 - 1
OutputFormat = Literal["png", "jpeg", "webp"]
Mode = Literal["text-to-image", "image-to-image", "inpainting"]
WebhookEvent = Literal["start", "progress", "completed"]
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")  # who runs first, in order
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class JobStatus(StrEnum):
    """Where a job is in its life; only `queued` and `running` can still change."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        """True once the job can no longer change."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
LoraName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class LoraRequest(BaseModel):
    """One adapter of a request's stack: a name from the model's `loras` and its scale."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: LoraName
    scale: float = Field(1.0, ge=-2, le=2, description="How strongly it applies; 0 turns it off.")


class LoraUse(BaseModel):
    """An adapter as a job runs it: pinned to the file the API accepted (its sha256)."""

    model_config = ConfigDict(frozen=True)

    name: str
    scale: float
    sha256: str


class JobCreate(BaseModel):
    """The body of `POST /v1/jobs`. Bounds that depend on the deployment are checked later."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Prompt = Field(description="What to draw; 1..2000 characters after trimming.")
    negative_prompt: str | None = Field(None, max_length=2000)
    init_image: str | None = Field(
        None,
        description="Base64 or data URL of a PNG, JPEG or WebP; present means image-to-image.",
    )
    mask_image: str | None = Field(
        None,
        description="Base64 or data URL of a PNG or WebP the size of init_image; white marks "
        "what to repaint (inpainting), black what to keep. Needs init_image.",
    )
    strength: float = Field(
        0.8,
        gt=0,
        le=1,
        description="How far to move away from init_image (only with it); 1.0 by default "
        "when inpainting.",
    )
    width: int | None = Field(None, ge=64, multiple_of=8, description="Defaults to native size.")
    height: int | None = Field(None, ge=64, multiple_of=8, description="Defaults to native size.")
    num_inference_steps: int | None = Field(None, ge=1, description="Defaults to the model's.")
    guidance_scale: float | None = Field(None, ge=0, le=30, description="Defaults to the model's.")
    num_images: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random when absent.")
    output_format: OutputFormat = "png"
    model: str | None = Field(None, description="A served model; the server default when absent.")
    scheduler: str | None = Field(
        None,
        description="A scheduler from the model's `schedulers` in /v1/models; "
        "the model's own when absent.",
    )
    priority: Priority = Field(
        "normal",
        description="Who runs first: high before normal before low (fair share between "
        "tenants within each); the highest a tenant may use is configuration.",
    )
    previews: bool = Field(
        False, description="Send `preview` events (small WebP images) on the job's event stream."
    )
    loras: list[LoraRequest] = Field(
        default_factory=list,
        description="Adapters to apply, from the model's `loras` in /v1/models; jobs with "
        "different stacks still share the GPU's forward passes.",
    )
    cache: bool = Field(
        True,
        description="Answer from the exact-result cache when an identical job (same model "
        "weights, resolved request and seed) already succeeded; false always runs it.",
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL that receives the job's events, signed as Standard Webhooks.",
    )
    webhook_events: list[WebhookEvent] = Field(
        default_factory=lambda: ["completed"],
        min_length=1,
        description="Events sent to webhook_url: completed (any end), start, progress.",
    )

    def webhook(self) -> "Webhook | None":
        """The webhook the client asked for, if any."""
        if self.webhook_url is None:
            return None
        return Webhook(url=self.webhook_url, events=sorted(set(self.webhook_events)))


class Webhook(BaseModel):
    """Where a job's events go, and which."""

    url: str
    events: list[WebhookEvent]


class JobParams(BaseModel):
    """A validated request with every default filled in and the seed resolved."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    negative_prompt: str | None
    mode: Mode
    strength: float | None
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    num_images: int
    seed: int
    output_format: OutputFormat
    model: str
    # None is the model's own scheduler; also what records stored before the field existed say.
    scheduler: str | None = None
    priority: Priority = "normal"
    previews: bool = False
    loras: tuple[LoraUse, ...] = ()

    @property
    def denoising_steps(self) -> int:
        """Steps actually run: image-to-image skips the first (1 - strength) of the schedule."""
        if self.strength is None:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)


class Progress(BaseModel):
    step: int
    total_steps: int


class ImageInfo(BaseModel):
    url: str
    width: int
    height: int
    seed: int
    content_type: str


class JobError(BaseModel):
    code: str = Field(description="out_of_memory, timeout, worker_lost, invalid_input, internal")
    message: str


class Job(BaseModel):
    """A job as clients see it."""

    id: str
    status: JobStatus
    model: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = None
    progress: Progress | None = None
    eta_seconds: float | None = Field(
        None,
        description="Estimated seconds until the images are ready (queued and running jobs), "
        "from the workers' measured step times and the work ahead.",
    )
    paused: bool = Field(
        False, description="Running but paused at a step boundary for a higher-priority job."
    )
    cancel_requested: bool = False
    worker: str | None = Field(None, description="The worker running (or that ran) the job.")
    attempt: int = Field(1, description="Which run this is: a job whose worker died runs again.")
    request: JobParams
    images: list[ImageInfo] = []
    error: JobError | None = None
    warnings: list[str] = Field(
        [],
        description="What the worker changed or found about the picture, e.g. a prompt cut "
        "at the text encoder's 77 tokens, VAE tiling, the safety checker's verdict.",
    )
    cached: bool = Field(
        False,
        description="Answered from the exact-result cache: the images of an identical job "
        "that already ran, served without a GPU.",
    )
    # A cached job serves the stored files of the job (and attempt) that made them.
    _images_from: tuple[str, int] | None = PrivateAttr(None)

    def images_owner(self) -> tuple[str, int]:
        """The job and attempt whose stored files are this job's images."""
        return self._images_from or (self.id, self.attempt)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
JOB_ID_PATTERN = r"^j_[0-9A-HJKMNP-TV-Z]{26}$"


def new_job_id() -> str:
    """A ULID-style id: sortable by creation time, 80 random bits, safe in URLs and keys."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "j_" + "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def rq_job_id(job_id: str, attempt: int) -> str:
    """The queue's id for one attempt of a job (each retry is a fresh RQ job)."""
    return job_id if attempt == 1 else f"{job_id}-{attempt}"


def attempt_of(rq_id: str) -> tuple[str, int]:
    """The job and attempt an RQ job's id names (`rq_job_id` backwards)."""
    job_id, _, attempt = rq_id.partition("-")
    return job_id, int(attempt or 1)


def image_url(job_id: str, index: int) -> str:
    """The stable API path of image `index` of a job."""
    return f"/v1/jobs/{job_id}/images/{index}"
