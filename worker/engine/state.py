"""What the engine holds per job: its request, and once admitted, its denoising state."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from app.core.jobs import JobParams
from worker.traces import OFF, JobTrace


@dataclass
class EngineRequest:
    """A job handed to the engine: its validated parameters and, for image-to-image and
    inpainting, its decoded init image (and mask: white repaints). `deadline` is a
    `time.monotonic()` instant (None: no limit)."""

    job_id: str
    params: JobParams
    init_image: Image.Image | None = None
    deadline: float | None = None
    mask: Image.Image | None = None
    # The job's LoRA stack, ((weights, scale), ...), once its family has them loaded.
    adapters: tuple = ()
    trace: JobTrace = OFF  # its spans (worker/traces.py), recorded as the engine runs it


@dataclass
class JobState:
    """One admitted job: its own scheduler instance (timesteps, step index, multistep
    history), latents, generators (seed + i) and conditioning. Conditioning tensors are
    row-aligned with the denoiser's input: unconditional rows first when `cfg`."""

    request: EngineRequest
    scheduler: Any
    timesteps: torch.Tensor
    latents: torch.Tensor
    generators: list[torch.Generator]
    cfg: bool
    guidance: float
    cond: dict[str, torch.Tensor]
    group: tuple  # jobs of equal group share a denoiser forward (latent shape and kind)
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific, not batched
    warnings: list[str] = field(default_factory=list)
    index: int = 0
    last_run: int = -1  # the engine iteration that last stepped this job
    worker_s: float = 0.0  # its share of the engine's time so far (usage: see `charge`)
    # The scheduler's estimate of the clean latents after the last step, where its step gives
    # one (Euler, DDIM, LCM, ...): what a live preview shows.
    estimate: torch.Tensor | None = None
    # The family's own change to the latents after each step (inpainting's masked blending):
    # (latents, scheduler, timesteps, steps done) -> latents.
    after_step: Callable[..., torch.Tensor] | None = None

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def total_steps(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    @property
    def timestep(self) -> torch.Tensor:
        return self.timesteps[self.index]

    @property
    def rows(self) -> int:
        """Rows this job adds to a denoiser forward."""
        return self.latents.shape[0] * (2 if self.cfg else 1)

    def outcome(
        self, images: list[Image.Image] | None = None, error: tuple[str, str] | None = None
    ) -> "Outcome":
        """How the job leaves the engine now: its images or error, the steps it ran and the
        engine time it used."""
        return Outcome(self.job_id, images or [], error, self.warnings, self.index, self.worker_s)


@dataclass
class Outcome:
    """How a job left the engine: `images` when it finished, else an error code and message
    (`canceled` for a cancel seen at a step boundary)."""

    job_id: str
    images: list[Image.Image] = field(default_factory=list)
    error: tuple[str, str] | None = None
    warnings: list[str] = field(default_factory=list)
    steps: int = 0  # denoising steps it had finished
    worker_s: float = 0.0  # its share of the engine's time (what its tenant's usage counts)

    @property
    def ok(self) -> bool:
        return self.error is None


def charge(states: list[JobState], seconds: float) -> None:
    """Share `seconds` of engine time among the jobs that used it, by the rows each took:
    a batch's time is its members' time, so no second is billed twice or lost."""
    rows = sum(state.rows for state in states)
    for state in states:
        state.worker_s += seconds * state.rows / rows
