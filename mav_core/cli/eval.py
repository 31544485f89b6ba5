"""`python -m mav_core eval`: the MAV-Tiny numbers, measured (text to video on held-out prompts, ↑F on
held-out real clips, and with --apps the paper's applications)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.world import heldout_prompts
from ..eval.apps import eval_animation, eval_control, eval_two_image, eval_variations
from ..eval.interpolation import (FlowTableOptions, eval_flow_interpolation, eval_interpolation, flow_table_methods,
                                  print_flow_table)
from ..eval.metrics import summarize
from ..eval.text_to_video import eval_text_to_video, reference_motion
from ..inference.pipeline import MakeAVideo
from ..io.loader import load_model
from ..models import family
from ..models.flow_fusion import FLOW_INTERPOLATOR_FILE


def add_eval_arguments(p):
    p.add_argument("--weights", default=None, help="folder of stage checkpoints (default: the shipped MAV-Tiny)")
    p.add_argument("--videos", type=int, default=30)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", default="data/clips", help="real clips folder for the ↑F comparison ('' to skip)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--apps", action="store_true", help="also measure animation, two-image interpolation, "
                   "variations and control")
    p.add_argument("--skip-interp", action="store_true", help="skip the 32x32 ↑F comparison on real clips (the size "
                   "table runs unless --interp-sizes '')")
    p.add_argument("--interp-windows", type=int, default=20, help="moving held-out windows of the ↑F size table")
    p.add_argument("--interp-sizes", default="64,128,256", help="sizes of the ↑F table ('' to skip the table)")
    p.add_argument("--diffusion-sizes", default="64,128", help="sizes of the table at which the diffusion ↑F runs")
    p.add_argument("--diffusion-multipliers", default="2,4", help="multipliers at which the diffusion ↑F runs")
    p.add_argument("--diffusion-windows", type=int, default=None, help="windows the diffusion ↑F runs on in the "
                   "table (default: all; minutes a window on a CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cfg", type=float, default=4.0, help="decoder guidance scale")


def main_eval(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mav = MakeAVideo.load(args.weights, interpolator="diffusion")   # the paper's ↑F: scored and used by --apps
    prompts = heldout_prompts()[: args.videos]
    t0 = time.perf_counter()
    report = {"prompts": len(prompts), "heldout_prompts": prompts}
    if prompts:
        scores = eval_text_to_video(mav, prompts, args.steps, args.seed, cfg=args.cfg)
        video, image, ref = summarize(scores["video"]), summarize(scores["image"]), summarize(reference_motion())
        report.update({"video_model": video, "image_model": image, "training_clips": ref})
        print(f"held-out prompts: {len(prompts)} (colour/shape pairs never captioned in training)")
        print(f"{'':24}{'align':>8}{'colour':>8}{'shape':>8}{'consist':>9}{'moving':>8}{'px/frame':>10}{'jerk':>8}")
        for name, r in (("video model (D^t)", video), ("image model (D)", image), ("rendered training clips", ref)):
            print(f"{name:24}{r['alignment']:8.2f}{r['colour']:8.2f}{r['shape']:8.2f}{r['consistency']:9.2f}"
                  f"{r['moving']:8.2f}{r['step_px']:10.2f}{r['jerk_px']:8.2f}")
    regression = None
    reg_path = Path(args.weights or family.WEIGHTS_DIR) / family.REGRESSION_INTERPOLATOR_FILE
    if reg_path.exists() and args.clips and not args.skip_interp:
        regression = load_model(reg_path, expect_stage="interpolator")
    interp = eval_interpolation(mav, args.clips, regression=regression) if args.clips and not args.skip_interp else None
    report["interpolation"] = interp
    if interp:
        print("\n↑F on held-out real clips (every other frame dropped and restored, 32x32):")
        print(f"{'method':20}{'PSNR dB':>9}{'SSIM':>8}{'frames/s':>10}")
        for name, r in interp.items():
            print(f"{name:20}{r['psnr']:9.2f}{r['ssim']:8.3f}{r['frames_per_second']:10.1f}")
    if args.clips and args.interp_sizes:
        flow_path = Path(args.weights or family.WEIGHTS_DIR) / FLOW_INTERPOLATOR_FILE
        flow_model = load_model(flow_path, expect_stage="interpolator") if flow_path.exists() else None
        sizes = tuple(int(v) for v in args.interp_sizes.split(","))
        diffusion = tuple(int(v) for v in args.diffusion_sizes.split(",") if v)
        diffusion_m = tuple(int(v) for v in args.diffusion_multipliers.split(",") if v)
        table = eval_flow_interpolation(flow_table_methods(mav, flow_model, seed=args.seed), args.clips,
                                        FlowTableOptions(windows=args.interp_windows, sizes=sizes,
                                                         diffusion_sizes=diffusion, seed=args.seed,
                                                         diffusion_multipliers=diffusion_m,
                                                         diffusion_windows=args.diffusion_windows),
                                        diffusion={"mav_diffusion_interpolator"})
        report["interpolation_table"] = table
        print_flow_table(table)
    report["seconds"] = time.perf_counter() - t0
    if args.apps:
        apps = {"image_animation": eval_animation(mav, seed=args.seed),
                "two_image_interpolation": eval_two_image(mav, seed=args.seed),
                "video_variation": eval_variations(mav, seed=args.seed)}
        control_path = Path(args.weights or family.WEIGHTS_DIR) / family.CONTROL_FILES["canny"]
        if control_path.exists():
            apps["control_canny"] = eval_control(mav, control_path, seed=args.seed)
        report["applications"] = apps
        print("\napplications (rendered held-out scenes, 32x32):")
        for name, r in apps.items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
