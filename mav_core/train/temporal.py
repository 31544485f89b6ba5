"""Motion training: fine-tune only the temporal layers of an inflated image checkpoint on unlabeled videos.

  python -m mav_core train temporal --base <image UNet file or diffusers folder> --videos <folder> \
      --frames 8 --size 64 --steps 2000 --out runs/motion

The base is inflated (identity temporal layers, mav_core.io.motion), its image layers are frozen, and the
diffusion loss on random video crops trains the temporal layers; the result is a small motion file
(`<out>/<name>.safetensors`, temporal tensors only) that mav_core.io.motion.apply_motion loads onto any
image checkpoint with the same temporal shapes. Pixel bases (3 input channels) train on the videos;
latent bases (SD, 4 channels) need the videos already encoded: `--latents <folder of .safetensors>`, each
with a "latents" tensor [frames, channels, h, w] (VAE latents times its scaling factor), as no VAE is
available here. Without text, every clip is trained with one fixed context: `--context <.safetensors>`
holding a "context" tensor [tokens, width] (e.g. the host's encoding of the empty prompt), else zeros.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.checkpoints import CheckpointError, load_state_dict
from ..io.motion import save_motion
from ..models.motion import MotionModule
from ..io.inflate import inflate_image_checkpoint
from ..io.video import read_video
from .common import StreamBatches, add_common_arguments, settings_from_args, shard_diffusion_loss
from .loop import train_loop

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".webp")


def add_arguments(p):
    add_common_arguments(p, 1000, 2, 1e-4)
    p.set_defaults(out="runs/motion")
    p.add_argument("--base", required=True, help="image UNet to inflate: SD 1.x/2.x file or diffusers folder, "
                   "or one of our image SpaceTimeUNet files")
    p.add_argument("--videos", default=None, help="folder of unlabeled videos (mp4/webm/gif/webp), pixel bases")
    p.add_argument("--latents", default=None, help="folder of .safetensors latent clips ('latents' "
                   "[frames, channels, h, w]), for latent bases")
    p.add_argument("--context", default=None, help=".safetensors with a 'context' tensor [tokens, width] "
                   "used as the text context of every clip (default: zeros)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="square crop side: pixels, or latent cells with --latents")
    p.add_argument("--name", default="motion", help="motion file name (without .safetensors)")


class _DrawnCrops:
    """A crop source split like the data streams: _draw() makes an item's random choices, make(draw) reads it."""

    def sample(self) -> tuple[torch.Tensor, float]:
        return self.make(self._draw())

    def draws(self):
        while True:
            yield self._draw()


