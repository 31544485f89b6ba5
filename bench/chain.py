"""Wall time of the full default chain (text -> prior -> D^t -> ↑F -> SR^t_l -> SR_h) per stage.

    python bench/chain.py --threads 1 [--repeats 2] [--weights DIR]

Uses the shipped MAV-Tiny weights (mav_core/weights/mav-tiny) when present, else writes untrained
weights of the same layout with `python -m mav_core init` (same compute, meaningless pictures).
Default ChainSettings. Writes bench/results/chain.json.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, machine_info, table, write_json


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--weights", default=None, help="weights folder (default: shipped, else untrained init)")
    p.add_argument("--prompt", default="a red circle moving right on a blue background")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from mav_core.models import family
    from mav_core.inference.pipeline import ChainSettings, MakeAVideo

    tmp = None
    folder = Path(args.weights) if args.weights else family.WEIGHTS_DIR
    source = "given" if args.weights else "shipped"
    if not folder.is_dir():
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name)
        subprocess.run([sys.executable, "-m", "mav_core", "init", "--out", str(folder)], cwd=ROOT, check=True,
                       capture_output=True)
        source = "untrained (python -m mav_core init)"
    t0 = time.perf_counter()
    mav = MakeAVideo.load(folder)
    load_s = time.perf_counter() - t0
    settings = ChainSettings()
    info = machine_info(args.threads)
    print(f"{args.threads} thread(s); weights: {source}; settings {settings}; load {load_s:.2f} s")
    runs = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        result = mav(args.prompt, ChainSettings())
        total = time.perf_counter() - t0
        runs.append({**result.timings, "total": total})
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
    stages = list(runs[0])
    rows = [{"stage": k, "median_s": statistics.median(r[k] for r in runs),
             "share_%": 100 * statistics.median(r[k] for r in runs) / statistics.median(r["total"] for r in runs)}
            for k in stages]
    frames = tuple(result.frames.shape)
    print("\n" + table(rows, ["stage", "median_s", "share_%"]))
    print(f"output frames {frames} at {result.fps} fps")
    path = write_json({"machine": info, "args": vars(args), "weights": source, "settings": vars(settings),
                       "load_s": load_s, "runs": runs, "rows": rows, "output_shape": frames}, "chain", args.out)
    print(f"wrote {path}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
