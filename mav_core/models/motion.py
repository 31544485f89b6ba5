"""MotionModule: the temporal layers of a SpaceTimeUNet alone (what a motion file holds and what temporal
training updates), under the same parameter names as in the full model."""
from __future__ import annotations

import torch
from torch import nn

from .unet import SpaceTimeUNet, UNetConfig, is_temporal_key

MOTION_MODULE = "MotionModule"


class MotionModule(nn.Module):
    """The temporal parameters/buffers of SpaceTimeUNet(config), under the same names."""

    def __init__(self, config: UNetConfig, source: nn.Module | None = None):
        """source: a SpaceTimeUNet whose temporal tensors are registered here (shared, not copied);
        without it, uninitialised tensors of the right shapes."""
        super().__init__()
        self.config = config
        if source is None:
            with torch.device("meta"):
                source = SpaceTimeUNet(config)
            share = False
        else:
            share = True
        params = dict(source.named_parameters())
        for name, tensor in source.state_dict(keep_vars=True).items():
            if not is_temporal_key(name):
                continue
            *parents, leaf = name.split(".")
            holder = self
            for part in parents:
                if part not in holder._modules:
                    holder.add_module(part, nn.Module())
                holder = holder._modules[part]
            if name in params:
                holder.register_parameter(leaf, params[name] if share else
                                          nn.Parameter(torch.empty(tensor.shape, dtype=tensor.dtype)))
            else:
                holder.register_buffer(leaf, tensor if share else torch.empty(tensor.shape, dtype=tensor.dtype))

    @classmethod
    def of(cls, module: SpaceTimeUNet) -> "MotionModule":
        """A view of a model's temporal layers: its own Parameter objects, so training one trains the other."""
        return cls(module.config, source=module)
