"""Stage "prior": the diffusion prior, text encoding -> image embedding of the frozen text stage.

Targets come from `<out>/text.safetensors`: a pool of rendered captioned images (world.CaptionedImages)
is embedded once by the frozen image encoder; captions are encoded once per distinct caption. Each
step draws a batch from the pool, drops the text conditioning to the empty prompt's encoding with
probability --cond-drop (for classifier-free guidance) and takes the x0-prediction diffusion loss.

    python -m mav_core.train.prior --steps 2000 --out runs/mav-tiny
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io.checkpoints import save_model
from ..io.loader import load_model
from ..data import world
from ..inference import SamplingOptions
from ..inference.text import sample_image_embed
from ..models.prior import DiffusionPrior, PriorConfig
from ..models.text import TextImageEncoder
from .loop import train_loop
from .common import add_common_arguments, settings_from_args, shard_diffusion_loss, train_from_command_line
from .text import all_combo_prompts, heldout_scenes

STAGE = "prior"


def add_arguments(parser: argparse.ArgumentParser):
    add_common_arguments(parser, steps=600, batch_size=128, lr=5e-4)
    parser.add_argument("--text", default=None, help="text-stage checkpoint (default <out>/text.safetensors)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--pool", type=int, default=8192, help="rendered training images embedded up front")
    parser.add_argument("--cond-drop", type=float, default=0.1, help="probability of the empty-prompt conditioning")


@torch.no_grad()
def embed_pool(encoder: TextImageEncoder, n: int, seed: int, chunk: int = 512) -> dict:
    """n captioned training images embedded by the frozen encoders: image embeddings [n, E] and, per
    distinct caption, text tokens/embeddings with the index of each image's caption."""
    pairs = list(itertools.islice(iter(world.CaptionedImages(size=encoder.config.image_size, seed=seed)), n))
    images = torch.stack([p[0] for p in pairs])
    captions = [p[1] for p in pairs]
    image_embed = torch.cat([encoder.encode_image(images[i:i + chunk]) for i in range(0, n, chunk)])
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    tokens, text_embed = encoder.encode_text(unique)
    return {"image_embed": image_embed, "caption_index": torch.tensor([index[c] for c in captions]),
            "text_tokens": tokens, "text_embed": text_embed, "captions": unique}


def load_text_encoder(path, device="cpu") -> TextImageEncoder:
    encoder = load_model(path, device=device, expect_stage="text").module
    encoder.requires_grad_(False)
    return encoder.eval()


