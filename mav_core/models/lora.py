"""LoRA on a module's weights: low-rank deltas merged into a copy at a strength, the input module untouched.

A delta for the weight W [out, in, *kernel] of one Linear / Conv layer is `up @ down` scaled by alpha / rank
(scale 1 when the file gives no alpha): up [out, rank, (1, 1)], down [rank, in, *kernel] (a Linear's LoRA on
a 1x1-conv weight or the reverse reshapes, as the element counts agree). `merged` builds a new module of
the same class whose touched weights are `W + strength * delta` (computed in float32, stored in W's dtype)
and whose every other parameter and buffer is the input's own tensor (shared, not copied): applying a LoRA
costs the memory of the weights it touches, and removing it is dropping the copy. Reading the file layouts
that LoRAs are published in: mav_core.io.lora.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoraDelta:
    """One layer's low-rank delta. `key`: the weight's key in the module's state dict ('...to_q.weight');
    `alpha`: the file's alpha for this layer, None when it has none (then the scale is 1)."""
    key: str
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    def problem(self, weight: torch.Tensor) -> str | None:
        """Why this delta does not fit `weight` (None when it does)."""
        if self.up.dim() < 2 or self.down.dim() < 2:
            return f"up {tuple(self.up.shape)} and down {tuple(self.down.shape)} must have at least 2 dimensions"
        if self.up.shape[1:].numel() != self.rank:
            return f"up {tuple(self.up.shape)} does not match the rank {self.rank} of down {tuple(self.down.shape)}"
        if weight.dim() < 2 or self.up.shape[0] != weight.shape[0] or self.down[0].numel() != weight[0].numel():
            return (f"up {tuple(self.up.shape)} @ down {tuple(self.down.shape)} does not fit the weight "
                    f"{tuple(weight.shape)}")
        return None

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """scale * up @ down in float32 on `weight`'s device, shaped like `weight`."""
        up = self.up.reshape(self.up.shape[0], self.rank).to(weight.device, torch.float32)
        down = self.down.reshape(self.rank, -1).to(weight.device, torch.float32)
        return (up @ down).mul_(self.scale).reshape(weight.shape)


def check_deltas(module: nn.Module, deltas: list[LoraDelta]) -> list[str]:
    """Problems of `deltas` against `module` ('key: why'), empty when every delta fits its weight."""
    params = dict(module.named_parameters())
    problems = []
    for d in deltas:
        weight = params.get(d.key)
        why = "no such weight in the model" if weight is None else d.problem(weight)
        if why:
            problems.append(f"{d.key}: {why}")
    return problems


def merged_weights(module: nn.Module, deltas: list[LoraDelta], strength: float) -> dict[str, torch.Tensor]:
    """{key: W + strength * sum of the deltas on W} for every weight the deltas touch (several deltas on one
    weight add up); nothing when strength is 0."""
    if strength == 0:
        return {}
    problems = check_deltas(module, deltas)
    if problems:
        raise ValueError(f"{len(problems)} LoRA deltas do not fit the model: {problems[:10]}")
    params = dict(module.named_parameters())
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for d in deltas:
            weight = params[d.key]
            step = d.delta(weight)
            sums[d.key] = sums[d.key].add_(step) if d.key in sums else step
        return {k: params[k].detach().float().add(total, alpha=strength).to(params[k].dtype)
                for k, total in sums.items()}


def merged(module: nn.Module, deltas: list[LoraDelta], strength: float) -> nn.Module:
    """A new module of `module`'s class (built from its `config`) with the deltas merged at `strength`;
    every tensor the deltas do not touch is `module`'s own. `module` itself is left as it was."""
    new = merged_weights(module, deltas, strength)
    with torch.device("meta"):
        clone = type(module)(module.config)
    state = module.state_dict(keep_vars=True)
    state.update(new)
    clone.load_state_dict({k: v.detach() for k, v in state.items()}, strict=True, assign=True)
    clone.train(module.training)
    return clone


def shared_copy(module: nn.Module) -> nn.Module:
    """A new module of `module`'s class whose parameters and buffers are new Parameter objects over the same
    tensors: no memory, and a holder that replaces its parameters (the host's weight patching) or moves
    them to a device leaves `module` as it was."""
    return merged(module, [], 0.0)
