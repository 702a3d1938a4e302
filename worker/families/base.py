"""What a model family gives the engine: the math of one architecture, through diffusers'
own components. The engine owns the loop (who runs, when, and the scheduler steps)."""

from contextlib import contextmanager
from typing import Any, Protocol

import torch
from PIL import Image

from app.core.jobs import JobParams
from worker.engine.state import EngineRequest, JobState


class InvalidInput(ValueError):
    """Parameters the model cannot run; the message says how to fix them."""


class Family(Protocol):
    """One architecture's math; the engine calls these with jobs of one `group` at a time."""

    name: str
    device: torch.device
    native_size: int
    size_multiple: int

    def check(self, params: JobParams, init_image: Image.Image | None) -> None:
        """Raise `InvalidInput` for what this model cannot run, before any tensor exists."""

    def ready(self, request: EngineRequest) -> bool:
        """Whether the job may start now (its LoRA adapters are loaded); False makes it wait
        without holding up other jobs. Raise `InvalidInput` for a job that never can."""

    def cost(self, params: JobParams) -> int:
        """Denoiser rows times latent pixels this job adds to every forward it is part of."""

    def prepare(self, requests: list[EngineRequest]) -> list[JobState]:
        """Admit jobs: encode their prompts together, set up schedulers and start latents."""

    def forward(self, states: list[JobState]) -> list[torch.Tensor]:
        """One denoiser forward over `states` (one group); each job's guided prediction."""

    def decode(self, states: list[JobState]) -> list[list[Image.Image]]:
        """Latents to images for finished jobs of one group, decoded together."""


class NoAdapters:
    """For families that take no LoRA adapters: every job is ready (`plain_only` refused
    adapters at `check`)."""

    def ready(self, request: EngineRequest) -> bool:
        return True


@contextmanager
def scheduler_of(pipe: Any, scheduler: Any) -> Any:
    """Let `pipe`'s own helpers (prepare_latents, get_timesteps, ...) see a job's scheduler."""
    before = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield pipe
    finally:
        pipe.scheduler = before


def plain_only(params: JobParams, family: str) -> None:
    """Refuse what only the U-Net family runs (the API refuses it first; this guards a job
    queued for a model whose family changed)."""
    if params.mode == "inpainting":
        raise InvalidInput(f"{family} models do not inpaint; leave mask_image out")
    if params.loras:
        raise InvalidInput(f"{family} models take no LoRA adapters; leave loras out")


def seeded(params: JobParams) -> list[torch.Generator]:
    """One CPU generator per image (seed + i): the same noise on every device, and a job's
    images do not depend on what it was batched with."""
    return [torch.Generator("cpu").manual_seed(params.seed + i) for i in range(params.num_images)]


def split_rows(output: torch.Tensor, states: list[JobState]) -> list[torch.Tensor]:
    """Each job's rows of a batched output, in the order they went in."""
    return list(output.split([state.rows for state in states]))


def guided(rows: torch.Tensor, state: JobState) -> torch.Tensor:
    """Classifier-free guidance on one job's rows (unconditional first), as diffusers does."""
    if not state.cfg:
        return rows
    uncond, text = rows.chunk(2)
    return uncond + state.guidance * (text - uncond)
