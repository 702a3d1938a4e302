"""Scheduling policy shared by API and worker: what each tenant may do, and what a job costs.

A tenant's `weight` is its share of a model when tenants compete (weighted fair share); its
caps bound how many of its jobs run at once and wait at once; `max_priority` is the highest
`priority` its requests may ask for."""

from pydantic import BaseModel, ConfigDict, Field

from app.core.jobs import PRIORITIES, JobParams, Priority


class TenantPolicy(BaseModel):
    """One tenant's share and limits (`LDM_TENANTS`)."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, gt=0, description="share of a model against other tenants")
    max_running: int | None = Field(None, ge=1, description="jobs running at once; none: any")
    max_queued: int | None = Field(None, ge=1, description="jobs waiting at once; 429 beyond")
    max_priority: Priority = "high"

    def allows(self, priority: Priority) -> bool:
        """Whether requests may ask for `priority`."""
        return PRIORITIES.index(priority) >= PRIORITIES.index(self.max_priority)


def job_cost(params: JobParams) -> float:
    """The work a job asks of a worker, in denoiser rows x 64x64-latent-pixel steps: what fair
    share counts. Classifier-free guidance doubles the rows (U-Net families; a close enough
    count for flow models too)."""
    rows = params.num_images * (2 if params.guidance_scale > 1 else 1)
    return rows * params.width * params.height / (512 * 512) * params.denoising_steps
