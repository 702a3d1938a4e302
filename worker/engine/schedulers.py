"""Per-request schedulers by name, each a fresh instance built from the model's own config."""

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

# The names are the API's (app.core.families); each maps to diffusers' class and the config
# changes that make it that sampler. Built from the model's config so that its betas,
# prediction type (epsilon or v) and timestep spacing carry over.
_SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
    "flow_euler": (FlowMatchEulerDiscreteScheduler, {}),
}


def make_scheduler(name: str | None, model_scheduler: Any) -> Any:
    """A new scheduler for one job: `name`'s class, or the model's own when `name` is None.
    Each job needs its own: schedulers keep per-run state (step index, sigmas, history)."""
    if name is None:
        return type(model_scheduler).from_config(model_scheduler.config)
    cls, changes = _SCHEDULERS[name]
    return cls.from_config(model_scheduler.config, **changes)


def scheduler_class(name: str) -> type:
    """diffusers' class behind a scheduler name (for tests and docs)."""
    return _SCHEDULERS[name][0]
