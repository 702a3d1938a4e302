"""Model families: the math of each architecture, behind one interface (`base.Family`)."""

from typing import Any

import torch

from app.core.families import family_of
from worker.families.adapters import FamilyAdapters, Finder
from worker.families.base import Family


def load_family(
    pipe: Any,
    device: torch.device,
    safety_checker: bool = True,
    prompt_cache: int = 256,
    loras: tuple[Finder, int] | None = None,
) -> Family:
    """The family that runs `pipe` step by step; the fallback runs its own call. `loras`:
    where a job's adapter files are and the bytes of them to keep loaded (U-Nets)."""
    kind = family_of(type(pipe).__name__)
    if kind == "unet":
        from worker.families.unet import UNetFamily

        adapters = FamilyAdapters(pipe, device, *loras) if loras else None
        return UNetFamily(
            pipe,
            device,
            safety_checker=safety_checker,
            prompt_cache=prompt_cache,
            adapters=adapters,
        )
    if kind == "flow":
        from worker.families.flow import FlowFamily

        return FlowFamily(pipe, device)
    from worker.families.pipe import PipelineFamily

    return PipelineFamily(pipe, device)
