"""The flow settings of the motion-compensated ↑F, chosen on the TRAIN split of the real clips (never the
held-out one): PSNR of the in-between frames of each setting's warped average (no network), with the
OpenCV DIS baseline of the eval measured on the same frames.

    python bench/bench_flow_settings.py --threads 2 [--windows 16] [--sizes 64,128,256]

Settings: the Super-SloMo flow combination with visibility weights (the former default), the linear warp
(each frame read along the other frame's flow, the baseline's warp) of one DIS estimate, and the linear
warp averaged over extra DIS estimates (inference.flow.FLOW_VARIANTS). Writes bench/results/flow_settings.json.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from common import ROOT, machine_info, table, write_json


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--sizes", default="64,128,256")
    p.add_argument("--multipliers", default="2,4")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from mav_core.eval.interpolation import FlowTableOptions, eval_flow_interpolation
    from mav_core.inference.flow import FlowOptions
    from mav_core.inference.interpolate import motion_compensated_frames
    settings = {
        "superslomo_visibility_1_estimate": FlowOptions(warp="superslomo", variants=()),
        "linear_1_estimate": FlowOptions(variants=()),
        "linear_2_estimates_patch4": FlowOptions(variants=("patch4",)),
        "linear_3_estimates_patch4_ultrafast_x2": FlowOptions(variants=("patch4", "ultrafast_x2")),
        "linear_4_estimates_+finest0": FlowOptions(variants=("patch4", "ultrafast_x2", "finest0")),
    }
    methods = {k: (lambda o: lambda v, m: motion_compensated_frames(v, m, None, options=o))(o)
               for k, o in settings.items()}
    options = FlowTableOptions(windows=args.windows, sizes=tuple(int(s) for s in args.sizes.split(",")),
                               multipliers=tuple(int(m) for m in args.multipliers.split(",")), seed=args.seed,
                               split="train")
    result = eval_flow_interpolation(methods, ROOT / "data" / "clips", options)
    rows = []
    for key, row in result.items():
        if key == "windows":
            continue
        base = row["opencv_dis_flow"]["psnr"]
        rows += [{"row": key, "setting": name, "psnr": r["psnr"], "vs_opencv_dis_db": r["psnr"] - base,
                  "frames_per_s": r["frames_per_second"]} for name, r in row.items()]
    info = machine_info(args.threads)
    print(table(rows, ["row", "setting", "psnr", "vs_opencv_dis_db", "frames_per_s"]))
    print(f"\n{info['cpu']} ({info['cores']} cores), {args.threads} thread(s), {args.windows} moving train windows")
    out = write_json({"machine": info, "split": "train", "windows": result["windows"], "rows": rows},
                     "flow_settings", args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
