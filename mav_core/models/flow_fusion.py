"""The fusion network of the motion-compensated ↑F: from both known frames warped to time t (and their
visibility weights, consistency errors, the frames themselves and t) it predicts a change of the
visibility mask and a colour residual. Its last convolution starts at zero, so an untrained network
returns exactly the flow-warped average it is given; training can only move away from it where that helps."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigDict

FUSION_MODULE = "FlowFusionNet"
FLOW_INTERPOLATOR_FILE = "flow_interpolator.safetensors"   # the shipped file in weights/mav-tiny
# Extra flow estimates of a pair (inference/flow.py), averaged with the main one: (DIS preset, patch size or
# 0 for the preset's, factor the grey frames are enlarged by before estimating).
FLOW_VARIANTS = {"patch4": ("medium", 4, 1), "ultrafast_x2": ("ultrafast", 0, 2), "finest0": ("medium", 0, 1)}
WARPS = ("linear", "superslomo")   # how both frames are warped to time t (inference.flow.intermediate_flows)
FEATURE_CHANNELS = 19   # warped0, warped1, average (3 each), weight0, error0, error1, frame0, frame1 (3 each), t


@dataclass
class FlowFusionConfig(ConfigDict):
    """widths: channels at full, 1/2 and 1/4 resolution. The flow settings travel with the weights the
    network was trained on: flow_method ('dis' / 'farneback'), flow_preset (DIS), flow_max_side (pixels of
    the long side the flow is estimated at, at most), flow_sigma (consistency error scale, px), flow_warp
    and flow_variants (inference.flow.FlowOptions' warp and variants)."""
    widths: tuple = (12, 24, 32)
    flow_method: str = "dis"
    flow_preset: str = "medium"
    flow_max_side: int = 512
    flow_sigma: float = 1.0
    flow_warp: str = "linear"
    flow_variants: tuple = ("patch4", "ultrafast_x2")

    @classmethod
    def from_dict(cls, d: dict):
        """Files saved before flow_warp existed were trained on the Super-SloMo warp of one estimate."""
        if "flow_warp" not in d:
            d = {**d, "flow_warp": "superslomo", "flow_variants": ()}
        return super().from_dict(d)

    def __post_init__(self):
        self.widths = tuple(self.widths)
        self.flow_variants = tuple(self.flow_variants)
        if self.flow_warp not in WARPS:
            raise ValueError(f"flow_warp must be one of {WARPS}, got {self.flow_warp!r}")
        if not all(v in FLOW_VARIANTS for v in self.flow_variants):
            raise ValueError(f"flow_variants must be names in {tuple(FLOW_VARIANTS)}, got {self.flow_variants!r}")
        if len(self.widths) != 3 or not all(type(w) is int and 1 <= w <= 1024 for w in self.widths):
            raise ValueError(f"widths must be three integers in [1, 1024], got {self.widths}")
        if self.flow_method not in ("dis", "farneback"):
            raise ValueError(f"flow_method must be 'dis' or 'farneback', got {self.flow_method!r}")
        if self.flow_preset not in ("ultrafast", "fast", "medium"):
            raise ValueError(f"flow_preset must be 'ultrafast', 'fast' or 'medium', got {self.flow_preset!r}")
        if type(self.flow_max_side) is not int or not 32 <= self.flow_max_side <= 1 << 14:
            raise ValueError(f"flow_max_side must be an integer in [32, 16384], got {self.flow_max_side!r}")
        if not isinstance(self.flow_sigma, (int, float)) or not 0 < self.flow_sigma <= 1e4:
            raise ValueError(f"flow_sigma must be a number in (0, 1e4], got {self.flow_sigma!r}")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.1))


class FlowFusionNet(nn.Module):
    """forward(features [B, 19, H, W], average [B, 3, H, W], difference [B, 3, H, W]) ->
    average + m * difference + residual, where (m, residual) come from a two-level UNet over the features
    (difference = warped0 - warped1, so m moves the visibility mask). Any H, W (padded to a multiple of 4
    inside and cropped back)."""

    def __init__(self, config: FlowFusionConfig = FlowFusionConfig()):
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        self.enc1 = _conv(FEATURE_CHANNELS, w1)
        self.enc2 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2))
        self.enc3 = nn.Sequential(_conv(w2, w3, 2), _conv(w3, w3))
        self.dec2 = _conv(w3 + w2, w2)
        self.dec1 = _conv(w2 + w1, w1)
        self.head = nn.Conv2d(w1, 4, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor, average: torch.Tensor, difference: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        x = F.pad(features, (0, pw, 0, ph), mode="replicate") if ph or pw else features
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        out = self.head(d1)[..., :h, :w]
        return average + out[:, :1] * difference + out[:, 1:]
