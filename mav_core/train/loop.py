"""A small resumable training loop shared by every stage.

- single process, or `torchrun --nproc_per_node=N` (gloo on CPU, nccl on GPU): rank 0's weights are
  broadcast at the start, gradients are all-reduced (averaged) every step, each rank draws its own
  data stream (seed + rank), rank 0 writes checkpoints;
- resumable: `<out>/<stage>.state.pt` holds step, model, optimizer and RNG states (tensors and plain
  containers only, reloaded with torch.load(weights_only=True)); `--resume` continues from it;
- progress through tqdm on rank 0; bf16 autocast optional;
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
from tqdm import tqdm


@dataclass
class TrainSettings:
    out: str = "runs/mav-tiny"
    steps: int = 1000
    batch_size: int = 32
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


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist_info()


def train_loop(stage: str, model: torch.nn.Module, params: list, loss_fn: Callable[[int, torch.Generator], torch.Tensor],
               settings: TrainSettings, on_save: Callable[[torch.nn.Module], None],
               device: torch.device | str = "cpu") -> list[float]:
    """Run `settings.steps` optimiser steps of loss_fn(step, generator) over `params` of `model`;
    returns the loss history. on_save(model) writes the stage's safetensors (rank 0 only)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rank, world = maybe_init_distributed()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / f"{stage}.state.pt"
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed * 1000 + rank)
    start = 0
    history: list[float] = []
    state = torch.load(state_path, map_location="cpu", weights_only=True) if (
        settings.resume and state_path.exists()) else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"][rank] if rank < len(state["generator"]) else state["generator"][0])
        start = int(state["step"])
        history = list(state.get("history", []))
    if world > 1:  # every rank starts from rank 0's weights
        for p in model.state_dict().values():
            dist.broadcast(p, 0)
    ema = None
    if settings.ema:
        ema = copy.deepcopy(model).requires_grad_(False)  # a resumed run without an EMA starts it here
        if state is not None and "ema" in state:
            ema.load_state_dict(state["ema"])

    def lr_at(step):
        warm = min(1.0, (step + 1) / max(1, settings.warmup))
        return settings.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, settings.steps))))

    def save(step):
        gens = [gen.get_state()]
        if world > 1:
            gathered = [torch.empty_like(gens[0]) for _ in range(world)]
            dist.all_gather(gathered, gens[0])
            gens = gathered
        if rank == 0:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "generator": gens, "history": history,
                        **({"ema": ema.state_dict()} if ema is not None else {})}, tmp)
            os.replace(tmp, state_path)
            on_save(ema if ema is not None else model)

    model.train()
    bar = tqdm(range(start, settings.steps), desc=stage, disable=rank != 0, initial=start, total=settings.steps)
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = loss_fn(step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        if ema is not None:
            update_ema(ema, model, settings.ema)
        value = float(loss.detach())
        if world > 1:
            t = torch.tensor([value])
            dist.all_reduce(t)
            value = float(t) / world
        history.append(value)
        if rank == 0 and (step % settings.log_every == 0 or step == settings.steps - 1):
            recent = history[-settings.log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", s_per_step=f"{(time.time() - t0) / (step - start + 1):.2f}")
        if (step + 1) % settings.save_every == 0 or step == settings.steps - 1:
            save(step + 1)
    model.eval()
    return history


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for floating-point parameters and buffers."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.is_floating_point():
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)
