"""In-between frames per second of the motion-compensated ↑F at several sizes, against OpenCV DIS flow
interpolation (the named baseline, same run, same frames) and the flow-warped average without the network.

    python bench/bench_flow_interp.py --threads 2 [--multiplier 2] [--repeats 3] [--weights FILE]

Frames: 9 frames of a real held-out clip (data/clips) resized to each size, else a moving random texture.
Writes bench/results/flow_interp.json.
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch

from common import machine_info, table, write_json

SIZES = [(128, 128), (256, 256), (512, 512), (512, 288)]


def source_frames(count: int) -> np.ndarray:
    """uint8 [count, 512, 512, 3]: a real held-out clip's window when the clips are fetched."""
    from common import ROOT
    folder = ROOT / "data" / "clips"
    if (folder / "manifest.json").exists():
        from mav_core.data.clips import RealClips
        clip, _ = next(iter(RealClips(folder, num_frames=count, size=512, seed=0, split="heldout", strides=(1,))))
        return ((clip.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    rng = np.random.default_rng(0)
    big = cv2.resize((rng.random((80, 80, 3)) * 255).astype(np.uint8), (640, 640), interpolation=cv2.INTER_CUBIC)
    return np.stack([big[3 * i:3 * i + 512, 2 * i:2 * i + 512] for i in range(count)])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--multiplier", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frames", type=int, default=9, help="input frames (pairs = frames - 1)")
    p.add_argument("--weights", default=None, help="fusion network file (default: the shipped one)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from mav_core.eval.interpolation import opencv_flow_frame
    from mav_core.inference.interpolate import flow_options, motion_compensated_frames
    from mav_core.io.loader import load_model
    from mav_core.models import family
    from mav_core.models.flow_fusion import FLOW_INTERPOLATOR_FILE
    path = args.weights or family.WEIGHTS_DIR / FLOW_INTERPOLATOR_FILE
    net = load_model(path, expect_stage="interpolator").module.float()
    m = args.multiplier
    frames = source_frames(args.frames)
    rows = []
    for w, h in SIZES:
        small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
        video = torch.from_numpy(small).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]

        def dis():
            return [opencv_flow_frame(small[i], small[i + 1], k / m) for i in range(len(small) - 1) for k in range(1, m)]

        methods = {"opencv_dis_flow": dis,
                   "flow_warped_average": lambda: motion_compensated_frames(video, m, None, options=flow_options(net)),
                   "mav_flow_interpolator": lambda: motion_compensated_frames(video, m, net)}
        made = (len(small) - 1) * (m - 1)
        times = {k: [] for k in methods}
        for k, fn in methods.items():
            fn()                                   # warm-up
        for _ in range(args.repeats):               # alternated, so a busy moment hits every method
            for k, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        base = made / statistics.median(times["opencv_dis_flow"])
        for k in methods:
            fps = made / statistics.median(times[k])
            rows.append({"size": f"{w}x{h}", "method": k, "frames_per_s": fps, "vs_opencv_dis": fps / base,
                         "in_between_frames": made})
        print(table(rows[-len(methods):], ["size", "method", "frames_per_s", "vs_opencv_dis"]), flush=True)
    info = machine_info(args.threads)
    print(f"\n{info['cpu']} ({info['cores']} cores, flags {info['cpu_flags']}), {args.threads} thread(s), "
          f"load average {info['loadavg']}, x{m}, weights {path}")
    print(table(rows, ["size", "method", "frames_per_s", "vs_opencv_dis"]))
    out = write_json({"machine": info, "multiplier": m, "weights": str(path), "rows": rows}, "flow_interp", args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
