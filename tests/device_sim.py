"""A second device on a CPU-only machine, strict like a GPU: models go to the `meta` device, and a
TorchDispatchMode watches every aten op.

- An op whose tensor arguments live on two devices raises DeviceMixError, naming the op and the devices
  (the rule CUDA enforces: 0-dim CPU tensors, i.e. Python-like scalars, may join a device op).
- Reading a device tensor's value on the host (`.item()`, `bool()`, `float()`, `.tolist()`) is counted
  as a sync and answered with a placeholder (True / 1), so code that branches on it runs on.
- Copies between the device and the CPU are counted in each direction; a copy to the CPU returns zeros
  (meta tensors hold no values), so the rest of a node graph (frames to the host) runs on.

Values computed on `meta` mean nothing: these runs check where tensors go and how often the host waits,
not what the model outputs. The numbers of half precision are checked separately on the CPU.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

DEVICE = torch.device("meta")
aten = torch.ops.aten


class DeviceMixError(RuntimeError):
    pass


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)


def _placeholder(t: torch.Tensor):
    if t.dtype == torch.bool:
        return True
    return 1.0 if t.is_floating_point() else 1


class SimulatedDevice(TorchDispatchMode):
    """Counts: `syncs` (device values read on the host), `to_host` / `to_device` (copies), `ops`."""

    def __init__(self):
        super().__init__()
        self.syncs = self.to_host = self.to_device = self.ops = 0
        self.sync_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if func is aten._local_scalar_dense.default:
            t = args[0]
            if t.device.type == "cpu":
                with _disable_current_modes():
                    return func(*args, **kwargs)
            self.syncs += 1
            self.sync_ops.append(str(func))
            return _placeholder(t)
        if func in (aten._to_copy.default, aten.copy_.default, aten._copy_from.default,
                    aten._copy_from_and_resize.default):
            return self._copy(func, args, kwargs)
        devices = {t.device for t in _tensors((args, kwargs)) if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            raise DeviceMixError(f"{func}: tensors on {sorted(map(str, devices))} in one op")
        return func(*args, **kwargs)

    def _copy(self, func, args, kwargs):
        src = args[1] if func is aten.copy_.default else args[0]
        if func is aten._to_copy.default:
            dst_device = torch.device(kwargs.get("device") or src.device)
        else:
            dst_device = args[0].device if func is aten.copy_.default else args[1].device
        if src.device.type != "cpu" and dst_device.type == "cpu":
            self.to_host += 1
            if func is aten._to_copy.default:
                dtype = kwargs.get("dtype") or src.dtype
                return torch.zeros(src.shape, dtype=dtype)
            if func is aten.copy_.default:
                return args[0].zero_()
        elif src.device.type == "cpu" and dst_device.type != "cpu":
            self.to_device += 1
        return func(*args, **kwargs)


@contextmanager
def simulated_device():
    """with simulated_device() as sim: ... (models moved to DEVICE inside the block)."""
    mode = SimulatedDevice()
    with mode:
        yield mode
