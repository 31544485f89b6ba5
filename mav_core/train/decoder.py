"""Stages 3-5 of the recipe, all on the same SpaceTimeUNet:

  decoder        D on captioned images: conditioned on the frozen image encoder's embedding of the
                 image and the caption's text tokens, each dropped 10% of the time (guidance);
  decoder_video  D^t: D inflated (identity temporal layers), only temporal layers trained, on
                 UNLABELED clips (world motion + real clips) with fps conditioning; no captions;
  interpolator   ↑F: D^t (or D inflated, --init decoder) with masked frames + mask as 4 extra input
                 channels (zero-initialised input weights), trained on random interpolation /
                 extrapolation masks. --objective regression: a one-pass interpolator instead (the residual
                 ↑F's estimate from no noise, trained with a per-frame PSNR loss on interpolation masks).
"""
from __future__ import annotations

import torch

from ..models import family
from ..io.checkpoints import load_state_dict, save_model
from ..io.loader import load_model
from ..data.world import CaptionedImages, WorldClips
from ..diffusion.denoiser import Denoiser
from ..diffusion.loss import psnr_loss
from ..inference.frame_masks import (guess_condition, masked_condition, random_interpolation_mask, random_training_mask)
from ..inference import is_regression
from ..models.unet import SpaceTimeUNet, is_temporal_key
from .common import (Mixed, StreamBatches, add_common_arguments, frozen_text_encoder, real_clip_stream,
                     settings_from_args, shard_diffusion_loss)
from .loop import Shard, train_loop

DROP = 0.1


def _null_text(enc, b):
    tokens, _ = enc.encode_text([""] * b)
    return tokens


def _drop(gen, shard: Shard, p=DROP):
    """The shard's part of the conditioning dropout of the whole batch."""
    return shard.take(torch.rand(shard.batch_size, generator=gen) < p)


def _regression_loss(model, video, fps, enc, gen, scale: float, shard: Shard | None = None):
    """Regression ↑F: the unknown frames of a random interpolation mask estimated in one pass (x = 0 at the
    largest noise level, no text or image conditioning) as the known frames' blend plus the network's
    correction / scale, scored by the per-frame PSNR loss. With a shard, video holds the shard's
    examples: the masks are drawn for the whole batch and the loss is the shard's part of its mean."""
    shard = shard or Shard(video.shape[0])
    b, f = video.shape[0], video.shape[2]
    unknown = ~torch.stack([random_interpolation_mask(f, gen) for _ in range(shard.batch_size)])
    mask = ~shard.take(unknown)
    extra = guess_condition(video, mask)
    den = Denoiser(model, family.SCHEDULE, family.PREDICTION)
    cond = dict(context=_null_text(enc, b), image_embed=video.new_zeros(b, enc.config.embed_dim),
                fps=fps.float(), extra=extra)
    x0 = den.estimate_from_nothing(video, **cond)
    weight = shard.weight(int((~mask).sum()), int(unknown.sum()))
    return psnr_loss(extra[:, :-1] + x0.float() / scale, video, ~mask) * weight


def add_arguments(p, stage: str):
    defaults = {"decoder": (9000, 24, 4e-4), "decoder_video": (500, 2, 2e-4), "interpolator": (500, 2, 1e-4)}[stage]
    add_common_arguments(p, *defaults)
    p.add_argument("--frames", type=int, default=17 if stage == "interpolator" else family.FRAMES)
    if stage == "decoder":
        p.set_defaults(ema=0.999)   # the shipped D is the EMA of its weights
        p.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-gamma loss weighting (0: plain loss)")
        p.add_argument("--max-angle", type=float, default=15.0,
                       help="captioned images show objects turned by at most this many degrees (180: any): "
                            "near-upright stills make shapes learnable in a CPU budget; rotation comes from video")
    if stage == "decoder_video":
        p.add_argument("--temporal-from", default=None,
                       help="start the temporal layers from this D^t (or motion) file instead of the identity, "
                            "e.g. to adapt trained temporal layers to a D that was trained further")
    if stage in ("decoder_video", "interpolator"):
        p.add_argument("--real-share", type=float, default=0.7 if stage == "interpolator" else 0.3,
                       help="share of batches drawn from the real clips when they are present (rest: rendered world)")
    if stage == "interpolator":
        p.set_defaults(ema=0.999)
        p.add_argument("--init", choices=("decoder_video", "decoder"), default="decoder_video",
                       help="start from D^t (the paper's recipe) or from D inflated (lets ↑F train beside D^t)")
        p.add_argument("--init-from", default=None,
                       help="start from this ↑F checkpoint instead (continue training a shipped interpolator)")
        p.add_argument("--objective", choices=("diffusion", "regression"), default="diffusion",
                       help="diffusion: the paper's ↑F (sampled; interpolates and extrapolates). regression: one-pass "
                            "interpolation trained with a per-frame PSNR loss on interpolation masks (needs "
                            "--residual-scale; deterministic; cannot extrapolate)")
        p.add_argument("--residual-scale", type=float, default=0.0,
                       help="condition on the linear-blend guess of the unknown frames and diffuse (frames - guess) "
                            "times this (0: the masked frames with zeros, diffusing the frames themselves)")


