"""The resumable training loop shared by every stage, on one process or data-parallel over several.

- one process, or `torchrun --nproc_per_node=W` (gloo on CPU, nccl on GPU): the loss runs under
  DistributedDataParallel, which averages the gradients of the trained parameters in backward. Every
  step has one global batch of `batch_size` examples, defined by the seed and the step alone; rank r
  of W computes the loss of its shard, examples r, r + W, r + 2W, ... (`Shard`), so W processes train
  like one process on the whole batch. batch_size must be a multiple of W.
- the recipe's loss: `loss_fn(step, gen, shard) -> loss`. `gen` is the run's torch.Generator, seeded
  by `seed` and in the same state on every rank: every random choice of the step (which examples,
  timesteps, noise, conditioning dropout) is drawn from it for the whole global batch, and the rank
  keeps its part with `shard.take(...)`; streams of examples are cut the same way
  (`train.common.StreamBatches`). The returned loss is normalised so that its mean over the ranks is
  the loss of the global batch: the mean over the shard's examples when every example weighs the same,
  times `shard.weight(part, total)` for a mean over a count that varies between examples (masked
  losses); losses that couple the examples (contrastive) use `shard.gather` to see the whole batch.
- resumable: `<out>/<stage>.state.pt` holds step, model, optimizer and generator state (tensors and
  plain containers only, written atomically, reloaded with torch.load(weights_only=True)); `--resume`
  continues from it and ends with the same weights as an uninterrupted run; rank 0 writes it and the
  stage file;
- warmup + cosine learning rate, gradient clipping, bf16 autocast optional, progress through tqdm on
  rank 0;
- optional exponential moving average of the weights (`ema` decay): the saved stage file then holds
  the EMA weights (smoother samples from a short run), the state file both.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm


@dataclass
class TrainSettings:
    out: str = "runs/mav-tiny"
    steps: int = 1000
    batch_size: int = 32      # examples per step over all processes (the global batch)
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 200
    log_every: int = 20
    bf16: bool = False
    resume: bool = True
    threads: int = 0          # torch threads per process; 0 = leave as is
    ema: float = 0.0          # EMA decay of the saved weights (e.g. 0.999); 0 = save the raw weights


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world`'s part of a global batch of `batch_size` examples: examples rank,
    rank + world, ... (`size` of them)."""
    batch_size: int
    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if self.batch_size < 1 or self.batch_size % self.world:
            raise ValueError(f"--batch-size {self.batch_size} must be a positive multiple of the {self.world} "
                             f"training processes: each computes an equal share of every batch")

    @property
    def size(self) -> int:
        return self.batch_size // self.world

    def indices(self) -> range:
        """This rank's example indices in the global batch."""
        return range(self.rank, self.batch_size, self.world)

    def take(self, x):
        """This rank's rows of x (a tensor or a list) holding k * batch_size rows, k consecutive rows per
        example (k = 1: one row per example; k = frames: the frames of each clip flattened)."""
        k = self._rows_per_example(len(x), self.batch_size)
        if self.world == 1:
            return x
        if isinstance(x, torch.Tensor):
            return x.unflatten(0, (self.batch_size, k))[self.rank::self.world].flatten(0, 1)
        return [x[i * k + j] for i in self.indices() for j in range(k)]

    def weight(self, part, total) -> float:
        """Factor turning a mean over this rank's `part` elements into its part of the mean over the
        global batch's `total` elements: world * part / total (exactly 1 for equal shares)."""
        return self.world * float(part) / float(total) if total else 0.0

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The global batch's rows of x, given this rank's rows (as take returns them), in global order;
        gradients flow back to every rank's own rows."""
        self._rows_per_example(len(x), self.size)
        return x if self.world == 1 else _AllGather.apply(x, self)

    @staticmethod
    def _rows_per_example(rows: int, examples: int) -> int:
        if rows % examples:
            raise ValueError(f"{rows} rows do not split into {examples} examples")
        return rows // examples


