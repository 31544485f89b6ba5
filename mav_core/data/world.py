"""A procedurally rendered toy world: one coloured shape on a plain (or softly textured) background.

Captioned still images (for the text/image stages) and unlabeled motion clips (for the temporal
stages) are drawn from it. A fixed set of (colour, shape) pairs is never captioned in training, so
a model can be asked to compose them at evaluation time (`heldout_prompts`).

Rendering is supersampled with OpenCV and downsampled with INTER_AREA for anti-aliasing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass

import cv2
import numpy as np
import torch

# --------------------------------------------------------------------------- vocabulary

#: object colours (RGB); chosen to be at least ~40 apart in CIE Lab from each other and the backgrounds
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (30, 70, 255),
    "yellow": (235, 210, 40),
    "purple": (160, 40, 170),
    "white": (240, 240, 240),
}
#: background colours (RGB); none equals an object colour
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (118, 118, 118),
    "navy": (20, 28, 80),
}
BACKGROUND_WORDS = {"black": "black", "gray": "gray", "navy": "dark blue"}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: dict[str, float] = {"small": 0.15, "large": 0.25}  # nominal radius as a fraction of image side

#: (colour, shape) pairs never captioned together in training; every colour and shape still appears
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "square"),
    ("yellow", "cross"),
    ("purple", "triangle"),
)
TRAIN_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS
)

#: frame rates unlabeled clips are sampled at (same physical motion, different sampling)
FPS_CHOICES: tuple[float, ...] = (4.0, 8.0, 12.0, 24.0)
MOTIONS: tuple[str, ...] = ("translate", "rotate", "pulse", "pan")


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one frame. Positions are fractions of the image side."""

    shape: str
    colour: str
    size: str
    background: str
    x: float = 0.5
    y: float = 0.5
    angle: float = 0.0  # degrees, counter-clockwise
    scale: float = 1.0  # multiplier on the nominal radius of `size`
    texture_seed: int | None = None  # soft background texture (used by camera-pan clips)
    cam_x: float = 0.0  # background texture offset (fraction of image side)
    cam_y: float = 0.0

    def __post_init__(self):
        _check_word("shape", self.shape, SHAPES)
        _check_word("colour", self.colour, COLOURS)
        _check_word("size", self.size, SIZES)
        _check_word("background", self.background, BACKGROUNDS)
        if not (self.scale > 0):
            raise ValueError(f"Scene.scale must be > 0, got {self.scale}")

    @property
    def radius(self) -> float:
        """Nominal radius as a fraction of the image side."""
        return SIZES[self.size] * self.scale


