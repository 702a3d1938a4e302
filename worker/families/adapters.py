"""A family's LoRA adapters: which jobs may start (their adapters are loaded), each job's
stack, and the per-row plan of a forward. Files come from the registry the API pinned each
job to (name + sha256); loading runs on the store's thread, so a job whose adapter is still
loading waits without holding up any other."""

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from worker.engine.state import EngineRequest
from worker.families.base import InvalidInput
from worker.lora.batched import RowLoras
from worker.lora.store import AdapterStore
from worker.lora.weights import read_lora

Finder = Callable[[str, str], Path | None]  # (name, sha256) -> the file, if still there


class FamilyAdapters:
    """Adapters for one loaded pipeline: `rows` applies stacks, `ready` gates admission."""

    def __init__(self, pipe: Any, device: torch.device, find: Finder, budget_bytes: int) -> None:
        self.rows = RowLoras(pipe)
        # Adapter weights in the dtype the pipeline runs in (as diffusers' PEFT layers are).
        dtype = pipe.unet.dtype
        loader = partial(read_lora, pipe=pipe, device=device, dtype=dtype)
        self.store = AdapterStore(loader, budget_bytes)
        self.find = find

    def ready(self, request: EngineRequest) -> bool:
        """Whether the job's adapters are loaded; if so `request.adapters` holds its stack.
        Starts loading the missing ones; `InvalidInput` for one that cannot be had."""
        uses = request.params.loras
        if not uses or request.adapters:
            return True
        stack, loading = [], False
        for use in uses:
            if (error := self.store.error(use.name, use.sha256)) is not None:
                raise InvalidInput(f"adapter {use.name!r} could not be loaded: {error}")
            path = self.find(use.name, use.sha256)
            if path is None:
                raise InvalidInput(
                    f"adapter {use.name!r} (sha256 {use.sha256[:12]}...) is no longer in the "
                    "registry: it was removed or replaced after the job was accepted"
                )
            weights = self.store.request(use.name, path, use.sha256)
            loading |= weights is None
            stack.append((weights, use.scale))
        if loading:
            return False
        request.adapters = tuple(stack)
        return True