class _AllGather(torch.autograd.Function):
    """all_gather of every rank's shard rows into the global order; backward sums the gradient over the
    ranks (each rank's loss may use every row) and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x, shard: Shard):
        ctx.shard = shard
        parts = [torch.empty_like(x) for _ in range(shard.world)]
        dist.all_gather(parts, x.contiguous())
        k = x.shape[0] // shard.size
        return torch.stack(parts).unflatten(1, (shard.size, k)).transpose(0, 1).flatten(0, 2)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return ctx.shard.take(grad), None


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed():
    """Join the torchrun process group when WORLD_SIZE > 1: gloo for CPU tensors, nccl for CUDA tensors
    (each local rank on its own GPU when there are enough); returns (rank, world)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local < torch.cuda.device_count():
                torch.cuda.set_device(local)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend)
    return dist_info()


class _LossStep(torch.nn.Module):
    """loss_fn as the forward of a module holding the model, so that DistributedDataParallel sees every
    step's forward and averages the model's gradients in backward."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, step: int, gen: torch.Generator, shard: Shard) -> torch.Tensor:
        return self.loss_fn(step, gen, shard)


def _data_parallel(model: torch.nn.Module, loss_fn: Callable) -> DistributedDataParallel:
    device = next(model.parameters()).device
    return DistributedDataParallel(_LossStep(model, loss_fn), device_ids=[device.index] if device.type == "cuda" else None,
                                   static_graph=True)


def _load_state(path: Path, resume: bool) -> dict | None:
    if not (resume and path.exists()):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state["generator"], (list, tuple)):   # older files: one generator state per rank
        state["generator"] = state["generator"][0]
    return state


def lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warmup over settings.warmup steps times a cosine decay to 0 at settings.steps."""
    warm = min(1.0, (step + 1) / max(1, settings.warmup))
    return settings.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, settings.steps))))


def train_loop(stage: str, model: torch.nn.Module, params: list,
               loss_fn: Callable[[int, torch.Generator, Shard], torch.Tensor],
               settings: TrainSettings, on_save: Callable[[torch.nn.Module], None],
               device: torch.device | str = "cpu") -> list[float]:
    """Run `settings.steps` optimiser steps of loss_fn(step, generator, shard) over `params` of `model`
    (see the module docstring); returns the loss history. on_save(model) writes the stage's
    safetensors (rank 0 only)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rank, world = maybe_init_distributed()
    shard = Shard(settings.batch_size, rank, world)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / f"{stage}.state.pt"
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed * 1000)
    start, history = 0, []
    state = _load_state(state_path, settings.resume)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start, history = int(state["step"]), list(state.get("history", []))
    ema = None
    if settings.ema:
        ema = copy.deepcopy(model).requires_grad_(False)  # a resumed run without an EMA starts it here
        if state is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
    step_loss = _data_parallel(model, loss_fn) if world > 1 else loss_fn  # DDP starts every rank at rank 0's weights

    def save(step):
        if rank == 0:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "generator": gen.get_state(), "history": history,
                        **({"ema": ema.state_dict()} if ema is not None else {})}, tmp)
            os.replace(tmp, state_path)
            on_save(ema if ema is not None else model)

    model.train()
    bar = tqdm(range(start, settings.steps), desc=stage, disable=rank != 0, initial=start, total=settings.steps)
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, settings)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = step_loss(step, gen, shard)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        if ema is not None:
            update_ema(ema, model, settings.ema)
        value = float(loss.detach())
        if world > 1:
            t = torch.tensor([value], device=loss.device)
            dist.all_reduce(t)
            value = float(t) / world
        history.append(value)
        if rank == 0 and (step % settings.log_every == 0 or step == settings.steps - 1):
            recent = history[-settings.log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", s_per_step=f"{(time.time() - t0) / (step - start + 1):.2f}")
        if (step + 1) % settings.save_every == 0 or step == settings.steps - 1:
            save(step + 1)
    model.eval()
    if world > 1:
        dist.barrier()   # every rank returns once the files are written
    return history


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for floating-point parameters and buffers."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.is_floating_point():
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)
