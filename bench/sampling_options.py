"""What the sampler's loop, noise and window+control options do, measured on the shipped MAV-Tiny D^t.

  loop     closed loops: the wrap transition (last frame -> first) against the 95th percentile of the clip's
           other transitions, per seed, with loop on and off (baseline: the same seeds without loop)
  noise    motion (mean absolute frame difference, 0..255) per start-noise option and FreeInit iterations
           (baseline: independent noise without FreeInit, same seeds and prompts)
  control  object-mask IoU against held-out rendered clips with and without the Canny control, the video
           sampled in sliding windows (baseline: the same windows without the control)

    python bench/sampling_options.py loop --seeds 10 --frames 16 --steps 6 --threads 1
    python bench/sampling_options.py noise --seeds 3 --frames 16 --steps 6 --threads 1
    python bench/sampling_options.py control --seeds 6 --frames 16 --window 8 --overlap 2 --steps 6 --threads 1

Writes bench/results/sampling_options_<what>.json with the machine's CPU, flags, threads and load.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from common import ROOT, machine_info, table, write_json

sys.path.insert(0, str(ROOT / "tests"))
PROMPTS = ["a small red circle on a dark blue background", "a large yellow square on a gray background",
           "a large green triangle on a black background"]


def pixels(video: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in -1..1 -> [F, 3, H, W] float in 0..255."""
    return ((video[0].clamp(-1, 1) + 1) * 127.5).permute(1, 0, 2, 3).double().numpy()


def transitions(v: np.ndarray) -> np.ndarray:
    """Mean absolute difference of every transition t -> t+1, the wrap F-1 -> 0 last."""
    return np.abs(np.roll(v, -1, axis=0) - v).mean(axis=(1, 2, 3))


def run_loop(mav, args) -> list[dict]:
    from mav_core.inference import SamplingOptions, VideoShape, WindowOptions, generate_video
    rows = []
    for seed in range(args.seeds):
        prompt = PROMPTS[seed % len(PROMPTS)]
        cond, uncond = mav.conditioning(prompt, "", seed, 10, 1.0)
        for loop in (False, True):
            t0 = time.perf_counter()
            video = generate_video(mav.decoder, cond, uncond, VideoShape(args.frames, 32, 32, 8.0),
                                   SamplingOptions(seed=seed, steps=args.steps, cfg=args.cfg),
                                   windows=WindowOptions(args.window or args.frames, args.overlap, loop=True)
                                   if loop else None)
            d = transitions(pixels(video))
            p95 = float(np.percentile(d[:-1], 95))
            rows.append({"seed": seed, "loop": loop, "wrap": float(d[-1]), "others_p95": p95,
                         "wrap_over_p95": float(d[-1] / p95), "passes": bool(d[-1] <= p95),
                         "motion": float(d[:-1].mean()), "seconds": time.perf_counter() - t0})
            print(table([rows[-1]], list(rows[-1])), flush=True)
    for loop in (False, True):
        sel = [r for r in rows if r["loop"] == loop]
        print(f"loop={loop}: wrap <= p95 in {sum(r['passes'] for r in sel)}/{len(sel)} seeds, mean wrap/p95 "
              f"{np.mean([r['wrap_over_p95'] for r in sel]):.3f}, motion {np.mean([r['motion'] for r in sel]):.2f}")
    return rows


NOISE_VARIANTS = [("independent", 0.0, 0), ("correlated 0.5", 0.5, 0),
                  ("shared", 1.0, 0), ("independent + FreeInit 1", 0.0, 1), ("independent + FreeInit 2", 0.0, 2)]


def run_noise(mav, args) -> list[dict]:
    from mav_core.inference import SamplingOptions, VideoShape, generate_video
    from mav_core.eval.metrics import score_video, to_uint8
    from mav_core.inference import video_to_frames
    from mav_core.data.world import parse_caption
    rows = []
    for seed in range(args.seeds):
        prompt = PROMPTS[seed % len(PROMPTS)]
        cond, uncond = mav.conditioning(prompt, "", seed, 10, 1.0)
        for name, share, iterations in NOISE_VARIANTS:
            t0 = time.perf_counter()
            video = generate_video(mav.decoder, cond, uncond, VideoShape(args.frames, 32, 32, 8.0),
                                   SamplingOptions(seed=seed, steps=args.steps, cfg=args.cfg, noise_share=share,
                                                   freeinit_iterations=iterations))
            d = transitions(pixels(video))[:-1]
            scene = parse_caption(prompt)
            score = score_video(to_uint8(video_to_frames(video)), scene["colour"], scene["shape"])
            rows.append({"seed": seed, "noise": name, "motion": float(d.mean()),
                         "motion_p95": float(np.percentile(d, 95)), **{k: score[k] for k in sorted(score)
                                                                          if isinstance(score[k], (int, float))},
                         "seconds": time.perf_counter() - t0})
            print(table([rows[-1]], list(rows[-1])), flush=True)
    base = np.mean([r["motion"] for r in rows if r["noise"] == "independent"])
    for name, _, _ in NOISE_VARIANTS:
        m = np.mean([r["motion"] for r in rows if r["noise"] == name])
        print(f"{name:28s} motion {m:6.2f}  ratio to independent {m / base:.2f}")
    return rows


def run_control(mav, args) -> list[dict]:
    from mav_core.inference import WindowOptions
    from mav_core.io.loader import load_model
    from mav_core.models import family
    from test_windows_control import control_iou_with_windows
    adapter = load_model(family.WEIGHTS_DIR / "control_canny.safetensors", expect_stage="control").module
    rows = []
    for loop in (False, True) if args.loop else (False,):
        res = control_iou_with_windows(mav, adapter, args.seeds, args.frames,
                                       WindowOptions(args.window, args.overlap, loop=loop), args.steps)
        with_c, without = res["per_clip"]["with_control"], res["per_clip"]["without_control"]
        rows.append({"windows": f"{args.window}/{args.overlap}{' loop' if loop else ''}",
                     "iou_with_control": res["with_control"], "iou_without_control": res["without_control"],
                     "clips_better_with_control": f"{sum(a > b for a, b in zip(with_c, without))}/{len(with_c)}"})
        print(table([rows[-1]], list(rows[-1])), flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("loop", "noise", "control"))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--window", type=int, default=0, help="loop: 0 = the whole clip as one window")
    p.add_argument("--overlap", type=int, default=None)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--loop", action="store_true", help="control: also measure the windows as a closed loop")
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from mav_core.inference.pipeline import MakeAVideo
    mav = MakeAVideo.load()
    with torch.no_grad():
        rows = {"loop": run_loop, "noise": run_noise, "control": run_control}[args.what](mav, args)
    result = {"machine": machine_info(args.threads), "args": vars(args), "rows": rows}
    print(f"wrote {write_json(result, 'sampling_options_' + args.what, args.out)}")


if __name__ == "__main__":
    main()
