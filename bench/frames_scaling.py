"""Peak memory and time vs frame count for one UNet step of each MAV-Tiny diffusion stage (random weights).

    python bench/frames_scaling.py --frames 16 32 64 128 --threads 1

Stages: sampler (D^t, a CFG pair = batch 2, 32x32), sampler-windowed (the same with context_window=16),
interp (↑F, batch 1, 32x32 + masked-frame channels), sr (SR^t_l, batch 1, 64x64 + low-res channels).
Every point runs in a fresh subprocess; peak memory is the process's VmHWM (peak RSS) from
/proc/self/status, reported as the rise over the RSS before the step (tracemalloc cannot see torch's
CPU allocations). A least-squares line is fitted to memory and time vs frames. Writes
bench/results/frames_scaling.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from common import ROOT, machine_info, table, write_json

STAGES = ("sampler", "sampler-windowed", "interp", "sr")
WINDOW = 16


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_point(stage: str, frames: int, threads: int, repeats: int) -> dict:
    import torch

    from mav_core.models import family
    from mav_core.inference.windows import FrameWindows
    from mav_core.models.unet import SpaceTimeUNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if stage.startswith("sampler"):
        cfg, batch, size, extra = family.decoder_config(), 2, family.BASE_SIZE, 0
    elif stage == "interp":
        cfg, batch, size = family.interpolator_config(), 1, family.BASE_SIZE
        extra = cfg.extra_in_channels
    else:
        cfg, batch, size = family.sr_config(video=True), 1, 2 * family.BASE_SIZE
        extra = cfg.extra_in_channels
    net = SpaceTimeUNet(cfg).eval()
    if stage == "sampler-windowed":
        net = FrameWindows(net, WINDOW)
    x = torch.randn(batch, cfg.in_channels, frames, size, size)
    cond = {"context": torch.randn(batch, 8, cfg.context_dim)}
    if cfg.image_embed_dim:
        cond["image_embed"] = torch.randn(batch, cfg.image_embed_dim)
    if extra:
        cond["extra"] = torch.randn(batch, extra, frames, size, size)
    t = torch.full((batch,), 500.0)
    base_kib = _status_kib("VmRSS")
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x, t, **cond)
            times.append(time.perf_counter() - t0)
    peak_kib = _status_kib("VmHWM")
    return {"stage": stage, "frames": frames, "time_s": statistics.median(times), "times": times,
            "peak_rss_MiB": peak_kib / 1024, "base_rss_MiB": base_kib / 1024,
            "step_peak_MiB": (peak_kib - base_kib) / 1024}


def fit(xs, ys) -> dict:
    a, b = np.polyfit(xs, ys, 1)
    pred = a * np.asarray(xs) + b
    ss_res = float(((np.asarray(ys) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum()) or 1e-30
    return {"slope_per_frame": float(a), "intercept": float(b), "r2": 1 - ss_res / ss_tot}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", nargs="+", type=int, default=[16, 32, 64, 128])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="steps per point (the first one includes warm-up)")
    p.add_argument("--out", default=None)
    p.add_argument("--point", nargs=2, metavar=("STAGE", "FRAMES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.point:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(run_point(args.point[0], int(args.point[1]), args.threads, args.repeats)))
        return
    info = machine_info(args.threads)
    print(f"{args.threads} thread(s); one UNet step per point, fresh process per point; load {info['loadavg']}")
    rows = []
    for frames in args.frames:                    # frames outer, stages inner: drift hits every stage alike
        for stage in args.stages:
            out = subprocess.run([sys.executable, __file__, "--point", stage, str(frames), "--threads",
                                  str(args.threads), "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(table([rows[-1]], COLUMNS), flush=True)
    fits = {}
    for stage in args.stages:
        pts = [r for r in rows if r["stage"] == stage]
        xs = [r["frames"] for r in pts]
        if len(xs) >= 2:
            fits[stage] = {"memory_MiB": fit(xs, [r["step_peak_MiB"] for r in pts]),
                           "time_s": fit(xs, [r["time_s"] for r in pts])}
    print("\n" + table(rows, COLUMNS))
    print("\nlinear fits (value = slope * frames + intercept):")
    print(table([{"stage": s, "MiB/frame": f["memory_MiB"]["slope_per_frame"], "MiB@0": f["memory_MiB"]["intercept"],
                  "mem R2": f["memory_MiB"]["r2"], "s/frame": f["time_s"]["slope_per_frame"],
                  "s@0": f["time_s"]["intercept"], "time R2": f["time_s"]["r2"]} for s, f in fits.items()],
                ["stage", "MiB/frame", "MiB@0", "mem R2", "s/frame", "s@0", "time R2"]))
    path = write_json({"machine": info, "args": vars(args), "window": WINDOW, "rows": rows, "fits": fits},
                      "frames_scaling", args.out)
    print(f"wrote {path}")


COLUMNS = ["stage", "frames", "time_s", "step_peak_MiB", "peak_rss_MiB"]

if __name__ == "__main__":
    main()
