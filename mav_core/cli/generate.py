"""`python -m mav_core generate PROMPT -o out.mp4`: the whole chain into a video file."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import fields

import torch
from tqdm import tqdm

from ..inference.pipeline import INTERPOLATORS, ChainSettings, MakeAVideo
from ..inference.precision import resolve_dtype
from ..io.video import write_video


def add_generate_arguments(p):
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="out.mp4", help="mp4, webm, gif, webp, or a folder for PNG frames")
    p.add_argument("--weights", default=None, help="folder of stage checkpoints (default: the shipped MAV-Tiny)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="dtype of the diffusion UNets: auto = float32 on the CPU, bf16 on CUDA GPUs of compute "
                        "capability >= 8, fp16 on older ones and on MPS (sampling state stays float32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quality", type=int, default=85, help="0-100: mp4/webm CRF from it, webp quality (100 = lossless)")
    p.add_argument("--interpolator", choices=INTERPOLATORS, default="diffusion",
                   help="↑F: the paper's sampled diffusion ↑F, or the one-pass regression ↑F (deterministic, "
                        "highest PSNR on real clips; --interp-steps does not apply)")
    defaults = ChainSettings()
    for f in fields(ChainSettings):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name))


def main_generate(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    mav = MakeAVideo.load(args.weights, device=args.device, dtype=resolve_dtype(args.dtype, args.device),
                          interpolator=args.interpolator)
    for path in mav.untrained():
        print(f"WARNING: {path} holds randomly initialised, UNTRAINED weights: the output is noise-like, "
              "not a trained model's video", file=sys.stderr)
    settings = ChainSettings(**{f.name: getattr(args, f.name) for f in fields(ChainSettings)})
    bars = {}

    def progress(stage, step, total):
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=total, desc=stage, leave=True)
        bar = bars[stage]
        if step <= bar.n:   # a stage that samples several windows/chunks restarts its count
            bar.reset(total)
        bar.update(step - bar.n)

    t0 = time.perf_counter()
    result = mav(args.prompt, settings, progress=progress)
    for bar in bars.values():
        bar.close()
    meta = {"prompt": json.dumps({"prompt": args.prompt, **{f.name: getattr(settings, f.name) for f in fields(ChainSettings)}})}
    path = write_video(result.frames, args.output, result.fps, quality=args.quality, metadata=meta)
    total = time.perf_counter() - t0
    f, h, w, _ = result.frames.shape
    print(f"wrote {path}: {f} frames {w}x{h} at {result.fps:g} fps in {total:.1f}s "
          f"({', '.join(f'{k} {v:.1f}s' for k, v in result.timings.items())})")
    return 0
