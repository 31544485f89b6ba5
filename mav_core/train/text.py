"""Stage "text": the CLIP-style text/image encoders, symmetric InfoNCE on captioned toy-world images.

Captions repeat (the world has few distinct ones), so every image that fits a caption counts as a
positive: the targets of each row/column are uniform over its matches. A fraction of the captions get
an unknown word inserted, so out-of-vocabulary words (UNK) learn to be ignored.

Optional (off by default; at this training budget they made held-out colour+shape pairs worse, see
the stage report): --partial-prob captions naming only some attributes ("a red shape"), and
--recolour-prob images with permuted RGB channels captioned without their colour.

    python -m mav_core.train.text --steps 1000 --out runs/mav-tiny
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.checkpoints import save_model
from ..data import world
from ..models.text import TextImageConfig, TextImageEncoder, split_words
from .common import add_common_arguments, settings_from_args, train_from_command_line
from .loop import Shard, train_loop

STAGE = "text"
UNKNOWN_WORD = "zzunknownzz"  # never in the vocabulary: becomes UNK


def world_vocab() -> list[str]:
    """Every word the toy world's captions can use (training and held-out), sorted."""
    words = set()
    for prompt in world.train_prompts() + world.heldout_prompts():
        words.update(split_words(prompt))
    for name in (*world.COLOURS, *world.SHAPES, *world.SIZES, *world.BACKGROUND_WORDS.values(), "an", "shape"):
        words.update(split_words(name))
    return sorted(words)