def _check_word(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Scene.{field}={value!r} is not one of {sorted(allowed)}")


# --------------------------------------------------------------------------- captions / split


def caption(scene: Scene) -> str:
    """'a small red triangle on a gray background'."""
    return f"a {scene.size} {scene.colour} {scene.shape} on a {BACKGROUND_WORDS[scene.background]} background"


_CAPTION_RE = re.compile(r"^an? (\w+) (\w+) (\w+) on an? ([\w ]+?) background$")


def parse_caption(text: str) -> dict[str, str]:
    """Inverse of `caption`: {'size', 'colour', 'shape', 'background'} (raises ValueError if not ours)."""
    m = _CAPTION_RE.match(text.strip().lower())
    words = {v: k for k, v in BACKGROUND_WORDS.items()}
    if not m or m.group(1) not in SIZES or m.group(2) not in COLOURS or m.group(3) not in SHAPES or m.group(4) not in words:
        raise ValueError(f"caption {text!r} is not of the form 'a <size> <colour> <shape> on a <background> background'")
    return {"size": m.group(1), "colour": m.group(2), "shape": m.group(3), "background": words[m.group(4)]}


def is_heldout(colour: str, shape: str) -> bool:
    return (colour, shape) in HELDOUT_COMBOS


def heldout_prompts() -> list[str]:
    """Evaluation prompts built only from held-out (colour, shape) pairs, every size and background."""
    return [
        caption(Scene(shape=s, colour=c, size=z, background=b))
        for c, s in HELDOUT_COMBOS
        for z in SIZES
        for b in BACKGROUNDS
    ]


def train_prompts() -> list[str]:
    """Every caption `train_scene` can produce (useful for in-distribution evaluation)."""
    return [
        caption(Scene(shape=s, colour=c, size=z, background=b))
        for c, s in TRAIN_COMBOS
        for z in SIZES
        for b in BACKGROUNDS
    ]


# --------------------------------------------------------------------------- sampling


def _extent(shape: str) -> float:
    """Farthest point of the shape from its centre, in units of the nominal radius."""
    return {"circle": 1.0, "square": 0.9 * math.sqrt(2), "triangle": 1.3, "cross": math.hypot(1.05, 0.4)}[shape]


def position_range(shape: str, size: str, scale: float = 1.0) -> tuple[float, float]:
    """Centre positions (fraction of side) that keep the whole object inside the frame."""
    margin = SIZES[size] * scale * _extent(shape) + 0.05
    return margin, 1.0 - margin


def random_scene(rng: np.random.Generator, combos=None, max_angle: float = 180.0) -> Scene:
    """A random still scene; `combos` restricts (colour, shape) pairs (default: all); the object is
    turned by up to ±max_angle degrees (180: any angle)."""
    combos = combos if combos is not None else [(c, s) for c in COLOURS for s in SHAPES]
    colour, shape = combos[rng.integers(len(combos))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    scale = float(rng.uniform(0.9, 1.1))
    lo, hi = position_range(shape, size, scale)
    return Scene(
        shape=shape, colour=colour, size=size, background=background,
        x=float(rng.uniform(lo, hi)), y=float(rng.uniform(lo, hi)),
        angle=float(rng.uniform(0.0, 360.0) if max_angle >= 180 else rng.uniform(-max_angle, max_angle) % 360.0),
        scale=scale,
    )


def relocate(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same object (colour, shape, size) on the same background at a new random place, angle and
    scale: what a caption says, without the layout of one particular image."""
    scale = float(rng.uniform(0.9, 1.1))
    lo, hi = position_range(scene.shape, scene.size, scale)
    return dataclasses.replace(scene, x=float(rng.uniform(lo, hi)), y=float(rng.uniform(lo, hi)),
                               angle=float(rng.uniform(0.0, 360.0)), scale=scale)


def train_scene(rng: np.random.Generator, max_angle: float = 180.0) -> Scene:
    """A random scene whose (colour, shape) pair is allowed in captioned training data."""
    return random_scene(rng, TRAIN_COMBOS, max_angle)


# --------------------------------------------------------------------------- rendering


def _shape_polygon(shape: str, radius_px: float, angle_deg: float) -> np.ndarray | None:
    """Vertices (N,2) around the origin, or None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.9 * radius_px
        pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    elif shape == "triangle":
        r = 1.3 * radius_px
        a = np.deg2rad(np.array([90.0, 210.0, 330.0]))
        pts = np.stack([r * np.cos(a), -r * np.sin(a)], axis=1)
    elif shape == "cross":
        L, w = 1.05 * radius_px, 0.4 * radius_px
        pts = np.array([
            [-w, -L], [w, -L], [w, -w], [L, -w], [L, w], [w, w],
            [w, L], [-w, L], [-w, w], [-L, w], [-L, -w], [-w, -w],
        ])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # CCW on screen (y down)
    return pts @ rot.T


_TEXTURE_CACHE: dict[int, list[tuple[float, float, float, float]]] = {}


def _texture_waves(seed: int) -> list[tuple[float, float, float, float]]:
    """(kx, ky, phase, amplitude) of a few soft sinusoids; wavelengths 0.3..1 image sides."""
    if seed not in _TEXTURE_CACHE:
        r = np.random.default_rng(seed)
        waves = []
        for _ in range(3):
            theta, wl = r.uniform(0, np.pi), r.uniform(0.3, 1.0)
            k = 2 * np.pi / wl
            waves.append((k * np.cos(theta), k * np.sin(theta), r.uniform(0, 2 * np.pi), r.uniform(5.0, 9.0)))
        _TEXTURE_CACHE[seed] = waves
        if len(_TEXTURE_CACHE) > 4096:
            _TEXTURE_CACHE.pop(next(iter(_TEXTURE_CACHE)))
    return _TEXTURE_CACHE[seed]


def _background(scene: Scene, n: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[scene.background], np.float32)
    if scene.texture_seed is None:
        return np.broadcast_to(base, (n, n, 3)).astype(np.uint8)
    g = (np.arange(n, dtype=np.float32) + 0.5) / n
    shade = np.zeros((n, n), np.float32)
    for kx, ky, ph, amp in _texture_waves(scene.texture_seed):
        shade += amp * np.sin(kx * (g[None, :] + scene.cam_x) + ky * (g[:, None] + scene.cam_y) + ph)
    return np.clip(base + shade[..., None], 0, 255).astype(np.uint8)


def default_supersample(size: int) -> int:
    return 4 if size <= 64 else 2


def render(scene: Scene, size: int = 32, supersample: int | None = None) -> np.ndarray:
    """Render `scene` to a uint8 RGB image [size, size, 3]."""
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"render size must be an int >= 8, got {size!r}")
    ss = default_supersample(size) if supersample is None else int(supersample)
    n = size * ss
    shift = 4  # fixed-point bits for sub-pixel drawing
    canvas = np.ascontiguousarray(_background(scene, n))
    colour = tuple(int(v) for v in COLOURS[scene.colour])
    cx, cy = scene.x * n, scene.y * n
    r = scene.radius * n
    poly = _shape_polygon(scene.shape, r, scene.angle)
    if poly is None:
        cv2.circle(canvas, (round(cx * 16), round(cy * 16)), max(1, round(r * 16)), colour, -1, cv2.LINE_AA, shift)
    else:
        pts = np.round((poly + [cx, cy]) * 16).astype(np.int32)
        cv2.fillPoly(canvas, [pts], colour, cv2.LINE_AA, shift)
    if ss == 1:
        return canvas
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def render_scenes(scenes, size: int = 32, supersample: int | None = None) -> np.ndarray:
    """Render a sequence of scenes to uint8 [F, size, size, 3]."""
    return np.stack([render(s, size, supersample) for s in scenes])


# --------------------------------------------------------------------------- motion clips


@dataclass(frozen=True)
class Motion:
    """Physical motion of one clip, independent of the frame rate it is sampled at.

    Speeds are per second: positions in image sides, angles in degrees, pulse in Hz.
    """

    kind: str  # one of MOTIONS
    start: Scene
    vx: float = 0.0
    vy: float = 0.0
    spin: float = 0.0
    pulse_hz: float = 0.0
    pulse_amp: float = 0.0


def _reflect(p: float, lo: float, hi: float) -> float:
    """Bounce position p into [lo, hi] (triangle wave), exact for any time."""
    span = hi - lo
    if span <= 0:
        return (lo + hi) / 2
    q = (p - lo) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


def sample_motion(rng: np.random.Generator, kind: str | None = None) -> Motion:
    """A random motion; any colour/shape pair may appear (clips carry no captions)."""
    if kind is not None and kind not in MOTIONS:
        raise ValueError(f"motion kind {kind!r} is not one of {MOTIONS}")
    start = random_scene(rng)
    if kind is None:
        kinds = [k for k in MOTIONS if not (k == "rotate" and start.shape == "circle")]
        kind = kinds[rng.integers(len(kinds))]
    if kind == "rotate" and start.shape == "circle":
        start = dataclasses.replace(start, shape=SHAPES[1 + rng.integers(len(SHAPES) - 1)])
    speed, heading = rng.uniform(0.15, 0.45), rng.uniform(0, 2 * np.pi)
    vx, vy = speed * math.cos(heading), speed * math.sin(heading)
    if kind == "translate":
        return Motion(kind, start, vx=vx, vy=vy)
    if kind == "rotate":
        return Motion(kind, start, spin=float(rng.choice([-1, 1]) * rng.uniform(45, 180)))
    if kind == "pulse":
        # the peak scale must still fit: shrink the start scale so scale*(1+amp) stays within range
        amp = float(rng.uniform(0.2, 0.35))
        s = dataclasses.replace(start, scale=start.scale / (1 + amp))
        lo, hi = position_range(s.shape, s.size, s.scale * (1 + amp))
        s = dataclasses.replace(s, x=min(max(s.x, lo), hi), y=min(max(s.y, lo), hi))
        return Motion(kind, s, pulse_hz=float(rng.uniform(0.3, 1.0)), pulse_amp=amp)
    # pan: the camera moves, so object and textured background shift together
    start = dataclasses.replace(start, texture_seed=int(rng.integers(2**31)))
    return Motion(kind, start, vx=vx, vy=vy)


def motion_scenes(motion: Motion, num_frames: int, fps: float) -> list[Scene]:
    """The scenes of `motion` sampled at `fps` for `num_frames` frames (frame i at t = i / fps)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not (fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    s0 = motion.start
    lo, hi = position_range(s0.shape, s0.size, s0.scale * (1 + motion.pulse_amp))
    out = []
    for i in range(num_frames):
        t = i / fps
        x = _reflect(s0.x + motion.vx * t, lo, hi)
        y = _reflect(s0.y + motion.vy * t, lo, hi)
        scale = s0.scale * (1 + motion.pulse_amp * math.sin(2 * math.pi * motion.pulse_hz * t))
        kw = dict(x=x, y=y, angle=(s0.angle + motion.spin * t) % 360.0, scale=scale)
        if motion.kind == "pan":
            # the world shifts by the same amount as the object: texture offset follows it
            kw.update(cam_x=s0.x - x, cam_y=s0.y - y)
        out.append(dataclasses.replace(s0, **kw))
    return out


def render_clip(rng: np.random.Generator, num_frames: int, size: int = 32, fps: float | None = None) -> np.ndarray:
    """A random unlabeled clip: uint8 [F, size, size, 3]. `fps` None picks one of FPS_CHOICES."""
    if fps is None:
        fps = float(FPS_CHOICES[rng.integers(len(FPS_CHOICES))])
    return render_scenes(motion_scenes(sample_motion(rng), num_frames, fps), size)


# --------------------------------------------------------------------------- torch datasets


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in -1..1."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return t.movedim(-1, -3).contiguous()


def stream_seed(seed: int, rank: int = 0, world_size: int = 1) -> np.random.SeedSequence:
    """Seed sequence for (seed, rank, DataLoader worker): streams differ per rank and worker."""
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return np.random.SeedSequence([int(seed), int(rank), int(world_size), worker, workers])


class _ShardedStream(torch.utils.data.IterableDataset):
    """An endless stream, split in two: draws() makes the random choices of item after item (cheap) and
    make(draw) renders or decodes one item from its choices (costly, no randomness); iterating yields
    make(d) for d in draws(). A training rank that takes every W-th item of the one stream makes only its
    own items (train.common.StreamBatches)."""

    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__()
        if not (0 <= rank < world_size):
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)

    def worker_shard(self, rank: int, world_size: int):
        """A copy whose stream is disjoint per (rank, world_size), e.g. for torchrun ranks."""
        return self._with(rank=int(rank), world_size=int(world_size))

    def _with(self, **kw):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(kw)
        if not (0 <= new.rank < new.world_size):
            raise ValueError(f"rank must be in [0, world_size), got rank={new.rank}, world_size={new.world_size}")
        return new

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(stream_seed(self.seed, self.rank, self.world_size))

    def __iter__(self):
        return map(self.make, self.draws())

    def draws(self):
        raise NotImplementedError

    def make(self, draw):
        raise NotImplementedError


class CaptionedImages(_ShardedStream):
    """Infinite stream of (image float [3,H,W] in -1..1, caption) from training combos only.

    Deterministic per (seed, rank, world_size, DataLoader worker). `with_scene=True` adds the Scene.
    max_angle < 180 keeps objects near upright (like most photos), leaving rotation to the videos.
    """

    def __init__(self, size: int = 32, seed: int = 0, rank: int = 0, world_size: int = 1, with_scene: bool = False,
                 max_angle: float = 180.0):
        super().__init__(seed, rank, world_size)
        self.size, self.with_scene, self.max_angle = int(size), with_scene, float(max_angle)

    def draws(self):
        """The scenes of the stream."""
        rng = self._rng()
        while True:
            yield train_scene(rng, self.max_angle)

    def make(self, scene: Scene):
        item = (to_tensor(render(scene, self.size)), caption(scene))
        return (*item, scene) if self.with_scene else item


class WorldClips(_ShardedStream):
    """Infinite stream of unlabeled clips: (clip float [F,3,H,W] in -1..1, fps float).

    `fps_choices` sets the frame rates sampled (default FPS_CHOICES); no captions are produced.
    """

    def __init__(self, num_frames: int = 16, size: int = 32, seed: int = 0, rank: int = 0, world_size: int = 1,
                 fps_choices: tuple[float, ...] = FPS_CHOICES):
        super().__init__(seed, rank, world_size)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not fps_choices or any(not (f > 0) for f in fps_choices):
            raise ValueError(f"fps_choices must be positive frame rates, got {fps_choices}")
        self.num_frames, self.size, self.fps_choices = int(num_frames), int(size), tuple(float(f) for f in fps_choices)

    def draws(self):
        """(fps, motion) of each clip, drawn as render_clip draws them."""
        rng = self._rng()
        while True:
            fps = self.fps_choices[rng.integers(len(self.fps_choices))]
            yield fps, sample_motion(rng)

    def make(self, draw: tuple[float, Motion]):
        fps, motion = draw
        return to_tensor(render_scenes(motion_scenes(motion, self.num_frames, fps), self.size)), fps


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little")
