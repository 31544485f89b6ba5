"""Where a stage's tensors live: the model's device and dtype, reached once before sampling starts.

Nodes hand the core tensors on the host's intermediate device (usually the CPU) and the core returns its
results there; every core entry point calls `to_model` on all of its tensor inputs (conditioning dicts,
control hints, init and known frames, masks) before its first network call, so no per-step copy and no op
mixing devices can happen inside the sampling loop.
"""
from __future__ import annotations

import dataclasses

import torch


def model_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a module's first parameter (where its inputs must go)."""
    p = next(module.parameters())
    return p.device, p.dtype


def to_model(value, device, dtype: torch.dtype | None = None):
    """`value` with every tensor inside it on `device`; floating tensors also in `dtype` when given.
    Dicts, lists, tuples and dataclass instances (e.g. control.Control) are rebuilt around the moved
    tensors; modules and other objects are returned as they are (models are placed by their loader / the
    host's model management, not here). A tensor already in place is returned itself (no copy)."""
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)
    if isinstance(value, dict):
        return {k: to_model(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        moved = [to_model(v, device, dtype) for v in value]
        return type(value)(moved) if isinstance(value, list) else tuple(moved)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: to_model(getattr(value, f.name), device, dtype) for f in dataclasses.fields(value)
                   if isinstance(getattr(value, f.name), torch.Tensor)}
        return dataclasses.replace(value, **changes) if changes else value
    return value
