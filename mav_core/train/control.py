"""The control adapter recipe: a ControlAdapter for the frozen MAV-Tiny decoder, trained on captioned
world images and their hints (kornia Canny edges by default, or object masks), with the text and
image-embedding conditioning dropped now and then so the hint alone carries layout.

The image embedding given with each image is that of the same object rendered elsewhere (another
place, angle and scale): at inference the embedding comes from the prior and says nothing about where
the hint puts the object, so in training it must not either, or the adapter learns to lean on it."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..models import family
from ..io.checkpoints import save_model
from ..io.loader import load_model
from ..models.control import ControlAdapter, ControlConfig, ControlledUNet, Control, make_hint
from ..data.world import CaptionedImages, relocate, render_scenes, to_tensor
from ..diffusion.loss import diffusion_loss
from .common import add_common_arguments, frozen_text_encoder, settings_from_args
from .loop import maybe_init_distributed, train_loop


def add_arguments(p):
    add_common_arguments(p, 1000, 16, 5e-4)
    p.add_argument("--kind", choices=("canny", "mask"), default="canny")
    p.add_argument("--decoder", default=None, help="decoder checkpoint (default <out>/decoder.safetensors)")


def run(args):
    rank, world = maybe_init_distributed()
    settings = settings_from_args(args)
    enc = frozen_text_encoder(args.out)
    dec = load_model(args.decoder or f"{args.out}/decoder.safetensors", expect_stage="decoder").module
    dec.requires_grad_(False)
    adapter = ControlAdapter(ControlConfig.for_unet(dec.config, kind=args.kind))
    net = ControlledUNet(dec)
    stream = iter(CaptionedImages(size=family.BASE_SIZE, seed=args.seed * 100 + rank + 11, with_scene=True))
    elsewhere = np.random.default_rng(args.seed * 100 + rank + 12)
    out = f"{args.out}/control_{args.kind}.safetensors"

    def loss_fn(step, gen):
        images, captions, scenes = zip(*itertools.islice(stream, args.batch_size))
        images, b = torch.stack(images), len(images)
        video = images[:, :, None]   # one-frame clips: the adapter works per frame
        with torch.no_grad():
            tokens, _ = enc.encode_text(list(captions))
            moved = render_scenes([relocate(sc, elsewhere) for sc in scenes], family.BASE_SIZE)
            embed = enc.encode_image(to_tensor(moved))
            drop = torch.rand(b, generator=gen) < 0.3
            tokens = torch.where(drop[:, None, None], enc.encode_text([""] * b)[0], tokens)
            embed = torch.where(drop[:, None], torch.zeros_like(embed), embed)
            hint = make_hint(video, args.kind)
        control = Control(adapter, hint)
        return diffusion_loss(lambda x, t, **c: net(x, t, controls=[control], temporal=False, **c), video,
                              family.SCHEDULE, family.PREDICTION, generator=gen, context=tokens, image_embed=embed)

    def on_save(m):
        save_model(out, m, "control", extra={"mav_control_kind": args.kind})

    train_loop("control", adapter, list(adapter.parameters()), loss_fn, settings, on_save)
    return out
