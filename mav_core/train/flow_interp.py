"""The motion-compensated ↑F's fusion network, trained on real clips:

  python -m mav_core train flow_interp --steps 2400 --batch-size 8 --ema 0.999 --out runs/flow-interp

Each example: a random window of 9 frames of a real training clip (random shot, stride 1 or 2, random
square crop of 60-100% of the short side, resized to a random side of 64, 96 or 128), a
random gap g in (2, 4, 8) between the two known frames and a random in-between frame k/g, both time
directions (the pair swapped, t -> 1 - t), random horizontal flips and a random gain / offset shared by
the three frames. Optical flow is estimated on the known frames as at inference (inference/flow.py: the
main DIS estimate and the --flow-variants ones), both are warped to t, and the network (zero-initialised
head: it starts at the flow-warped average) learns to fuse them; the loss is the Charbonnier distance to
the true frame. Resumable, seeded, tqdm progress and
torchrun-ready through train.loop; writes <out>/flow_interpolator.safetensors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..data.clips import RealClips
from ..data.world import to_tensor
from ..inference.flow import FLOW_VARIANTS, WARPS, FlowOptions, estimate_flow_set, fusion_inputs, warp_set
from ..inference.interpolate import flow_options
from ..errors import check_int
from ..io.checkpoints import save_model
from ..io.loader import load_model
from ..models.flow_fusion import FLOW_INTERPOLATOR_FILE, FlowFusionConfig, FlowFusionNet
from .common import StreamBatches, add_common_arguments, settings_from_args
from .loop import train_loop

GAPS = (2, 4, 8)
SIDES = (64, 96, 128)
WINDOW = 9


def add_arguments(p):
    add_common_arguments(p, 2400, 8, 2e-3)
    p.set_defaults(out="runs/flow-interp", save_every=200)
    p.add_argument("--flow-preset", default="medium", choices=("ultrafast", "fast", "medium"))
    p.add_argument("--flow-warp", default="linear", choices=WARPS)
    p.add_argument("--flow-variants", default="patch4,ultrafast_x2",
                   help=f"extra DIS estimates averaged with the main one, comma-separated names from "
                        f"{', '.join(FLOW_VARIANTS)} ('' for none)")
    p.add_argument("--widths", default="12,24,32", help="fusion channels at 1, 1/2, 1/4 resolution")
    p.add_argument("--sides", default=",".join(map(str, SIDES)), help="square crop sides examples are resized to")
    p.add_argument("--init", default=None, help="a flow_interpolator file to start from (its widths and flow "
                   "settings are kept; default: the zero-head net, the flow-warped average)")


class FlowTriplets:
    """Endless (frame0, frame1, truth, t) examples from real training clips (see the module docstring);
    draws() are the cheap random choices, make(draw) decodes, crops and estimates the flow."""

    def __init__(self, folder, seed: int, flow: FlowOptions, sides: tuple = SIDES):
        self.sides = tuple(sides)
        self.clips = RealClips(folder, num_frames=WINDOW, size=max(self.sides), seed=seed, split="train",
                               strides=(1, 2))
        self.rng = np.random.default_rng(seed + 1)
        self.flow = flow

    def draws(self):
        for clip_draw in self.clips.draws():
            gap = int(self.rng.choice(GAPS))
            yield (clip_draw, gap, int(self.rng.integers(1, gap)), int(self.rng.integers(0, WINDOW - gap)),
                   int(self.rng.choice(self.sides)), bool(self.rng.integers(2)), bool(self.rng.integers(2)),
                   float(self.rng.uniform(0.8, 1.2)), float(self.rng.uniform(-0.1, 0.1)))

    def make(self, draw):
        (info, start, stride, y0, x0, crop), gap, k, first, side, reverse, flip, gain, offset = draw
        frames, _, _ = self.clips._frames(info)                       # decoded once, cached
        picked = frames[[start + stride * j for j in (first, first + k, first + gap)], y0:y0 + crop, x0:x0 + crop]
        interp = cv2.INTER_AREA if crop >= side else cv2.INTER_LINEAR
        frames = to_tensor(np.stack([cv2.resize(f, (side, side), interpolation=interp) for f in picked]))
        if flip:
            frames = frames.flip(-1)
        frames = ((frames + 1) * gain - 1 + offset).clamp(-1, 1)
        t = k / gap
        if reverse:
            frames, t = frames.flip(0), 1 - t
        f0, truth, f1 = frames[0:1], frames[1:2], frames[2:3]
        pair = warp_set(f0, f1, estimate_flow_set(f0, f1, self.flow), t, self.flow)
        features, average, difference = fusion_inputs(pair, f0, f1, t)
        return features[0], average[0], difference[0], truth[0]


def _collate_by_side(items):
    """Examples of one batch share a side: every item is resized to the batch's first side."""
    side = items[0][0].shape[-1]
    fix = lambda x: x if x.shape[-1] == side else F.interpolate(x[None], size=(side, side), mode="bilinear",  # noqa: E731
                                                                align_corners=False)[0]
    return [torch.stack([fix(item[i]) for item in items]) for i in range(4)]


def run(args) -> str:
    settings = settings_from_args(args, warmup=50)
    widths = tuple(int(w) for w in args.widths.split(","))
    torch.manual_seed(args.seed)
    variants = tuple(v for v in args.flow_variants.split(",") if v)
    config = FlowFusionConfig(widths=widths, flow_preset=args.flow_preset, flow_warp=args.flow_warp,
                              flow_variants=variants)
    start = load_model(args.init, expect_stage="interpolator").module.float() if args.init else None
    if start is not None:
        if not isinstance(start, FlowFusionNet):
            raise ValueError(f"--init {args.init}: not a flow_interpolator file")
        config = start.config
    sides = tuple(int(v) for v in args.sides.split(","))
    for side in sides:
        check_int("sides", side, 32, 1024)
    net = start if start is not None else FlowFusionNet(config)
    flow = flow_options(net)
    if not (Path(args.clips) / "manifest.json").exists():
        raise FileNotFoundError(f"--clips {args.clips}: no manifest.json (run scripts/fetch_clips.py first)")
    data = StreamBatches(FlowTriplets(args.clips, args.seed * 100, flow, sides), args.batch_size,
                         collate=_collate_by_side)

    def loss_fn(step, gen, shard):
        features, average, difference, truth = data(step, shard)
        pred = net(features, average, difference)
        return torch.sqrt((pred - truth).square() + 1e-6).mean()

    out = Path(args.out) / FLOW_INTERPOLATOR_FILE

    def on_save(model):
        save_model(out, model, "interpolator", extra={"mav_recipe_stage": "flow_interp", "mav_steps": args.steps,
                                                      "mav_batch_size": args.batch_size})

    train_loop("flow_interp", net, list(net.parameters()), loss_fn, settings, on_save)
    return str(out)
