"""MAV-Tiny: the small Make-A-Video family we train and ship as the embedded default.

Pixel space throughout: D^t makes 16 frames at 32x32, ↑F multiplies frames, SR^t_l takes the video
to 64x64, SR_h each frame to 128x128. Configs live here so training, the CLI and the nodes agree.
"""
from __future__ import annotations

from pathlib import Path

from ..diffusion.schedule import NoiseSchedule
from .unet import UNetConfig

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "mav-tiny"
STAGE_FILES = {
    "text": "text.safetensors",
    "prior": "prior.safetensors",
    "decoder": "decoder.safetensors",          # D^t (image mode = D)
    "interpolator": "interpolator.safetensors",  # ↑F
    "sr_video": "sr_video.safetensors",          # SR^t_l, 32 -> 64, spatiotemporal
    "sr_frame": "sr_frame.safetensors",          # SR_h, 64 -> 128, per frame, shared noise
}

CONTROL_FILES = {"canny": "control_canny.safetensors"}   # ControlAdapters for the decoder
REGRESSION_INTERPOLATOR_FILE = "interpolator_regression.safetensors"   # one-pass ↑F (interpolation only)

BASE_SIZE = 32
FRAMES = 16
SCHEDULE = NoiseSchedule("cosine")
PREDICTION = "v"


def decoder_config(text_width: int = 128, embed_dim: int = 64) -> UNetConfig:
    return UNetConfig(in_channels=3, out_channels=3, block_out_channels=(32, 64, 96), layers_per_block=1,
                      attention_levels=(False, True, True), context_dim=text_width, norm_num_groups=8,
                      attention_head_dim=32, image_embed_dim=embed_dim, image_embed_tokens=2)


def interpolator_config(text_width: int = 128, embed_dim: int = 64) -> UNetConfig:
    cfg = decoder_config(text_width, embed_dim)
    cfg.extra_in_channels = 4  # masked frames (3) + mask (1)
    return cfg


def sr_config(video: bool) -> UNetConfig:
    return UNetConfig(in_channels=3, out_channels=3, extra_in_channels=3, block_out_channels=(32, 64),
                      layers_per_block=1, attention_levels=(False, False), mid_attention=False,
                      context_dim=8, norm_num_groups=8, pseudo3d_convs=video, temporal_attention=video,
                      fps_conditioning=False, image_embed_dim=0)


def default_weights(stage: str) -> Path:
    return WEIGHTS_DIR / STAGE_FILES[stage]
