"""Training data: the procedurally rendered toy world (captioned images, motion clips), its detector,
and unlabeled real clips decoded from animated WEBP files."""

from .clips import RealClips, decode_webp, list_clips
from . import detect  # the module; the function is detect.detect (also re-exported as detect_object)
from .detect import Detection
from .detect import detect as detect_object
from .world import (
    BACKGROUNDS, COLOURS, FPS_CHOICES, HELDOUT_COMBOS, MOTIONS, SHAPES, SIZES, TRAIN_COMBOS,
    CaptionedImages, Motion, Scene, WorldClips, caption, heldout_prompts, motion_scenes, parse_caption,
    render, render_clip, render_scenes, sample_motion, train_prompts, train_scene,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "FPS_CHOICES", "HELDOUT_COMBOS", "MOTIONS", "SHAPES", "SIZES", "TRAIN_COMBOS",
    "CaptionedImages", "Detection", "Motion", "RealClips", "Scene", "WorldClips", "caption", "decode_webp",
    "detect", "detect_object", "heldout_prompts", "list_clips", "motion_scenes", "parse_caption", "render", "render_clip",
    "render_scenes", "sample_motion", "train_prompts", "train_scene",
]
