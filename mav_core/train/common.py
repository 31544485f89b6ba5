"""Shared pieces of the stage recipes: arguments, settings, batching, the frozen text encoder."""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from ..io.loader import load_model
from .loop import TrainSettings


def add_common_arguments(p: argparse.ArgumentParser, steps: int, batch_size: int, lr: float):
    p.add_argument("--out", default="runs/mav-tiny", help="folder of stage checkpoints and resume states")
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=batch_size, help="examples per step (default %(default)s)")
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
    return TrainSettings(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         save_every=args.save_every, bf16=args.bf16, resume=args.resume, threads=args.threads,
                         ema=args.ema, warmup=warmup)


def batches(dataset, batch_size: int):
    """Endless batches from an (infinite) iterable dataset, collated by torch's default collate."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    while True:
        yield from loader


def mixed(*streams_and_weights, seed: int = 0):
    """Interleave endless batch streams with the given probabilities: mixed((a, 0.7), (b, 0.3))."""
    gen = torch.Generator().manual_seed(seed)
    streams = [s for s, _ in streams_and_weights]
    weights = torch.tensor([w for _, w in streams_and_weights], dtype=torch.float)
    while True:
        yield next(streams[int(torch.multinomial(weights, 1, generator=gen))])


def frozen_text_encoder(out: str | Path, device="cpu"):
    path = Path(out) / "text.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train the text stage first (python -m mav_core train text)")
    enc = load_model(path, device=device, expect_stage="text").module
    enc.requires_grad_(False)
    return enc


def real_clip_stream(folder: str | Path, num_frames: int, size: int, batch_size: int, seed: int, rank: int, world: int):
    """Batches of real clips when the fetched clips exist, else None."""
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        return None
    from ..data.clips import RealClips
    ds = RealClips(folder, num_frames=num_frames, size=size, seed=seed, split="train", rank=rank, world_size=world)
    return batches(ds, batch_size)
