"""The text side: prompt -> token features + pooled embedding (text encoder), pooled text embedding -> image
embedding (the diffusion prior P)."""
from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn.functional as F

from ..diffusion import CFGDenoiser, Denoiser, NoiseSampler, sample, sampling_sigmas, seeded_noise
from ..diffusion.schedule import NoiseSchedule
from ..io.checkpoints import LoadedModel
from ..data.world import BACKGROUNDS, BACKGROUND_WORDS, COLOURS, SHAPES, SIZES, Scene, caption
from ..models.prior import DiffusionPrior
from ..models.text import split_words
from .options import SamplingOptions


def prompt_warnings(text_model: LoadedModel, text: str) -> list[str]:
    """What of `text` the text encoder will not read as written: words outside its vocabulary (read as <unk>),
    words past its token limit, and -- for our family's world vocabulary -- a background it never saw (it
    renders one it knows instead). Empty when the prompt is fully understood."""
    config = text_model.config
    words = split_words(text)
    known = set(config.vocab)
    warnings = []
    unknown = list(dict.fromkeys(w for w in words if w not in known))
    if unknown:
        warnings.append(f"words the text encoder does not know (read as <unk>): {', '.join(unknown)}; "
                        f"it knows: {', '.join(config.vocab)}")
    if len(words) > config.max_tokens - 2:
        warnings.append(f"only the first {config.max_tokens - 2} words are read ({len(words)} given)")
    if text_model.family == "mav" and "background" in known:
        backgrounds = list(BACKGROUND_WORDS.values())
        for phrase in re.findall(r"\bon an? ([a-z ]+?) background\b", " ".join(words)):
            if phrase not in backgrounds:
                warnings.append(f"the family never saw a {phrase} background; it renders one of "
                                f"{', '.join(backgrounds)}")
    return warnings


def encode_prompt(text_model: LoadedModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return text_model.module.encode_text(list(prompts))


@torch.no_grad()
def sample_image_embed(prior: DiffusionPrior, schedule: NoiseSchedule | None, text_tokens: torch.Tensor,
                       text_embed: torch.Tensor, options: SamplingOptions = SamplingOptions(),
                       uncond: dict | None = None, callback: Callable | None = None) -> torch.Tensor:
    """Sample unit image embeddings [B, E] for the given text encodings.

    options.cfg > 1 guides away from the unconditional prompt (default: the prior's stored empty-prompt
    encoding, or pass uncond={"text_tokens", "text_embed"})."""
    options.validate()
    schedule = schedule or prior.config.noise_schedule()
    param = next(prior.parameters())
    b = text_embed.shape[0]
    cond = {"text_tokens": text_tokens.to(param.device, param.dtype), "text_embed": text_embed.to(param.device, param.dtype)}
    if uncond is None:
        uncond = prior.null_conditioning(b)
    uncond = {k: v.to(param.device, param.dtype).expand_as(cond[k]) for k, v in uncond.items()}
    model = CFGDenoiser(Denoiser(prior, schedule, prior.config.prediction, dtype=param.dtype).to(param.device),
                        cond, uncond, options.cfg)
    sigmas = sampling_sigmas(schedule, options.steps, spacing=options.schedule)   # CPU: read without a device sync
    x = seeded_noise((b, prior.config.embed_dim), options.seed, device=param.device, dtype=torch.float32) * float(sigmas[0])
    was_training = prior.training
    prior.eval()
    out = sample(options.sampler, model, x, sigmas, callback=callback, noise_sampler=NoiseSampler(options.seed))
    prior.train(was_training)
    return F.normalize(out.float(), dim=-1).to(param.dtype)


def run_prior(prior: LoadedModel, tokens: torch.Tensor, pooled: torch.Tensor,
              options: SamplingOptions = SamplingOptions(steps=20), uncond: dict | None = None,
              callback: Callable | None = None) -> torch.Tensor:
    return sample_image_embed(prior.module, prior.schedule, tokens, pooled, options, uncond, callback)


def encode_images(text_model: LoadedModel, video: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The family's image embedding of `video` [B, 3, F, H, W] in -1..1 (the image encoder of the text
    encoder's file), as the decoders and ↑F take it: [B, E], each frame's unit embedding, or with several
    frames the unit mean of theirs (one embedding for a pair or a set of images). Frames are encoded
    `chunk` at a time."""
    b, _, f = video.shape[:3]
    with torch.no_grad():
        frames = video.transpose(1, 2).flatten(0, 1)                                      # [(B F), 3, H, W]
        embeds = torch.cat([text_model.module.encode_image(frames[i:i + chunk]).float()
                            for i in range(0, b * f, chunk)])
    return F.normalize(embeds.reshape(b, f, -1).mean(dim=1), dim=-1)


def family_captions(text_model: LoadedModel) -> list[str]:
    """Every caption of the MAV family's world ('a <size> <colour> <shape> on a <background> background'),
    the candidates `describe_images` picks from; ValueError for text encoders of other families."""
    if text_model.family != "mav":
        raise ValueError(f"{text_model.path}: describing an image needs the MAV family's text/image encoder pair "
                         f"(its world captions); this is a {text_model.family!r} text encoder")
    return [caption(Scene(shape=shape, colour=colour, size=size, background=background))
            for size in SIZES for colour in COLOURS for shape in SHAPES for background in BACKGROUNDS]


def describe_images(text_model: LoadedModel, video: torch.Tensor) -> list[str]:
    """Zero-shot captions, CLIP-style: per clip of `video` [B, 3, F, H, W] in -1..1, the family caption whose
    text embedding is nearest the clip's image embedding (encode_images). D^t reads shapes from text tokens
    far better than from the image embedding, so image animation conditions on both."""
    return nearest_captions(text_model, encode_images(text_model, video))


def nearest_captions(text_model: LoadedModel, image_embed: torch.Tensor) -> list[str]:
    """describe_images from image embeddings [B, E] already made by encode_images."""
    captions = family_captions(text_model)
    _, text_embed = encode_prompt(text_model, captions)
    image_embed = image_embed.to(text_embed.device, text_embed.dtype)
    return [captions[int(i)] for i in (image_embed @ text_embed.t()).argmax(dim=-1)]
