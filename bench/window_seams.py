"""Seams of sliding temporal windows with the shipped MAV-Tiny D^t: a long video (default 128 frames)
sampled in overlapping windows, and the frame difference at every window boundary compared with the
95th percentile of the clip's other frame-to-frame transitions (the criterion of the performance issue);
the same for the temporal jerk (second difference: a seam is a jump its neighbours do not share, motion is
not). --reference also samples each video without windows and scores it at the same transitions.

    python bench/window_seams.py --frames 128 --window 16 --overlap 4 --threads 1

Also reports the process's peak RSS (VmHWM) and the sampling time. Writes bench/results/window_seams.json.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import machine_info, table, write_json

from mav_core.eval.metrics import seam_scores, temporal_jerk


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def seam_transitions(frames: int, window: int, overlap: int) -> list[int]:
    """Transitions t -> t+1 that cross a window edge at any step (a window starts at t+1 or ends at t)."""
    from mav_core.inference.windows import FrameWindows
    return FrameWindows(torch.nn.Identity(), window, overlap).edge_transitions(frames)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt", nargs="+", default=["a red circle on a blue background",
                                                   "a large green square on a gray background"])
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", action="store_true",
                   help="also sample each video without windows (same seed) and score the same transitions: "
                        "how often a clip's own motion puts those transitions above its 95th percentile")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from mav_core.models import family
    from mav_core.inference.pipeline import MakeAVideo
    from mav_core.inference import SamplingOptions, VideoShape, WindowOptions, generate_video
    mav = MakeAVideo.load()
    seams = seam_transitions(args.frames, args.window, args.overlap)
    rows = []
    runs = [(p, True) for p in args.prompt] + ([(p, False) for p in args.prompt] if args.reference else [])
    for prompt, windowed in runs:
        i = args.prompt.index(prompt)
        cond, uncond = mav.conditioning(prompt, "", args.seed + i, 20, 1.0)
        t0 = time.perf_counter()
        with torch.no_grad():
            video = generate_video(mav.decoder, cond, uncond, VideoShape(args.frames, family.BASE_SIZE, family.BASE_SIZE, 4.0),
                                   SamplingOptions(seed=args.seed + i, steps=args.steps, cfg=args.cfg),
                                   windows=WindowOptions(args.window, args.overlap) if windowed else None)
        seconds = time.perf_counter() - t0
        v = ((video[0].clamp(-1, 1) + 1) * 127.5).permute(1, 0, 2, 3).numpy()   # [F, C, H, W] in 0..255
        diff = np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3))                    # per transition
        jerk = temporal_jerk(v)
        d, j = seam_scores(diff, seams), seam_scores(jerk, seams)
        rows.append({"prompt": prompt, "frames": args.frames, "window": args.window if windowed else "none",
                     "overlap": args.overlap, "seams": len(seams),
                     **{f"diff_{k}": val for k, val in d.items()}, **{f"jerk_{k}": val for k, val in j.items()},
                     "seconds": seconds, "frame_diff": diff.round(4).tolist(), "jerk": jerk.round(4).tolist()})
        shown = {k: val for k, val in rows[-1].items() if k not in ("frame_diff", "jerk")}
        print(table([shown], list(shown)), flush=True)
    info = machine_info(args.threads)
    result = {"machine": info, "args": vars(args), "seam_transitions": seams, "rows": rows,
              "peak_rss_mib": _peak_rss_mib()}
    print(f"peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(f"wrote {write_json(result, 'window_seams', args.out)}")


if __name__ == "__main__":
    main()
