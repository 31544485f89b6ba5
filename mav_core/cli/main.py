"""python -m mav_core {info, init, generate, train, eval}."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ..io.checkpoints import save_model
from ..io.loader import load_model
from ..models import family
from ..models.prior import DiffusionPrior, PriorConfig
from ..models.text import TextImageConfig, TextImageEncoder
from ..models.unet import SpaceTimeUNet
from ..train import control as train_control
from ..train import decoder as train_decoder
from ..train import flow_interp as train_flow_interp
from ..train import prior as train_prior
from ..train import sr as train_sr
from ..train import temporal as train_temporal
from ..train import text as train_text
from ..train.loop import dist_info
from .eval import add_eval_arguments, main_eval
from .generate import add_generate_arguments, main_generate

TRAIN_STAGES = {  # stage -> (recipe module, the stage argument its add_arguments/run take, if any)
    "text": (train_text, None), "prior": (train_prior, None),
    "decoder": (train_decoder, "decoder"), "decoder_video": (train_decoder, "decoder_video"),
    "interpolator": (train_decoder, "interpolator"),
    "sr_video": (train_sr, "sr_video"), "sr_frame": (train_sr, "sr_frame"),
    "control": (train_control, None), "temporal": (train_temporal, None),
    "flow_interp": (train_flow_interp, None),
}


def cmd_info(args):
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
    torch.manual_seed(args.seed)
    out = Path(args.out)
    extra = {"mav_untrained": "1"}
    cfgs = {"decoder": family.decoder_config(), "interpolator": family.interpolator_config(),
            "sr_video": family.sr_config(True), "sr_frame": family.sr_config(False)}
    for stage, cfg in cfgs.items():
        save_model(out / family.STAGE_FILES[stage], SpaceTimeUNet(cfg), stage, family.SCHEDULE, family.PREDICTION, extra)
    save_model(out / family.STAGE_FILES["text"], TextImageEncoder(TextImageConfig(vocab=train_text.world_vocab())), "text", extra=extra)
    prior = DiffusionPrior(PriorConfig())
    save_model(out / family.STAGE_FILES["prior"], prior, "prior", prior.config.noise_schedule(),
               prior.config.prediction, extra=extra)
    print(f"wrote untrained MAV-Tiny-layout checkpoints to {out}")
    return 0


def cmd_train(args):
    mod, stage_arg = TRAIN_STAGES[args.stage]
    p = argparse.ArgumentParser(prog=f"python -m mav_core train {args.stage}")
    if stage_arg:
        mod.add_arguments(p, stage_arg)
        out = mod.run(p.parse_args(args.rest), stage_arg)
    else:
        mod.add_arguments(p)
        out = mod.run(p.parse_args(args.rest))
    if dist_info()[0] == 0:  # under torchrun, every rank returns the same path: one line
        print(f"wrote {out}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse with every usage error on one line ("error: argument --quality: invalid int value: 'x'"),
    exit status 2; --help still prints the usage."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: " + " ".join(message.split()) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mav_core", description="Make-A-Video core: inspect, train, generate")
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
    s = sub.add_parser("generate", help="text -> video file through the whole chain")
    add_generate_arguments(s)
    s.set_defaults(fn=main_generate)
    s = sub.add_parser("eval", help="measure text alignment, consistency and motion on held-out prompts")
    add_eval_arguments(s)
    s.set_defaults(fn=main_eval)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError, MemoryError, FloatingPointError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)   # one line
        return 2
