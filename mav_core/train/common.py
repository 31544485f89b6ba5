"""Shared pieces of the stage recipes: arguments, settings, the global batches of example streams cut
into the ranks' shards, the sharded diffusion loss, the frozen text encoder."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from ..data.clips import RealClips
from ..io.loader import load_model
from ..diffusion.loss import noised_error
from .loop import Shard, TrainSettings


def add_common_arguments(p: argparse.ArgumentParser, steps: int, batch_size: int, lr: float):
    p.add_argument("--out", default="runs/mav-tiny", help="folder of stage checkpoints and resume states")
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=batch_size, help="examples per step over all processes (default %(default)s)")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on CPUs with AMX and on GPUs)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>/<stage>.state.pt if present (default on; --no-resume starts over)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (e.g. 0.999; 0: off)")
    p.add_argument("--device", default="cpu", help="device of the stages that take one (text, prior)")
    p.add_argument("--clips", default="data/clips", help="folder of real clips (scripts/fetch_clips.py); "
                   "used when present")


def settings_from_args(args, warmup: int = 50) -> TrainSettings:
    """The loop's settings; refuses (before any model is built) a --batch-size that the torchrun
    processes (WORLD_SIZE) cannot share equally."""
    Shard(args.batch_size, 0, int(os.environ.get("WORLD_SIZE", "1")))
    return TrainSettings(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         save_every=args.save_every, bf16=args.bf16, resume=args.resume, threads=args.threads,
                         ema=args.ema, warmup=warmup)


class StreamBatches:
    """The global batches of an endless example stream (one with draws() and make(): world.CaptionedImages,
    world.WorldClips, clips.RealClips, temporal.VideoCrops): batch k is items k*B .. k*B + B - 1 of the one
    stream, however many processes train. Each rank makes only its items of a batch (DistributedSampler
    style: rank r of W takes items r, r + W, ...), after every item's random draws, which are cheap; so
    W processes see exactly the batches of one, and a resumed run skips to its step without rendering
    or decoding the batches before it. Batches are asked for in increasing k."""

    def __init__(self, dataset, batch_size: int, collate=torch.utils.data.default_collate):
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self._draws, self._next = None, 0

    def take(self, k: int, shard: Shard) -> tuple[list, list]:
        """(the draws of every item of batch k, this rank's items of it, made)."""
        if shard.batch_size != self.batch_size:
            raise ValueError(f"a shard of a batch of {shard.batch_size} taken from batches of {self.batch_size}")
        if k < self._next:
            raise ValueError(f"batch {k} asked for after batch {self._next - 1}: batches come in increasing order")
        if self._draws is None:
            self._draws = iter(self.dataset.draws())
        for _ in range((k - self._next) * self.batch_size):
            next(self._draws)
        draws = [next(self._draws) for _ in range(self.batch_size)]
        self._next = k + 1
        return draws, [self.dataset.make(draws[i]) for i in shard.indices()]

    def __call__(self, k: int, shard: Shard):
        """This rank's items of batch k, collated (torch's default collate unless given)."""
        return self.collate(self.take(k, shard)[1])


class Mixed:
    """Batches of several StreamBatches with the given probabilities: Mixed((a, 0.7), (b, 0.3), seed=s).
    The stream of step k is drawn from a generator seeded by `seed` (the same on every rank); each
    stream serves its own batches in order. Called as (step, shard) like a StreamBatches."""

    def __init__(self, *streams_and_weights, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)
        self.streams = [s for s, _ in streams_and_weights]
        self.weights = torch.tensor([w for _, w in streams_and_weights], dtype=torch.float)
        self.served = [0] * len(self.streams)
        self._next = 0

    def __call__(self, step: int, shard: Shard):
        if step < self._next:
            raise ValueError(f"step {step} asked for after step {self._next - 1}: steps come in increasing order")
        while True:
            i = int(torch.multinomial(self.weights, 1, generator=self.gen))
            k, self.served[i] = self.served[i], self.served[i] + 1
            current, self._next = self._next, self._next + 1
            if current == step:
                return self.streams[i](k, shard)


def shard_diffusion_loss(network, x0: torch.Tensor, schedule, prediction: str, gen: torch.Generator, shard: Shard,
                         loss_mask: torch.Tensor | None = None, min_snr_gamma: float = 0.0, **cond) -> torch.Tensor:
    """diffusion.diffusion_loss on this rank's rows x0 of the global batch (k rows per example): the
    timesteps and noise are drawn from `gen` for the whole global batch, as diffusion_loss draws them
    on it, and cut with shard.take; the result is this rank's part of the global loss (loop.Shard).
    loss_mask is given for the global batch (broadcastable to its x0)."""
    if x0.shape[0] % shard.size:
        raise ValueError(f"{x0.shape[0]} rows do not split into the shard's {shard.size} examples")
    rows = shard.batch_size * (x0.shape[0] // shard.size)
    full = (rows, *x0.shape[1:])
    ac = schedule.alphas_cumprod().to(x0.device, torch.float32)
    t = shard.take(torch.randint(0, schedule.num_train_steps, (rows,), generator=gen)).to(x0.device)
    noise = shard.take(torch.randn(full, generator=gen)).to(x0)
    err = noised_error(network, x0, (ac, t, noise), prediction, min_snr_gamma, **cond)
    if loss_mask is not None:
        mask = loss_mask.expand(full).float()
        return (err * shard.take(mask)).sum() / mask.sum().clamp(min=1) * shard.world
    return err.mean()


def frozen_text_encoder(out: str | Path, device="cpu"):
    path = Path(out) / "text.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train the text stage first (python -m mav_core train text)")
    enc = load_model(path, device=device, expect_stage="text").module
    enc.requires_grad_(False)
    return enc


def real_clip_stream(folder: str | Path, num_frames: int, size: int, batch_size: int, seed: int):
    """StreamBatches of real clips when the fetched clips exist, else None."""
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        return None
    return StreamBatches(RealClips(folder, num_frames=num_frames, size=size, seed=seed, split="train"), batch_size)


def train_from_command_line(argv, description: str, add_arguments, run, stage: str):
    """`python -m mav_core.train.<stage>`: parse, train, print where it wrote and load the result back;
    returns (arguments, the trained module) for the stage's own report."""
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    t0 = time.time()
    path = run(args)
    print(f"wrote {path} in {time.time() - t0:.0f} s")
    return args, load_model(path, expect_stage=stage).module
