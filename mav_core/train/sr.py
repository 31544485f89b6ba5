"""Stage 6 of the recipe: the two super-resolution models, conditioned on the upsampled low-res input.

  sr_video  SR^t_l: spatiotemporal x2 (32 -> 64) on 8-frame clips of the world and real clips;
  sr_frame  SR_h: per-frame x2 (64 -> 128), an image model; at inference every frame gets the same
            noise.
Both train on random crops (--crop, default 32) of the full-size frames: the networks are
convolutional, so they run on whole frames at inference.
By default the models diffuse the residual (high-res minus the bilinearly upsampled low-res, scaled
by --residual-scale): the upsampling is the starting point and the model adds only what it misses.
The low-res conditioning is degraded a little (blur / noise augmentation) so the models tolerate the
previous stage's imperfect output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import family
from ..io.checkpoints import save_model
from ..data.world import WorldClips
from ..models.unet import SpaceTimeUNet
from .common import Mixed, StreamBatches, add_common_arguments, real_clip_stream, settings_from_args, shard_diffusion_loss
from .loop import Shard, train_loop


def add_arguments(p, stage: str):
    add_common_arguments(p, *{"sr_video": (300, 2, 5e-4), "sr_frame": (300, 8, 5e-4)}[stage])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--residual-scale", type=float, default=4.0,
                   help="diffuse the scaled residual (high-res - upsampled low-res) instead of the frame; 0 = frame")
    p.add_argument("--crop", type=int, default=32, help="train on random crops of this size (the network is convolutional)")


def low_res_condition(hi: torch.Tensor, gen: torch.Generator | None = None, aug: float = 0.0,
                      shard: Shard | None = None) -> torch.Tensor:
    """The x2-downsampled, re-upsampled version of hi ([N, C, H, W]), optionally noised. With a shard, hi
    holds this rank's rows of the global batch and the noise is drawn for the whole batch and cut."""
    lo = F.interpolate(hi, scale_factor=0.5, mode="area")
    if aug > 0:
        shard = shard or Shard(len(lo))
        rows = shard.batch_size * (len(lo) // shard.size)
        scale = shard.take(torch.rand((rows, 1, 1, 1), generator=gen))
        lo = lo + aug * scale * shard.take(torch.randn((rows, *lo.shape[1:]), generator=gen))
    return F.interpolate(lo, scale_factor=2.0, mode="bilinear", align_corners=False)


def run(args, stage: str):
    settings = settings_from_args(args)
    torch.manual_seed(args.seed)   # the initial weights
    seed = args.seed * 100 + 7
    video = stage == "sr_video"
    hi_size = 64 if video else 128
    frames = args.frames if video else 2
    model = SpaceTimeUNet(family.sr_config(video))
    world_clips = StreamBatches(WorldClips(num_frames=frames, size=hi_size, seed=seed), args.batch_size)
    real = real_clip_stream(args.clips, frames, hi_size, args.batch_size, seed)
    data = Mixed((world_clips, 0.5), (real, 0.5), seed=seed) if real else world_clips
    out = f"{args.out}/{stage}.safetensors"

    def loss_fn(step, gen, shard):
        clips, _ = data(step, shard)
        clips = clips.float()
        b, f = clips.shape[:2]
        hi = clips.flatten(0, 1)
        cond = low_res_condition(hi, gen, aug=0.05, shard=shard)
        c = min(args.crop, hi_size)
        i, j = (int(v) * 2 for v in torch.randint(0, (hi_size - c) // 2 + 1, (2,), generator=gen))
        hi, cond = hi[..., i:i + c, j:j + c], cond[..., i:i + c, j:j + c]
        if video:
            x = hi.reshape(b, f, 3, c, c).permute(0, 2, 1, 3, 4)
            extra = cond.reshape(b, f, 3, c, c).permute(0, 2, 1, 3, 4)
        else:
            x, extra = hi, cond
        if args.residual_scale:
            x = (x - extra) * args.residual_scale   # what the upsampling misses, at about unit scale
        return shard_diffusion_loss(model, x, family.SCHEDULE, family.PREDICTION, gen, shard, extra=extra)

    def on_save(m):
        save_model(out, m, stage, family.SCHEDULE, family.PREDICTION,
                   extra={"mav_sr_residual_scale": args.residual_scale} if args.residual_scale else None)

    train_loop(stage, model, params=list(model.parameters()), loss_fn=loss_fn, settings=settings, on_save=on_save)
    return out
