"""The toy world, its captions and held-out split, its motion clips, the detector, and real clips."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from mav_core.data import world as W
from mav_core.data.detect import detect

REPO = Path(__file__).resolve().parents[1]


def _accuracy(size: int, n: int, seed: int, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    colour_ok = shape_ok = 0
    for _ in range(n):
        scene = W.random_scene(rng)
        img = W.render(scene, size)
        if noise:
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        det = detect(img)
        colour_ok += det.colour == scene.colour
        shape_ok += det.shape == scene.shape
    return colour_ok / n, shape_ok / n


@pytest.mark.parametrize("size,n", [(32, 600), (128, 120)])
def test_detector_accuracy_on_ground_truth(size, n):
    colour_acc, shape_acc = _accuracy(size, n, seed=size)
    print(f"size {size}: colour {colour_acc:.3f} shape {shape_acc:.3f}")
    assert colour_acc >= 0.95
    assert shape_acc >= 0.90


def test_detector_tolerates_noise_at_32():
    colour_acc, shape_acc = _accuracy(32, 300, seed=7, noise=8.0)
    assert colour_acc >= 0.95
    assert shape_acc >= 0.85


def test_detector_centroid_and_empty_frame():
    scene = W.Scene("square", "red", "large", "gray", x=0.3, y=0.7, angle=20)
    det = detect(W.render(scene, 64))
    assert det.centroid is not None
    assert abs(det.centroid[0] - (0.3 * 64 - 0.5)) < 1.0 and abs(det.centroid[1] - (0.7 * 64 - 0.5)) < 1.0
    assert det.mask.shape == (64, 64) and det.mask.sum() == pytest.approx(det.area, rel=0.15)
    blank = np.full((32, 32, 3), 118, np.uint8)
    assert detect(blank).shape is None and detect(blank).colour is None
    # float input in -1..1, channels first, as the models produce it
    tensor = W.to_tensor(W.render(scene, 32))
    assert detect(tensor).colour == "red"
    with pytest.raises(ValueError, match="frame"):
        detect(np.zeros((32, 32), np.uint8))


def test_captions_and_heldout_split():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(5000):
        s = W.train_scene(rng)
        assert not W.is_heldout(s.colour, s.shape)
        assert W.parse_caption(W.caption(s)) == {"size": s.size, "colour": s.colour, "shape": s.shape, "background": s.background}
        seen.add((s.colour, s.shape))
    assert seen == set(W.TRAIN_COMBOS)
    # every colour and every shape still appears in training
    assert {c for c, _ in seen} == set(W.COLOURS) and {s for _, s in seen} == set(W.SHAPES)
    prompts = W.heldout_prompts()
    assert prompts and all(W.is_heldout(p["colour"], p["shape"]) for p in map(W.parse_caption, prompts))
    assert not set(prompts) & set(W.train_prompts())
    assert W.caption(W.Scene("triangle", "red", "small", "gray")) == "a small red triangle on a gray background"
    with pytest.raises(ValueError, match="colour"):
        W.Scene("triangle", "pink", "small", "gray")


def test_objects_stay_inside_the_frame():
    rng = np.random.default_rng(3)
    for _ in range(300):
        s = W.random_scene(rng)
        img = W.render(s, 32)
        bg = np.array(W.BACKGROUNDS[s.background])
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert np.abs(border.astype(int) - bg).max() <= 2


def test_streams_are_deterministic_per_seed_and_rank():
    def take(ds, n):
        return list(itertools.islice(iter(ds), n))

    a, b, c = take(W.CaptionedImages(32, seed=5), 4), take(W.CaptionedImages(32, seed=5), 4), take(W.CaptionedImages(32, seed=6), 4)
    assert all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    img, cap = a[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and -1 <= img.min() and img.max() <= 1
    assert isinstance(cap, str)
    r0 = take(W.CaptionedImages(32, seed=5).worker_shard(0, 2), 3)
    r1 = take(W.CaptionedImages(32, seed=5).worker_shard(1, 2), 3)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(r0, r1))

    clips = take(W.WorldClips(num_frames=6, size=32, seed=1), 3)
    again = take(W.WorldClips(num_frames=6, size=32, seed=1), 3)
    assert all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(clips, again))
    clip, fps = clips[0]
    assert clip.shape == (6, 3, 32, 32) and fps in W.FPS_CHOICES


def _path_length(frames: np.ndarray) -> tuple[float, float]:
    """(total centroid path length, mean per-frame displacement) measured by the detector."""
    cents = np.array([detect(f).centroid for f in frames])
    steps = np.linalg.norm(np.diff(cents, axis=0), axis=1)
    return float(steps.sum()), float(steps.mean())


@pytest.mark.parametrize("kind", W.MOTIONS)
def test_clips_move(kind):
    rng = np.random.default_rng(11)
    motion = W.sample_motion(rng, kind)
    frames = W.render_scenes(W.motion_scenes(motion, 8, fps=8.0), 32)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    change = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (change > 0).all(), "every frame differs from the previous one"
    if kind in ("translate", "pan"):
        assert _path_length(frames)[0] > 1.0


def test_higher_fps_gives_smaller_steps_for_the_same_motion():
    rng = np.random.default_rng(2)
    for _ in range(5):
        motion = W.sample_motion(rng, "translate")
        slow = W.render_scenes(W.motion_scenes(motion, 6, fps=4.0), 32)
        fast = W.render_scenes(W.motion_scenes(motion, 6, fps=24.0), 32)
        assert _path_length(fast)[1] < _path_length(slow)[1]
        # the same physical instant renders the same frame whatever the sampling rate
        assert np.array_equal(W.render_scenes(W.motion_scenes(motion, 7, fps=24.0), 32)[6], slow[1])


def test_render_is_fast_enough():
    import time

    rng = np.random.default_rng(0)
    scenes = [W.random_scene(rng) for _ in range(500)]
    t = time.perf_counter()
    for s in scenes:
        W.render(s, 32)
    assert 500 / (time.perf_counter() - t) > 1000  # images per second on one core (measured ~6000)


CLIPS = REPO / "data" / "clips"


@pytest.mark.skipif(not (CLIPS / "manifest.json").exists(), reason="no real clips: run scripts/fetch_clips.py")
def test_real_clips_stream_and_split():
    from mav_core.data.clips import RealClips, list_clips, template_name

    train, held = list_clips(CLIPS, "train"), list_clips(CLIPS, "heldout")
    assert train and held
    assert not {template_name(c.path) for c in train} & {template_name(c.path) for c in held}
    ds = RealClips(CLIPS, num_frames=8, size=32, seed=0, split="heldout")
    items = list(itertools.islice(iter(ds), 2))
    again = list(itertools.islice(iter(RealClips(CLIPS, num_frames=8, size=32, seed=0, split="heldout")), 2))
    for (clip, fps), (clip2, fps2) in zip(items, again):
        assert clip.shape == (8, 3, 32, 32) and -1 <= clip.min() and clip.max() <= 1
        assert fps > 0 and fps == fps2 and torch.equal(clip, clip2)


def test_scene_cuts_found_at_a_join_and_not_in_smooth_motion():
    from mav_core.data.clips import scene_cuts, shots

    def clip(shape, colour, background, vx):
        start = W.Scene(shape, colour, "large", background, x=0.4, y=0.5)
        return W.render_scenes(W.motion_scenes(W.Motion("translate", start, vx=vx, vy=0.2), 12, fps=12.0), 64)

    first, second = clip("circle", "red", "black", 0.3), clip("square", "yellow", "gray", -0.3)
    assert scene_cuts(first) == [] and scene_cuts(second) == []
    joined = np.concatenate([first, second])
    assert scene_cuts(joined) == [12]
    assert shots(joined) == [(0, 12), (12, 24)]


def test_relocate_keeps_the_caption_and_moves_the_object():
    rng = np.random.default_rng(3)
    for _ in range(50):
        scene = W.random_scene(rng)
        moved = W.relocate(scene, rng)
        assert W.caption(moved) == W.caption(scene)
        assert (moved.x, moved.y) != (scene.x, scene.y)
        lo, hi = W.position_range(moved.shape, moved.size, moved.scale)
        assert lo <= moved.x <= hi and lo <= moved.y <= hi


def test_near_upright_captioned_images():
    stream = iter(W.CaptionedImages(size=16, seed=4, with_scene=True, max_angle=15.0))
    angles = [next(stream)[2].angle for _ in range(200)]
    assert all(a <= 15.0 or a >= 345.0 for a in angles)
    assert min(a for a in angles if a <= 15.0) < 2.0 and max(a for a in angles if a >= 345.0) > 358.0
    stream = iter(W.CaptionedImages(size=16, seed=4, with_scene=True))
    assert any(60 < next(stream)[2].angle < 300 for _ in range(50)), "the default keeps every angle"
