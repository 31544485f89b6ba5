"""The MAV-Tiny text/image encoders: a CLIP-style pair trained contrastively on captioned images.

- `Tokenizer`: word level, built from the vocabulary stored in the config (so a checkpoint's metadata
  fully defines it); lowercase, punctuation stripped, unknown words -> UNK, fixed length with
  BOS/EOS/PAD; the empty prompt is the unconditional prompt.
- `TextImageEncoder.encode_text(prompts)` -> (token features [B, L, width], pooled unit embedding [B, E]).
- `TextImageEncoder.encode_image(images in -1..1)` -> unit embedding [B, E].
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from .config import ConfigDict

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
_WORD_RE = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lowercase words of `text`, punctuation dropped."""
    return _WORD_RE.findall(text.lower())


MAX_SIZE = 1 << 16          # widths, layers, heads, tokens a config may declare
MAX_IMAGE_SIZE = 4096       # the text/image encoder resizes every image to this
MAX_VOCAB = 1 << 20         # words in a vocabulary


def check_sizes(owner: str, sizes: dict, high: int = MAX_SIZE) -> None:
    """ValueError naming the first of `sizes` (name -> value) that is not an integer in 1..high."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ValueError(f"{owner}.{name} must be an integer in 1..{high}, got {value!r}")


@dataclass
class TextImageConfig(ConfigDict):
    vocab: list[str] = field(default_factory=list)  # words; ids start after the special tokens
    max_tokens: int = 16                  # sequence length including BOS and EOS
    width: int = 128                      # text transformer width (token feature size)
    layers: int = 2
    heads: int = 4
    embed_dim: int = 64                   # shared text/image embedding size
    image_size: int = 32                  # images are resized to this before the image encoder
    image_channels: tuple[int, ...] = (32, 64, 128)  # CNN widths; each stage halves the resolution

    def __post_init__(self):
        check_sizes("TextImageConfig", {"max_tokens": self.max_tokens, "width": self.width, "layers": self.layers,
                                        "heads": self.heads, "embed_dim": self.embed_dim})
        check_sizes("TextImageConfig", {"image_size": self.image_size}, MAX_IMAGE_SIZE)
        if not isinstance(self.vocab, (list, tuple)) or len(self.vocab) > MAX_VOCAB:
            raise ValueError(f"TextImageConfig.vocab must be a list of at most {MAX_VOCAB} words")
        if not isinstance(self.image_channels, (list, tuple)) or len(self.image_channels) > 16:
            raise ValueError("TextImageConfig.image_channels must be a list of at most 16 widths")
        check_sizes("TextImageConfig", {f"image_channels[{i}]": c for i, c in enumerate(self.image_channels)})
        self.vocab = [str(w) for w in self.vocab]
        self.image_channels = tuple(int(c) for c in self.image_channels)
        bad = [w for w in self.vocab if split_words(w) != [w]]
        if bad:
            raise ValueError(f"TextImageConfig.vocab must hold lowercase single words, got {bad[:5]}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("TextImageConfig.vocab has duplicate words")
        if self.max_tokens < 2:
            raise ValueError(f"TextImageConfig.max_tokens must be >= 2 (BOS and EOS), got {self.max_tokens}")
        if self.width % self.heads:
            raise ValueError(f"TextImageConfig.width {self.width} is not divisible by heads {self.heads}")
        if not self.image_channels:
            raise ValueError("TextImageConfig.image_channels must name at least one CNN width")



class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary: ids [B, max_tokens] = BOS words... EOS PAD..."""

    def __init__(self, vocab: list[str], max_tokens: int = 16):
        self.words = list(SPECIAL_TOKENS) + list(vocab)
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.max_tokens = int(max_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        words = split_words(prompt)[: self.max_tokens - 2]  # too long: truncated, EOS kept
        ids = [BOS] + [self.ids.get(w, UNK) for w in words] + [EOS]
        return ids + [PAD] * (self.max_tokens - len(ids))

    def __call__(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        return torch.tensor([self.encode(p) for p in prompts], dtype=torch.long).reshape(-1, self.max_tokens)

    def decode(self, ids) -> str:
        return " ".join(self.words[i] for i in ids if i not in (PAD, BOS, EOS))


class Block(nn.Module):
    """Pre-norm transformer block (self-attention + MLP) with an optional key padding mask."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, W]; keep [B, L] bool: keys that may be attended to (None = all)."""
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        mask = None if keep is None else keep[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(rearrange(a, "b h l d -> b l (h d)"))
        return x + self.mlp(self.norm2(x))


class ImageEncoder(nn.Module):
    """Small CNN: a 2x2 patch stem (half resolution), then per width a 3x3 conv, with a stride-2 conv
    between widths; global average pool and an MLP projection."""

    def __init__(self, channels: tuple[int, ...], embed_dim: int):
        super().__init__()

        def norm_act(c):
            return [nn.GroupNorm(8 if c % 8 == 0 else 1, c), nn.SiLU()]

        layers = [nn.Conv2d(3, channels[0], 2, stride=2), *norm_act(channels[0])]
        c_in = channels[0]
        for i, c in enumerate(channels):
            if i > 0:
                layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), *norm_act(c)]
            layers += [nn.Conv2d(c, c, 3, padding=1), *norm_act(c)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in, c_in), nn.SiLU(), nn.Linear(c_in, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class TextImageEncoder(nn.Module):
    def __init__(self, config: TextImageConfig):
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer(config.vocab, config.max_tokens)
        w = config.width
        self.token_embedding = nn.Embedding(self.tokenizer.vocab_size, w)
        self.position_embedding = nn.Parameter(torch.randn(config.max_tokens, w) * 0.02)
        self.blocks = nn.ModuleList([Block(w, config.heads) for _ in range(config.layers)])
        self.final_norm = nn.LayerNorm(w)
        self.text_projection = nn.Linear(w, config.embed_dim, bias=False)
        self.image_encoder = ImageEncoder(config.image_channels, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def tokenize(self, prompts: list[str] | str) -> torch.Tensor:
        return self.tokenizer(prompts).to(self.device)

    def encode_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L] -> (token features [B, L, width], unit pooled embedding [B, embed_dim])."""
        if ids.dim() != 2 or ids.shape[1] != self.config.max_tokens:
            raise ValueError(f"token ids must be [B, {self.config.max_tokens}], got {tuple(ids.shape)}")
        ids = ids.to(self.device)
        keep = ids != PAD
        x = self.token_embedding(ids) + self.position_embedding.to(self.dtype)
        for block in self.blocks:
            x = block(x, keep)
        x = self.final_norm(x)
        eos_at = (ids == EOS).float().argmax(dim=1)
        pooled = self.text_projection(x[torch.arange(ids.shape[0], device=ids.device), eos_at])
        return x, F.normalize(pooled, dim=-1)

    def encode_text(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (token features [B, L, width], unit pooled embedding [B, embed_dim])."""
        return self.encode_tokens(self.tokenize(prompts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in -1..1 -> unit embedding [B, embed_dim] (resized to image_size if needed)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        images = images.to(self.device, self.dtype)
        s = self.config.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return F.normalize(self.image_encoder(images), dim=-1)

    def similarity(self, image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits [B_image, B_text]."""
        return self.logit_scale.clamp(max=math.log(100)).exp() * image_embed @ text_embed.t()
