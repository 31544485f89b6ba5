"""The diffusion ↑F's start strength, chosen on the TRAIN split of the real clips: PSNR/SSIM of the diffusion
↑F started from the motion-compensated estimate noised to each strength, next to the estimate itself (the
flow-warped average), OpenCV DIS and linear blending (the named baseline), measured in the same run on the
same moving windows (frames dropped and restored, as in `python -m mav_core eval`'s ↑F table).

    python bench/bench_flow_diffusion_strength.py --threads 1 [--strengths 0.05,0.1,0.2,0.3] [--windows 4]

Writes bench/results/flow_diffusion_strength.json (after every size). The held-out split is never used here.
The default strength (InterpolationOptions.blend_init) is the largest measured strength whose PSNR is
clearly above blending (by >= 0.25 dB) at 64x64 on the train split.
"""
from __future__ import annotations

import argparse

import torch

from common import machine_info, write_json


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--strengths", default="0.05,0.1,0.2,0.3")
    p.add_argument("--windows", type=int, default=4, help="moving train windows at the first size")
    p.add_argument("--large-windows", type=int, default=1, help="windows at the other sizes")
    p.add_argument("--frames", type=int, default=9, help="frames a window (x2: (frames - 1) / 2 restored)")
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--clips", default="data/clips")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from mav_core.eval.interpolation import FlowTableOptions, eval_flow_interpolation, flow_table_methods
    from mav_core.inference import InterpolationOptions, SamplingOptions, interpolate_video
    from mav_core.inference.pipeline import MakeAVideo
    mav = MakeAVideo.load(interpolator="diffusion")
    cond_uncond = mav.conditioning("", "", 0, 1, 1.0)
    cond = {"context": cond_uncond[0]["context"], "image_embed": torch.zeros_like(cond_uncond[0]["image_embed"])}

    def diffusion(strength):
        return lambda v, m: interpolate_video(mav.interpolator, v, cond, None, 4.0,
                                              InterpolationOptions(m, blend_init=strength),
                                              SamplingOptions(seed=0, steps=args.steps))

    strengths = [float(s) for s in args.strengths.split(",")]
    methods = {"flow_warped_average": flow_table_methods(None, None)["flow_warped_average"],
               **{f"diffusion_from_estimate_{s:g}": diffusion(s) for s in strengths}}
    sizes = [int(s) for s in args.sizes.split(",")]
    report = {"machine": machine_info(args.threads), "split": "train", "steps": args.steps, "frames": args.frames,
              "rows": {}}
    for i, size in enumerate(sizes):
        windows = args.windows if i == 0 else args.large_windows
        table = eval_flow_interpolation(methods, args.clips, FlowTableOptions(
            windows=windows, frames=args.frames, sizes=(size,), multipliers=(2,), split="train"))
        report["rows"][f"{size}x2"] = {"windows": table["windows"], **table[f"{size}x2"]}
        row = table[f"{size}x2"]
        base = row["linear_blend"]["psnr"]
        print(f"\n{size}x{size} x2, {windows} moving train windows of {args.frames} frames:")
        for name, r in row.items():
            print(f"  {name:34}{r['psnr']:8.2f} dB {r['ssim']:7.3f}  vs blend {r['psnr'] - base:+6.2f} dB"
                  f"{r['frames_per_second']:9.2f} frames/s")
        path = write_json(report, "flow_diffusion_strength", args.out)   # after every row: a stopped run keeps its rows
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