def run(args) -> Path:
    settings = settings_from_args(args, warmup=min(50, max(1, args.steps // 10)))
    torch.manual_seed(args.seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    text_path = Path(args.text) if args.text else Path(args.out) / "text.safetensors"
    encoder = load_text_encoder(text_path, args.device)
    config = PriorConfig(embed_dim=encoder.config.embed_dim, text_width=encoder.config.width, width=args.width,
                         layers=args.layers, heads=args.heads, max_tokens=encoder.config.max_tokens)
    schedule = config.noise_schedule()
    prior = DiffusionPrior(config).to(args.device)
    with torch.no_grad():
        prior.set_null_conditioning(*encoder.encode_text([""]))
    pool = embed_pool(encoder, args.pool, seed=args.seed + 7919)
    path = Path(args.out) / f"{STAGE}.safetensors"

    def loss_fn(step, gen, shard):
        pick = shard.take(torch.randint(0, args.pool, (settings.batch_size,), generator=gen))
        cap = pool["caption_index"][pick]
        tokens, text_embed = pool["text_tokens"][cap], pool["text_embed"][cap]
        drop = shard.take(torch.rand(settings.batch_size, generator=gen) < args.cond_drop).to(tokens.device)
        null = prior.null_conditioning(shard.size)
        tokens = torch.where(drop[:, None, None], null["text_tokens"], tokens)
        text_embed = torch.where(drop[:, None], null["text_embed"], text_embed)
        x0 = pool["image_embed"][pick] * config.scale
        return shard_diffusion_loss(prior, x0, schedule, config.prediction, gen, shard,
                                    text_tokens=tokens, text_embed=text_embed)

    def on_save(m):
        save_model(path, m, STAGE, schedule=schedule, prediction=config.prediction,
                   extra={"mav_steps": settings.steps, "mav_text": text_path.name})

    prior.history = train_loop(STAGE, prior, list(prior.parameters()), loss_fn, settings, on_save, args.device)
    return path


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_prior(prior: DiffusionPrior, encoder: TextImageEncoder, combos=world.HELDOUT_COMBOS,
                   per_prompt: int = 8, steps: int = 25, cfg: float = 1.0, seed: int = 0) -> dict:
    """For each caption of `combos` (every size/background): sample `per_prompt` image embeddings and
    compare them with the encoder's embeddings of rendered scenes of that caption.

    cosine: mean cosine of a sample to the rendered scenes of its caption;
    text_cosine: the same for the caption's text embedding (what the prior improves on);
    image_image_cosine: mean cosine between two rendered scenes of the caption (the reachable level);
    colour_shape_top1: nearest caption prototype (mean image embedding of each caption in the whole world)
    has the right colour and shape; caption_top1: is the right caption."""
    prior.eval(), encoder.eval()
    prompts = all_combo_prompts()
    scenes = heldout_scenes(32 * len(prompts), seed + 99, [(c, s) for c in world.COLOURS for s in world.SHAPES])
    by_caption: dict[str, list] = {p: [] for p in prompts}
    for s in scenes:
        by_caption[world.caption(s)].append(s)
    protos, rendered = [], {}
    for p in prompts:
        images = world.to_tensor(world.render_scenes(by_caption[p], encoder.config.image_size))
        rendered[p] = encoder.encode_image(images)
        protos.append(F.normalize(rendered[p].mean(0), dim=-1))
    protos = torch.stack(protos)
    targets = [p for p in prompts if (world.parse_caption(p)["colour"], world.parse_caption(p)["shape"]) in combos]
    tokens, text_embed = encoder.encode_text(targets)
    rep = lambda t: t.repeat_interleave(per_prompt, 0)
    samples = sample_image_embed(prior, None, rep(tokens), rep(text_embed), SamplingOptions(seed=seed, steps=steps, cfg=cfg))
    cos, text_cos, self_cos, cs_hits, cap_hits = [], [], [], 0, 0
    for i, p in enumerate(targets):
        got = samples[i * per_prompt:(i + 1) * per_prompt]
        cos.append((got @ rendered[p].t()).mean())
        r = rendered[p]
        self_cos.append(((r @ r.t()).sum() - r.shape[0]) / (r.shape[0] * (r.shape[0] - 1)))
        text_cos.append((text_embed[i] @ rendered[p].t()).mean())
        want = world.parse_caption(p)
        for j in (got @ protos.t()).argmax(1).tolist():
            found = world.parse_caption(prompts[j])
            cs_hits += found["colour"] == want["colour"] and found["shape"] == want["shape"]
            cap_hits += prompts[j] == p
    n = len(targets) * per_prompt
    return {"cosine": float(torch.stack(cos).mean()), "text_cosine": float(torch.stack(text_cos).mean()),
            "image_image_cosine": float(torch.stack(self_cos).mean()),
            "colour_shape_top1": cs_hits / n, "caption_top1": cap_hits / n}


def main(argv=None):
    args, prior = train_from_command_line(argv, __doc__, add_arguments, run, STAGE)
    encoder = load_text_encoder(Path(args.text) if args.text else Path(args.out) / "text.safetensors")
    for cfg in (1.0, 3.0):
        print(f"held-out cfg={cfg}:", evaluate_prior(prior, encoder, cfg=cfg))
    print("train combos cfg=1:", evaluate_prior(prior, encoder, combos=world.TRAIN_COMBOS))


if __name__ == "__main__":
    main()
