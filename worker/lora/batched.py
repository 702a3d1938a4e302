"""Per-row LoRA stacks over one shared forward on the base weights.

Every job in a batch owns a contiguous run of rows (e.g. its CFG pair) and a stack of
0..n adapters with scales. Inside `RowLoras.rows(plan)`, each module some adapter in the plan
targets adds, for every row r, sum over (w, s) in stack(r) of s * w.scale * up(down(x[r])):
the same delta PEFT adds for that job alone after `set_adapters(names, weights)`.

Rows are dim 0 of every targeted module's input. Checked in diffusers 0.42 / transformers 5:
attention to_q/to_k/to_v/to_out.0 see (B, seq, C) (processors reshape heads only after the
projections; 4-D inputs are flattened to (B, HW, C) first), proj_in/proj_out see (B, C, H, W)
as convs or (B, HW, C) as linears, feed-forward GEGLU proj / net.2 see (B, seq, C), time and
add embedding linears and resnets' time_emb_proj see (B, C) (timesteps are expanded to the
batch), resnet convs see (B, C, H, W), CLIP q/k/v/out_proj and fc1/fc2 see (B, seq, C). A
module whose input has another leading size raises, rather than mixing rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.lora.weights import LoraLayer, LoraWeights

Stack = tuple[tuple[LoraWeights, float], ...]
Plan = Sequence[tuple[int, Stack]]


@dataclass
class _Rows:
    """The rows one adapter applies to in this batch, and each row's stack scale."""

    ranges: list[tuple[int, int, float]]  # (start, stop, scale), in row order
    _by_device: dict[tuple[torch.device, torch.dtype], tuple[Any, Any]] = field(
        default_factory=dict
    )

    def on(self, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
        """(selector, coefficient): a slice when the rows are one run (a view, no copy), else
        an index tensor; a float when all rows share one scale, else a per-row tensor."""
        key = (device, dtype)
        if key not in self._by_device:
            if len(self.ranges) == 1:
                sel: Any = slice(self.ranges[0][0], self.ranges[0][1])
            else:
                sel = torch.cat([torch.arange(a, b) for a, b, _ in self.ranges]).to(device)
            scales = {s for _, _, s in self.ranges}
            if len(scales) == 1:
                coef: Any = scales.pop()
            else:
                coef = torch.cat([torch.full((b - a,), s) for a, b, s in self.ranges])
                coef = coef.to(device=device, dtype=dtype)
            self._by_device[key] = (sel, coef)
        return self._by_device[key]


def _group(plan: Plan) -> tuple[int, list[tuple[LoraWeights, _Rows]]]:
    """(total rows, [(adapter, its rows)]) in first-use order; an adapter listed twice in one
    stack counts once with the scales summed (the deltas are linear in the scale)."""
    by_adapter: dict[int, tuple[LoraWeights, dict[tuple[int, int], float]]] = {}
    start = 0
    for count, stack in plan:
        if count < 0:
            raise ValueError(f"a row count of {count}")
        for weights, scale in stack:
            runs = by_adapter.setdefault(id(weights), (weights, {}))[1]
            runs[(start, start + count)] = runs.get((start, start + count), 0.0) + float(scale)
        start += count
    groups = []
    for weights, runs in by_adapter.values():
        ranges = [(a, b, s) for (a, b), s in runs.items() if b > a and s != 0.0]
        if ranges:
            groups.append((weights, _Rows(_merge(ranges))))
    return start, groups


def _merge(ranges: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Join adjacent runs with the same scale, so more batches take the slice path."""
    merged = [ranges[0]]
    for a, b, s in ranges[1:]:
        pa, pb, ps = merged[-1]
        if pb == a and ps == s:
            merged[-1] = (pa, b, s)
        else:
            merged.append((a, b, s))
    return merged


def _delta(layer: LoraLayer, x: torch.Tensor, coef: Any) -> torch.Tensor:
    """coef * layer.scale * up(down(x)), scaling the rank-wide hidden (cheapest place)."""
    x = x.to(layer.down.dtype)  # as PEFT: LoRA math in the adapter's dtype
    if layer.is_conv:
        h = F.conv2d(x, layer.down, None, layer.stride, layer.padding)
    else:
        h = F.linear(x, layer.down)
    if isinstance(coef, float):
        h = h * (coef * layer.scale)
    else:
        h = h * (coef * layer.scale).view(-1, *(1,) * (h.ndim - 1))
    return F.conv2d(h, layer.up) if layer.is_conv else F.linear(h, layer.up)


class RowLoras:
    """Applies per-row LoRA stacks to a pipeline's components, one context at a time.

    Hooks exist only inside `rows()`, and only on modules an adapter of that plan targets:
    a batch with no adapter registers nothing and runs the untouched base model."""

    def __init__(self, components: Mapping[str, nn.Module] | Any) -> None:
        """`components`: a diffusers pipeline, or a mapping of component name -> module."""
        if not isinstance(components, Mapping):
            components = {
                name: module
                for name, module in components.components.items()
                if isinstance(module, nn.Module)
            }
        self._components = dict(components)
        self._modules: dict[tuple[str, str], nn.Module] = {}
        self._busy: set[int] = set()  # ids of modules hooked by an open context

    def module(self, component: str, path: str) -> nn.Module:
        key = (component, path)
        if key not in self._modules:
            if component not in self._components:
                raise KeyError(f"no component {component!r} here")
            self._modules[key] = self._components[component].get_submodule(path)
        return self._modules[key]

    @contextmanager
    def rows(self, plan: Plan, components: Collection[str] | None = None) -> Iterator[None]:
        """Within the block, forwards of these components give each job's rows its stack.

        `plan`: (row count, stack) per job, in batch order; a stack is ((weights, scale), ...)
        and () is the base model. `components` limits the hooks (e.g. {"unet"} around a
        denoiser forward); by default every component an adapter of the plan touches."""
        total, groups = _group(plan)
        per_module: dict[tuple[str, str], list[tuple[LoraLayer, _Rows]]] = {}
        for weights, rows in groups:
            for key, layer in weights.layers.items():
                if components is None or key[0] in components:
                    per_module.setdefault(key, []).append((layer, rows))
        if not per_module:
            yield
            return
        modules = {key: self.module(*key) for key in per_module}
        ids = {id(m) for m in modules.values()}
        if ids & self._busy:
            raise RuntimeError("rows() contexts overlap on the same modules")
        self._busy |= ids
        handles = []
        try:
            for key, entries in per_module.items():
                hook = _hook(total, entries, key)
                handles.append(modules[key].register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._busy -= ids


def _hook(total: int, entries: list[tuple[LoraLayer, _Rows]], key: tuple[str, str]) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.shape[0] != total:
            raise RuntimeError(
                f"{key[0]}.{key[1]}: input has {x.shape[0]} rows, the LoRA plan {total}"
            )
        for layer, rows in entries:
            sel, coef = rows.on(x.device, layer.down.dtype)
            if isinstance(sel, slice):
                output[sel] += _delta(layer, x[sel], coef).to(output.dtype)
            else:
                delta = _delta(layer, x.index_select(0, sel), coef).to(output.dtype)
                output.index_add_(0, sel, delta)
        return output

    return hook