def add_arguments(parser: argparse.ArgumentParser):
    add_common_arguments(parser, steps=1000, batch_size=128, lr=1e-3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--image-channels", default="32,64,128", help="CNN widths, comma separated")
    parser.add_argument("--unk-prob", type=float, default=0.15, help="captions given an unknown word")
    parser.add_argument("--partial-prob", type=float, default=0.0,
                        help="captions naming only some attributes ('a red shape'), for compositionality")
    parser.add_argument("--recolour-prob", type=float, default=0.0,
                        help="images with RGB channels permuted, captioned without their colour")


ATTRIBUTES = ("size", "colour", "shape", "background")


def captioned_batch(batch_size: int, size: int, gen: torch.Generator, shard: Shard | None = None) -> tuple[torch.Tensor, list]:
    """batch_size (image, scene) pairs of world.CaptionedImages, its seed drawn from `gen`: the images of
    the shard's examples (every image without a shard) and the scenes of the whole batch."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    stream = world.CaptionedImages(size=size, seed=seed)
    scenes = list(itertools.islice(stream.draws(), batch_size))
    mine = shard.indices() if shard is not None else range(batch_size)
    return torch.stack([stream.make(scenes[i])[0] for i in mine]), scenes


def partial_caption(scene, keep: set[str]) -> str:
    """The scene's caption with only the attributes in `keep`: 'a red shape', 'a small triangle on a black background'."""
    words = ["a"]
    if "size" in keep:
        words.append(scene.size)
    if "colour" in keep:
        words.append(scene.colour)
    words.append(scene.shape if "shape" in keep else "shape")
    if "background" in keep:
        words += ["on", "a", world.BACKGROUND_WORDS[scene.background], "background"]
    return " ".join(words)


PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def recolour(images: torch.Tensor, prob: float, gen: torch.Generator,
             shard: Shard | None = None) -> tuple[torch.Tensor, list[bool]]:
    """Permute the RGB channels of a fraction of the images (a non-identity permutation each): the
    object (and a navy background) change colour, black and gray backgrounds stay. Their captions
    must then name neither colour nor a navy background. With a shard, `images` are the shard's
    examples: the draws are made for the whole batch, whose flags are returned."""
    shard = shard or Shard(images.shape[0])
    row = {example: j for j, example in enumerate(shard.indices())}
    images = images.clone()
    changed = []
    for i in range(shard.batch_size):
        hit = prob > 0 and float(torch.rand((), generator=gen)) < prob
        if hit:
            perm = PERMUTATIONS[int(torch.randint(0, len(PERMUTATIONS), (1,), generator=gen))]
            if i in row:
                images[row[i]] = images[row[i], list(perm)]
        changed.append(hit)
    return images, changed


def draw_captions(scenes, partial_prob: float, gen: torch.Generator,
                  recoloured: list[bool] | None = None) -> tuple[list[str], list[set[str]]]:
    """Full captions, or with probability partial_prob a random non-empty subset of the attributes.
    Recoloured images never get their (now wrong) colour or navy background named."""
    captions, kept = [], []
    recoloured = recoloured or [False] * len(scenes)
    for scene, changed in zip(scenes, recoloured):
        keep = set(ATTRIBUTES)
        if changed or (partial_prob > 0 and float(torch.rand((), generator=gen)) < partial_prob):
            mask = torch.rand(len(ATTRIBUTES), generator=gen) < 0.5
            keep = {a for a, drop in zip(ATTRIBUTES, mask.tolist()) if not drop}
            if changed:
                keep -= {"colour"} | ({"background"} if scene.background == "navy" else set())
            if not keep or keep == set(ATTRIBUTES):
                keep = {"shape"} if changed else keep - {ATTRIBUTES[int(torch.randint(0, 4, (1,), generator=gen))]}
        captions.append(world.caption(scene) if keep == set(ATTRIBUTES) else partial_caption(scene, keep))
        kept.append(keep)
    return captions, kept


def matches(scenes, kept: list[set[str]], recoloured: list[bool] | None = None) -> torch.Tensor:
    """[images, captions] bool: image i fits caption j (every attribute caption j names agrees).
    A recoloured image's colour (and navy background) agrees with nothing."""
    values = torch.tensor([[hash(getattr(s, a)) for a in ATTRIBUTES] for s in scenes])
    for i, changed in enumerate(recoloured or []):
        if changed:
            values[i, 1] = -1 - i
            if scenes[i].background == "navy":
                values[i, 3] = -1 - i
    named = torch.tensor([[a in k for a in ATTRIBUTES] for k in kept])
    agree = values[:, None, :] == values[None, :, :]  # [image, caption, attribute]
    return (agree | ~named[None]).all(dim=-1)


def with_unknown_words(captions: list[str], prob: float, gen: torch.Generator) -> list[str]:
    out = []
    for c in captions:
        words = c.split()
        if prob > 0 and float(torch.rand((), generator=gen)) < prob:
            at = int(torch.randint(0, len(words) + 1, (1,), generator=gen))
            words.insert(at, UNKNOWN_WORD)
        out.append(" ".join(words))
    return out


def contrastive_loss(model: TextImageEncoder, images: torch.Tensor, prompts: list[str], positives: torch.Tensor,
                     shard: Shard | None = None) -> torch.Tensor:
    """Symmetric InfoNCE with several positives: positives[i, j] says image i fits prompt j; the
    targets of each row (image) and column (prompt) are uniform over its positives. With a shard,
    `images` are the shard's examples (prompts and positives are the whole batch's): each rank
    encodes its examples, and the loss is that of the whole batch over the gathered embeddings."""
    img = model.encode_image(images)
    mine = shard.take(prompts) if shard is not None else prompts
    unique = sorted(set(mine))  # captions repeat a lot: encode each once
    _, txt_unique = model.encode_text(unique)
    txt = txt_unique[torch.tensor([unique.index(p) for p in mine], device=txt_unique.device)]
    if shard is not None:
        img, txt = shard.gather(img), shard.gather(txt)
    logits = model.similarity(img, txt).float()
    same = positives.float().to(logits.device)
    loss_i = -(same / same.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(same / same.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (loss_i + loss_t) / 2


def build_model(args) -> TextImageEncoder:
    config = TextImageConfig(vocab=world_vocab(), width=args.width, layers=args.layers, embed_dim=args.embed_dim,
                             image_size=args.image_size,
                             image_channels=tuple(int(c) for c in str(args.image_channels).split(",")))
    return TextImageEncoder(config)


def run(args) -> Path:
    settings = settings_from_args(args, warmup=min(50, max(1, args.steps // 10)))
    torch.manual_seed(args.seed)
    model = build_model(args).to(args.device)
    path = Path(args.out) / f"{STAGE}.safetensors"

    def loss_fn(step, gen, shard):
        images, scenes = captioned_batch(settings.batch_size, model.config.image_size, gen, shard)
        images, recoloured = recolour(images, args.recolour_prob, gen, shard)
        captions, kept = draw_captions(scenes, args.partial_prob, gen, recoloured)
        prompts = with_unknown_words(captions, args.unk_prob, gen)
        return contrastive_loss(model, images.to(args.device), prompts, matches(scenes, kept, recoloured), shard)

    def on_save(m):
        save_model(path, m, STAGE, extra={"mav_steps": settings.steps})

    model.history = train_loop(STAGE, model, list(model.parameters()), loss_fn, settings, on_save, args.device)
    return path


# --------------------------------------------------------------------------- evaluation


def heldout_scenes(n: int, seed: int, combos=world.HELDOUT_COMBOS) -> list:
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng, list(combos)) for _ in range(n)]


def all_combo_prompts() -> list[str]:
    """One caption per (colour, shape, size, background) of the world, held-out combos included."""
    return [world.caption(world.Scene(shape=s, colour=c, size=z, background=b))
            for c in world.COLOURS for s in world.SHAPES for z in world.SIZES for b in world.BACKGROUNDS]


@torch.no_grad()
def zero_shot_accuracy(model: TextImageEncoder, n: int = 600, seed: int = 1234, combos=world.HELDOUT_COMBOS) -> dict:
    """Classify rendered scenes of `combos` against every caption of the world; returns accuracies of
    colour+shape, full caption, colour, shape."""
    model.eval()
    scenes = heldout_scenes(n, seed, combos)
    images = world.to_tensor(world.render_scenes(scenes, model.config.image_size))
    prompts = all_combo_prompts()
    parsed = [world.parse_caption(p) for p in prompts]
    _, txt = model.encode_text(prompts)
    img = torch.cat([model.encode_image(images[i:i + 256]) for i in range(0, n, 256)])
    best = (img @ txt.t()).argmax(1).tolist()
    hits = {"colour_shape": 0, "caption": 0, "colour": 0, "shape": 0}
    for scene, b in zip(scenes, best):
        p = parsed[b]
        hits["colour"] += p["colour"] == scene.colour
        hits["shape"] += p["shape"] == scene.shape
        hits["colour_shape"] += p["colour"] == scene.colour and p["shape"] == scene.shape
        hits["caption"] += prompts[b] == world.caption(scene)
    return {k: v / n for k, v in hits.items()}


def main(argv=None):
    _, model = train_from_command_line(argv, __doc__, add_arguments, run, STAGE)
    print("held-out zero-shot:", zero_shot_accuracy(model))
    print("train-combo zero-shot:", zero_shot_accuracy(model, combos=world.TRAIN_COMBOS))


if __name__ == "__main__":
    main()
