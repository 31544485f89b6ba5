"""python -m mav_core {info, init, generate, train, eval}."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

TRAIN_STAGES = {  # stage -> (module, how its add_arguments/run are called)
    "text": ("text", None), "prior": ("prior", None),
    "decoder": ("decoder", "decoder"), "decoder_video": ("decoder", "decoder_video"),
    "interpolator": ("decoder", "interpolator"),
    "sr_video": ("sr", "sr_video"), "sr_frame": ("sr", "sr_frame"),
    "control": ("control", None), "temporal": ("temporal", None),
}


def cmd_info(args):
    from ..io.loader import load_model
    loaded = load_model(args.checkpoint)
    print(f"file:       {loaded.path}")
    print(f"family:     {loaded.family}")
    print(f"stage:      {loaded.stage}")
    print(f"module:     {type(loaded.module).__name__}")
    print(f"parameters: {loaded.num_parameters():,}")
    if loaded.schedule is not None:
        print(f"schedule:   {json.dumps(loaded.schedule.to_dict())}  prediction: {loaded.prediction}")
    if loaded.metadata.get("mav_untrained") == "1":
        print("NOTE:       randomly initialised, untrained weights")
    print("config:")
    for k, v in asdict(loaded.config).items():
        print(f"  {k}: {v}")
    return 0


def cmd_init(args):
    """Write randomly initialised (untrained) checkpoints of the MAV-Tiny layout: for tests and demos."""
    import torch
    from ..models import family
    from ..io.checkpoints import save_model
    from ..models.unet import SpaceTimeUNet
    torch.manual_seed(args.seed)
    out = Path(args.out)
    extra = {"mav_untrained": "1"}
    cfgs = {"decoder": family.decoder_config(), "interpolator": family.interpolator_config(),
            "sr_video": family.sr_config(True), "sr_frame": family.sr_config(False)}
    for stage, cfg in cfgs.items():
        save_model(out / family.STAGE_FILES[stage], SpaceTimeUNet(cfg), stage, family.SCHEDULE, family.PREDICTION, extra)
    from ..models.prior import DiffusionPrior, PriorConfig
    from ..models.text import TextImageConfig, TextImageEncoder
    from ..train.text import world_vocab
    save_model(out / family.STAGE_FILES["text"], TextImageEncoder(TextImageConfig(vocab=world_vocab())), "text", extra=extra)
    prior = DiffusionPrior(PriorConfig())
    save_model(out / family.STAGE_FILES["prior"], prior, "prior", prior.config.noise_schedule(),
               prior.config.prediction, extra=extra)
    print(f"wrote untrained MAV-Tiny-layout checkpoints to {out}")
    return 0


def cmd_train(args):
    module_name, stage_arg = TRAIN_STAGES[args.stage]
    mod = importlib.import_module(f"..train.{module_name}", __package__)
    p = argparse.ArgumentParser(prog=f"python -m mav_core train {args.stage}")
    if stage_arg:
        mod.add_arguments(p, stage_arg)
        out = mod.run(p.parse_args(args.rest), stage_arg)
    else:
        mod.add_arguments(p)
        out = mod.run(p.parse_args(args.rest))
    print(f"wrote {out}")
    return 0


def cmd_generate(args):
    from .generate import main_generate
    return main_generate(args)


def cmd_eval(args):
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from ..eval.evaluate import main_eval
    return main_eval(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mav_core", description="Make-A-Video core: inspect, train, generate")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="print a checkpoint's family, stage, config and parameter count")
    s.add_argument("checkpoint")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("init", help="write randomly initialised MAV-Tiny-layout checkpoints (untrained)")
    s.add_argument("--out", default="runs/untrained")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_init)
    s = sub.add_parser("train", help="train one stage of the recipe", add_help=False)
    s.add_argument("stage", choices=sorted(TRAIN_STAGES))
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_train)
    from .generate import add_generate_arguments
    s = sub.add_parser("generate", help="text -> video file through the whole chain")
    add_generate_arguments(s)
    s.set_defaults(fn=cmd_generate)
    s = sub.add_parser("eval", help="measure text alignment, consistency and motion on held-out prompts")
    s.add_argument("--weights", default=None, help="folder of stage checkpoints (default: the shipped MAV-Tiny)")
    s.add_argument("--videos", type=int, default=30)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--clips", default="data/clips", help="real clips folder for the ↑F comparison ('' to skip)")
    s.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    s.add_argument("--apps", action="store_true", help="also measure animation, two-image interpolation, "
                   "variations and control")
    s.add_argument("--skip-interp", action="store_true", help="skip the ↑F comparison on real clips")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    s.add_argument("--cfg", type=float, default=4.0, help="decoder guidance scale")
    s.set_defaults(fn=cmd_eval)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
