"""The control adapter recipe: a ControlAdapter for the frozen MAV-Tiny decoder, trained on captioned
world images and their hints (kornia Canny edges by default, or object masks), with the text and
image-embedding conditioning dropped now and then so the hint alone carries layout.

The image embedding given with each image is that of the same object rendered elsewhere (another
place, angle and scale): at inference the embedding comes from the prior and says nothing about where
the hint puts the object, so in training it must not either, or the adapter learns to lean on it. The
new places of a step's objects are drawn from (seed, step), so a resumed run draws them as an
uninterrupted one does."""
from __future__ import annotations

import numpy as np
import torch

from ..models import family
from ..io.checkpoints import save_model
from ..io.loader import load_model
from ..models.control import ControlAdapter, ControlConfig, ControlledUNet, Control, make_hint
from ..data.world import CaptionedImages, relocate, render_scenes, to_tensor
from .common import StreamBatches, add_common_arguments, frozen_text_encoder, settings_from_args, shard_diffusion_loss
from .loop import train_loop


def add_arguments(p):
    add_common_arguments(p, 1000, 16, 5e-4)
    p.add_argument("--kind", choices=("canny", "mask"), default="canny")
    p.add_argument("--decoder", default=None, help="decoder checkpoint (default <out>/decoder.safetensors)")


def run(args):
    settings = settings_from_args(args)
    torch.manual_seed(args.seed)   # the initial weights
    enc = frozen_text_encoder(args.out)
    dec = load_model(args.decoder or f"{args.out}/decoder.safetensors", expect_stage="decoder").module
    dec.requires_grad_(False)
    adapter = ControlAdapter(ControlConfig.for_unet(dec.config, kind=args.kind))
    net = ControlledUNet(dec)
    stream = StreamBatches(CaptionedImages(size=family.BASE_SIZE, seed=args.seed * 100 + 11), args.batch_size)
    out = f"{args.out}/control_{args.kind}.safetensors"

    def loss_fn(step, gen, shard):
        scenes, items = stream.take(step, shard)
        images, captions = zip(*items)
        images, b = torch.stack(images), len(images)
        video = images[:, :, None]   # one-frame clips: the adapter works per frame
        with torch.no_grad():
            tokens, _ = enc.encode_text(list(captions))
            elsewhere = np.random.default_rng([args.seed * 100 + 12, step])   # for the whole batch
            moved = shard.take([relocate(sc, elsewhere) for sc in scenes])
            embed = enc.encode_image(to_tensor(render_scenes(moved, family.BASE_SIZE)))
            drop = shard.take(torch.rand(shard.batch_size, generator=gen) < 0.3)
            tokens = torch.where(drop[:, None, None], enc.encode_text([""] * b)[0], tokens)
            embed = torch.where(drop[:, None], torch.zeros_like(embed), embed)
            hint = make_hint(video, args.kind)
        control = Control(adapter, hint)
        return shard_diffusion_loss(lambda x, t, **c: net(x, t, controls=[control], temporal=False, **c), video,
                                    family.SCHEDULE, family.PREDICTION, gen, shard, context=tokens, image_embed=embed)

    def on_save(m):
        save_model(out, m, "control", extra={"mav_control_kind": args.kind})

    train_loop("control", adapter, list(adapter.parameters()), loss_fn, settings, on_save)
    return out