def run(args, stage: str):
    regression = stage == "interpolator" and args.objective == "regression"
    if regression and not args.residual_scale:
        raise ValueError("--objective regression needs --residual-scale (e.g. 4): the one-pass estimate is a "
                         "correction of the known frames' blend")
    settings = settings_from_args(args)
    torch.manual_seed(args.seed)   # the initial weights
    enc = frozen_text_encoder(args.out)
    text_width, embed_dim = enc.config.width, enc.config.embed_dim
    out = f"{args.out}/{stage}.safetensors"
    seed = args.seed * 100
    continuing = False

    if stage == "decoder":
        model = SpaceTimeUNet(family.decoder_config(text_width, embed_dim))
        params = list(model.parameters())
        data = StreamBatches(CaptionedImages(size=family.BASE_SIZE, seed=seed, max_angle=args.max_angle),
                             args.batch_size)

        def loss_fn(step, gen, shard):
            images, captions = data(step, shard)
            b = images.shape[0]
            with torch.no_grad():
                tokens, _ = enc.encode_text(list(captions))
                embed = enc.encode_image(images)
                drop_t, drop_i = _drop(gen, shard), _drop(gen, shard)
                tokens = torch.where(drop_t[:, None, None], _null_text(enc, b), tokens)
                embed = torch.where(drop_i[:, None], torch.zeros_like(embed), embed)
            return shard_diffusion_loss(model, images, family.SCHEDULE, family.PREDICTION, gen, shard,
                                        context=tokens, image_embed=embed, min_snr_gamma=args.min_snr)
    else:
        if stage == "decoder_video":
            src = load_model(f"{args.out}/decoder.safetensors", expect_stage=("decoder", "decoder_image")).module
            model = SpaceTimeUNet(src.config)
            model.load_state_dict(src.state_dict())  # identity temporal layers: starts as D frame by frame
            if args.temporal_from:
                temporal, _ = load_state_dict(args.temporal_from)
                temporal = {k: v.float() for k, v in temporal.items() if is_temporal_key(k)}
                missing = [k for k in model.state_dict() if is_temporal_key(k) and k not in temporal]
                if missing:
                    raise ValueError(f"--temporal-from {args.temporal_from}: no {missing[0]} "
                                     f"(and {len(missing) - 1} more temporal keys)")
                model.load_state_dict(temporal, strict=False)
            model.requires_grad_(False)
            params = model.temporal_parameters()
            for p_ in params:
                p_.requires_grad_(True)
        elif args.init_from:
            model = SpaceTimeUNet(family.interpolator_config(text_width, embed_dim))
            src = load_model(args.init_from, expect_stage="interpolator")
            model.load_state_dict(src.module.state_dict())
            params = list(model.parameters())
            continuing = regression and is_regression(src)
        else:
            src = load_model(f"{args.out}/{args.init}.safetensors", expect_stage="decoder").module
            model = SpaceTimeUNet(family.interpolator_config(text_width, embed_dim))
            sd = src.state_dict()
            w = sd["conv_in.weight"]
            sd["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], 4, *w.shape[2:])], dim=1)
            model.load_state_dict(sd)
            params = list(model.parameters())
        if regression and not continuing:   # a zero correction: training starts exactly at the known frames' blend
            torch.nn.init.zeros_(model.conv_out.weight)
            torch.nn.init.zeros_(model.conv_out.bias)
        world_clips = StreamBatches(WorldClips(num_frames=args.frames, size=family.BASE_SIZE, seed=seed), args.batch_size)
        real = real_clip_stream(args.clips, args.frames, family.BASE_SIZE, args.batch_size, seed)
        data = Mixed((world_clips, 1 - args.real_share), (real, args.real_share), seed=seed) if real else world_clips

        def loss_fn(step, gen, shard):
            clips, fps = data(step, shard)
            video = clips.permute(0, 2, 1, 3, 4).float()  # [B, C, F, H, W]
            b, f = video.shape[0], video.shape[2]
            if regression:
                return _regression_loss(model, video, fps, enc, gen, args.residual_scale, shard)
            with torch.no_grad():
                embed = enc.encode_image(video[:, :, f // 2])
                embed = torch.where(_drop(gen, shard)[:, None], torch.zeros_like(embed), embed)
                tokens = _null_text(enc, b)
            cond = dict(context=tokens, image_embed=embed, fps=fps.float())
            target = video
            if stage == "interpolator":
                masks = torch.stack([random_training_mask(f, gen) for _ in range(shard.batch_size)])
                mask = shard.take(masks)
                if args.residual_scale:
                    cond["extra"] = guess_condition(video, mask)
                    target = (video - cond["extra"][:, :-1]) * args.residual_scale
                else:
                    cond["extra"] = masked_condition(video, mask)
                # known frames are copied into the output: the loss is on the generated frames only (the
                # mask of the whole batch: the loss is normalised by its count)
                cond["loss_mask"] = (~masks).float().reshape(shard.batch_size, 1, f, 1, 1)
            return shard_diffusion_loss(model, target, family.SCHEDULE, family.PREDICTION, gen, shard, **cond)

    meta = {"mav_recipe_stage": stage}
    if stage == "interpolator" and args.residual_scale:
        meta["mav_interp_residual_scale"] = args.residual_scale
    if regression:
        meta["mav_interp_estimate"] = "regression"

    def on_save(m):
        save_model(out, m, "decoder" if stage != "interpolator" else "interpolator", family.SCHEDULE,
                   family.PREDICTION, extra=meta)

    train_loop(stage, model, params, loss_fn, settings, on_save)
    return out