class VideoCrops(_DrawnCrops):
    """Random clips of `frames` frames from a folder of videos: random start, random square crop
    (80-100% of the short side), resized to `size`; values in [-1, 1], shaped [C, F, H, W]; plus fps.
    draws() yields each clip's random choices (a video is decoded whole on its first visit, to learn its
    length and size), make(draw) reads and crops it; sample() is one clip."""

    def __init__(self, folder, frames: int, size: int, seed: int):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"--videos {folder}: no such folder")
        self.files = sorted(f for f in folder.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
        if not self.files:
            raise ValueError(f"--videos {folder}: holds no {'/'.join(VIDEO_SUFFIXES)} files")
        self.frames, self.size = frames, size
        self.rng = np.random.default_rng(seed)
        self.shapes: dict = {}      # path -> (frames, height, width)


    def _draw(self) -> tuple:
        """(path, first frame, crop side, y0, x0) of one clip."""
        for _ in range(10 * len(self.files)):
            path = self.files[self.rng.integers(len(self.files))]
            if path not in self.shapes:       # first visit: decode it all once to learn its length
                video, _ = read_video(path)
                self.shapes[path] = tuple(video.shape[:3])
            length, h, w = self.shapes[path]
            if length < self.frames:
                continue
            start = int(self.rng.integers(length - self.frames + 1))
            side = max(1, round(min(h, w) * self.rng.uniform(0.8, 1.0)))
            y0, x0 = int(self.rng.integers(h - side + 1)), int(self.rng.integers(w - side + 1))
            return path, start, side, y0, x0
        raise ValueError(f"no video in {self.files[0].parent} has {self.frames} frames (--frames)")

    def make(self, draw: tuple) -> tuple[torch.Tensor, float]:
        path, start, side, y0, x0 = draw
        video, fps = read_video(path, max_frames=self.frames, skip_first=start)
        clip = video[:, y0:y0 + side, x0:x0 + side].permute(0, 3, 1, 2)           # [F, 3, s, s]
        clip = F.interpolate(clip, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (clip.clamp(0, 1) * 2 - 1).permute(1, 0, 2, 3).contiguous(), float(fps)   # [3, F, H, W]


class LatentCrops(_DrawnCrops):
    """Random windows of `frames` frames and random `size` x `size` crops of pre-encoded latent clips
    (draws() / make(draw) as VideoCrops)."""

    def __init__(self, folder, frames: int, size: int, seed: int, channels: int):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"--latents {folder}: no such folder")
        self.clips = []
        for path in sorted(folder.glob("*.safetensors")):
            sd, _ = load_state_dict(path)
            lat = sd.get("latents")
            if lat is None or lat.dim() != 4 or lat.shape[1] != channels:
                raise CheckpointError(f"{path}: expected a 'latents' tensor [frames, {channels}, h, w], got "
                                      f"{None if lat is None else tuple(lat.shape)}")
            if lat.shape[0] >= frames:
                self.clips.append(lat.float())
        if not self.clips:
            raise ValueError(f"--latents {folder}: no clip with at least {frames} frames")
        self.frames, self.size = frames, size
        self.rng = np.random.default_rng(seed)


    def _draw(self) -> tuple:
        """(clip index, first frame, y0, x0, crop side)."""
        i = int(self.rng.integers(len(self.clips)))
        f, _, h, w = self.clips[i].shape
        s = min(self.size, h, w)
        t0, y0, x0 = (int(self.rng.integers(n - k + 1)) for n, k in ((f, self.frames), (h, s), (w, s)))
        return i, t0, y0, x0, s

    def make(self, draw: tuple) -> tuple[torch.Tensor, float]:
        i, t0, y0, x0, s = draw
        clip = self.clips[i][t0:t0 + self.frames, :, y0:y0 + s, x0:x0 + s]
        return clip.permute(1, 0, 2, 3).contiguous(), 8.0


def _collate(items) -> tuple[torch.Tensor, torch.Tensor]:
    clips, fps = zip(*items)
    return torch.stack(clips), torch.tensor(fps)


def run(args) -> str:
    settings = settings_from_args(args)
    base = inflate_image_checkpoint(args.base)
    model, cfg = base.module, base.config
    model.requires_grad_(False)
    motion = MotionModule.of(model)      # the model's own temporal parameters: what trains, saves, resumes
    params = list(motion.parameters())
    for p_ in params:
        p_.requires_grad_(True)
    seed = args.seed * 100
    if args.latents:
        crops = LatentCrops(args.latents, args.frames, args.size, seed, cfg.in_channels)
    elif cfg.in_channels == 3 and args.videos:
        crops = VideoCrops(args.videos, args.frames, args.size, seed)
    elif args.videos:
        raise ValueError(f"--base {args.base} is a latent model ({cfg.in_channels} input channels): pass its "
                         "clips as --latents (no VAE is available to encode --videos)")
    else:
        raise ValueError("give --videos (pixel bases) or --latents (latent bases)")
    data = StreamBatches(crops, args.batch_size, collate=_collate)
    context = _context(args.context, cfg.context_dim)

    def loss_fn(step, gen, shard):
        x, fps = data(step, shard)
        cond = dict(context=context.expand(x.shape[0], -1, -1), fps=fps)
        model.train()
        return shard_diffusion_loss(model, x, base.schedule, base.prediction, gen, shard, **cond)

    out = str(Path(args.out) / f"{args.name}.safetensors")

    def on_save(_):
        save_motion(model, out, extra={"mav_base": str(args.base), "mav_recipe_stage": "temporal",
                                       "mav_base_family": base.family, "mav_frames": args.frames,
                                       "mav_size": args.size})

    train_loop(f"temporal-{args.name}", motion, params, loss_fn, settings, on_save)
    model.eval()
    return out


def _context(path, width: int) -> torch.Tensor:
    if path is None:
        return torch.zeros(1, 1, width)
    sd, _ = load_state_dict(path)
    ctx = sd.get("context")
    if ctx is None or ctx.dim() not in (2, 3) or ctx.shape[-1] != width:
        raise CheckpointError(f"--context {path}: expected a 'context' tensor [tokens, {width}], got "
                              f"{None if ctx is None else tuple(ctx.shape)}")
    return ctx.float().reshape(1, -1, width)
