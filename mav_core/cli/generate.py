"""`python -m mav_core generate PROMPT -o out.mp4`: the whole chain into a video file."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import InputError
from ..inference.pipeline import INTERPOLATORS, ChainSettings, MakeAVideo
from ..inference.text import prompt_warnings
from ..inference.precision import resolve_dtype
from ..io.video import write_video
from ..io.video.formats import _resolve_write_format as write_format

MAX_NAME_BYTES = 255      # the longest file or folder name common file systems (ext4, APFS, NTFS) store
MAX_THREADS = 4096


class ArgumentError(ValueError):
    """A command-line argument at fault: `option` (as typed, e.g. --quality) and what was expected."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


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
    p.add_argument("--interpolator", choices=INTERPOLATORS, default=INTERPOLATORS[0],
                   help="↑F: flow = the motion-compensated ↑F (optical flow + fusion network, deterministic, "
                        "the best on held-out real clips; --interp-steps does not apply), diffusion = the paper's "
                        "sampled ↑F started from the motion-compensated estimate, regression = one-pass ↑F")
    defaults = ChainSettings()
    for f in fields(ChainSettings):
        default = getattr(defaults, f.name)
        if isinstance(default, bool):   # --loop / --no-loop
            p.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default)


def option_name(param: str) -> str:
    return "--" + param.replace("_", "-")


def check_output(output: str) -> Path:
    """-o: a name the file system can hold, a suffix write_video writes (none: a PNG folder), in a folder
    that exists and can be written."""
    path = Path(output)
    for part in path.parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise ArgumentError("-o/--output", f"the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; "
                                               f"file names hold at most {MAX_NAME_BYTES}")
    try:
        write_format(path, None)
    except ValueError:
        raise ArgumentError("-o/--output", f"unsupported suffix {path.suffix!r} in {output!r}; expected .mp4, .m4v, "
                                           ".webm, .gif, .webp, or a folder name without suffix (PNG frames)") from None
    folder = path.parent
    if not folder.is_dir():
        raise ArgumentError("-o/--output", f"the output folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArgumentError("-o/--output", f"the output folder {str(folder)!r} is not writable")
    if path.suffix and path.is_dir():
        raise ArgumentError("-o/--output", f"{output!r} is a folder; give a file name")
    return path


def check_device(device: str) -> torch.device:
    """--device: a device torch knows, present on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError("--device", f"{device!r} is not a device; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= count or count == 0:
            raise ArgumentError("--device", f"{device!r} is not available: this machine has {count} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ArgumentError("--device", f"{device!r} is not available on this machine")
    elif dev.type != "cpu":
        raise ArgumentError("--device", f"{device!r}: expected cpu, cuda, cuda:N or mps")
    return dev


def check_arguments(args) -> ChainSettings:
    """Every argument of `generate`, before anything is loaded; raises ArgumentError naming the option."""
    if not isinstance(args.prompt, str) or not args.prompt.strip():
        raise ArgumentError("prompt", "must be a non-empty text")
    if not 0 <= args.quality <= 100:
        raise ArgumentError("--quality", f"must be an integer in [0, 100], got {args.quality}")
    if not 0 <= args.threads <= MAX_THREADS:
        raise ArgumentError("--threads", f"must be an integer in [0, {MAX_THREADS}] (0: torch's default), "
                                         f"got {args.threads}")
    check_device(args.device)
    if args.weights is not None and not Path(args.weights).is_dir():
        raise ArgumentError("--weights", f"{args.weights!r} is not a folder of stage checkpoints")
    check_output(args.output)
    try:
        return ChainSettings(**{f.name: getattr(args, f.name) for f in fields(ChainSettings)}).validate()
    except InputError as e:
        raise ArgumentError(option_name(e.param), e.message) from None


def main_generate(args):
    settings = check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    mav = MakeAVideo.load(args.weights, device=args.device, dtype=resolve_dtype(args.dtype, args.device),
                          interpolator=args.interpolator)
    for path in mav.untrained():
        print(f"WARNING: {path} holds randomly initialised, UNTRAINED weights: the output is noise-like, "
              "not a trained model's video", file=sys.stderr)
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

    for warning in prompt_warnings(mav.text, args.prompt):
        print(f"warning: prompt: {warning}", file=sys.stderr)
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
