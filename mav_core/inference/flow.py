"""Motion-compensated in-between frames: bidirectional optical flow between two known frames (OpenCV DIS or
Farneback, on the CPU, at most `max_side` pixels), flows to any time t in (0, 1), both frames warped there
with kornia, and their average. Several flow estimates of the same pair (DIS `variants`) can be made and
their warped frames averaged, which cancels part of each estimate's errors. Frames are [B, 3, H, W] in
-1..1 on any device and dtype; the result follows the input's device and dtype."""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import remap

from ..errors import InputError, check_choice, check_int, check_number
from ..models.flow_fusion import FLOW_VARIANTS, WARPS

FLOW_METHODS = ("dis", "farneback")
DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
MIN_SIDE = 32


@dataclass(frozen=True)
class FlowOptions:
    """method: 'dis' or 'farneback'; preset: the DIS preset; max_side: flow is estimated on frames shrunk
    to at most this many pixels on their long side (and scaled back up); sigma: forward-backward
    consistency error (px) at which a warped frame's weight falls to 1/e ('superslomo' warp only);
    variational: DIS refinement iterations (-1: the preset's); warp: 'linear' (frame 0 read at
    x + t·flow10(x), frame 1 at x + (1-t)·flow01(x), averaged with the time weights 1-t, t) or
    'superslomo' (Super-SloMo's flow combination, visibility-weighted); variants: names in FLOW_VARIANTS,
    extra DIS estimates whose warped frames are averaged with the main estimate's."""
    method: str = "dis"
    preset: str = "medium"
    max_side: int = 512
    sigma: float = 1.0
    variational: int = -1
    warp: str = "linear"
    variants: tuple = ("patch4", "ultrafast_x2")

    def validate(self) -> "FlowOptions":
        check_choice("flow_method", self.method, FLOW_METHODS)
        check_choice("flow_preset", self.preset, tuple(DIS_PRESETS))
        check_int("flow_max_side", self.max_side, MIN_SIDE, 1 << 14)
        check_number("flow_sigma", self.sigma, 0.0, 1e4, lo_open=True)
        check_int("flow_variational", self.variational, -1, 100)
        check_choice("flow_warp", self.warp, WARPS)
        if not isinstance(self.variants, tuple):
            raise InputError("flow_variants", f"expected a tuple of names, got {self.variants!r}")
        for name in self.variants:
            check_choice("flow_variants", name, tuple(FLOW_VARIANTS))
        return self

    def replace(self, **kw) -> "FlowOptions":
        return replace(self, **kw)


@dataclass
class WarpedPair:
    """Both known frames warped to time t, frame 0's weight (w0 + w1 = 1), the consistency errors (px) and
    the weighted average."""
    warped0: torch.Tensor
    warped1: torch.Tensor
    weight0: torch.Tensor
    error0: torch.Tensor
    error1: torch.Tensor
    average: torch.Tensor


def check_frame_size(param: str, h: int, w: int) -> None:
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(param, f"frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels for motion-compensated "
                                f"interpolation, got {w}x{h}")


def _gray_uint8(frame: torch.Tensor, size: tuple[int, int] | None) -> np.ndarray:
    """[3, H, W] -1..1 -> uint8 grey [h, w] (resized to size=(w, h) when given)."""
    rgb = ((frame.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA) if size is not None else grey


def _flow_cv(g0: np.ndarray, g1: np.ndarray, options: FlowOptions, variant: str | None = None) -> np.ndarray:
    """Flow g0 -> g1 [h, w, 2] by the main method, or by a FLOW_VARIANTS entry (DIS)."""
    if variant is None and options.method == "farneback":
        return cv2.calcOpticalFlowFarneback(g0, g1, None, 0.5, 4, 9, 3, 5, 1.1, 0)
    preset, patch, enlarge = FLOW_VARIANTS[variant] if variant is not None else (options.preset, 0, 1)
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    if options.variational >= 0:
        dis.setVariationalRefinementIterations(options.variational)
    if patch:
        dis.setPatchSize(patch)
        dis.setPatchStride(max(1, patch // 2))
    if enlarge == 1:
        return dis.calc(g0, g1, None)
    h, w = g0.shape
    big = [cv2.resize(g, (w * enlarge, h * enlarge), interpolation=cv2.INTER_CUBIC) for g in (g0, g1)]
    return cv2.resize(dis.calc(*big, None), (w, h), interpolation=cv2.INTER_AREA) / enlarge


def estimate_flow_set(f0: torch.Tensor, f1: torch.Tensor, options: FlowOptions = FlowOptions()):
    """Flows 0->1 and 1->0 (pixels, float32 on f0's device), each [V, B, 2, H, W], between frames
    [B, 3, H, W]: V = 1 + len(options.variants) estimates, the main method's first, then one per variant."""
    b, _, h, w = f0.shape
    scale = min(1.0, options.max_side / max(h, w))
    size = (max(8, round(w * scale)), max(8, round(h * scale))) if scale < 1 else None
    greys = [(_gray_uint8(f0[i], size), _gray_uint8(f1[i], size)) for i in range(b)]
    variants = (None, *options.variants)
    flows = np.stack([_flow_cv(*(g if back == 0 else g[::-1]), options, v)
                      for v in variants for g in greys for back in (0, 1)])        # [V*B*2, h, w, 2]
    flows = torch.from_numpy(flows).permute(0, 3, 1, 2).to(f0.device)
    if size is not None:   # back to full size, vectors scaled per axis
        fh, fw = flows.shape[-2:]
        flows = F.interpolate(flows, size=(h, w), mode="bilinear", align_corners=False)
        flows = flows * torch.tensor([w / fw, h / fh], device=flows.device).view(1, 2, 1, 1)
    flows = flows.unflatten(0, (len(variants), b, 2))
    return flows[:, :, 0].contiguous(), flows[:, :, 1].contiguous()


def estimate_flows(f0: torch.Tensor, f1: torch.Tensor, options: FlowOptions = FlowOptions()):
    """The main estimate alone: flow 0->1 and 1->0, each [B, 2, H, W]."""
    flow01, flow10 = estimate_flow_set(f0, f1, options.replace(variants=()))
    return flow01[0], flow10[0]


def intermediate_flows(flow01: torch.Tensor, flow10: torch.Tensor, t: float, warp: str = "superslomo"):
    """Flows from time t back to frame 0 and on to frame 1 under linear motion. 'linear': each read at the
    same pixel from the other frame's flow (t·flow10, (1-t)·flow01); 'superslomo': Super-SloMo's combination
    of both flows."""
    if warp == "linear":
        return t * flow10, (1 - t) * flow01
    ft0 = -(1 - t) * t * flow01 + t * t * flow10
    ft1 = (1 - t) * (1 - t) * flow01 - t * (1 - t) * flow10
    return ft0, ft1


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample image [B, C, H, W] at x + flow(x) (kornia remap, borders replicated)."""
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    map_x = (xs + flow[:, 0]).to(image.dtype)
    map_y = (ys + flow[:, 1]).to(image.dtype)
    return remap(image, map_x, map_y, mode="bilinear", padding_mode="border", align_corners=True)


def warp_pair(f0: torch.Tensor, f1: torch.Tensor, flows, t: float, sigma: float = 1.0,
              warp: str = "superslomo") -> WarpedPair:
    """Both frames warped to time t, with the forward-backward consistency error (px) at each sampled
    position: a pixel whose sampled position in frame 0 (1), carried on by that frame's own flow, misses
    the position sampled in the other frame is occluded or mis-tracked there. 'superslomo': the weights
    fall as exp(-(error/sigma)^2) times the time weights (1-t, t); 'linear': the time weights alone (the
    errors are left to the fusion network)."""
    flow01, flow10 = flows
    ft0, ft1 = intermediate_flows(flow01, flow10, t, warp)
    # each frame warped together with its own flow (the flow at the sampled position), in float32
    on0 = backward_warp(torch.cat([f0.float(), flow01], 1), ft0)
    on1 = backward_warp(torch.cat([f1.float(), flow10], 1), ft1)
    warped0, warped1 = on0[:, :3].to(f0.dtype), on1[:, :3].to(f1.dtype)
    error0 = (ft0 + on0[:, 3:] - ft1).square().sum(1, keepdim=True).sqrt()
    error1 = (ft1 + on1[:, 3:] - ft0).square().sum(1, keepdim=True).sqrt()
    if warp == "linear":
        weight0 = torch.full_like(error0, 1 - t)
    else:
        v0 = (1 - t) * torch.exp(-(error0 / sigma).square())
        v1 = t * torch.exp(-(error1 / sigma).square())
        weight0 = torch.where(v0 + v1 > 1e-6, v0 / (v0 + v1).clamp_min(1e-6), torch.full_like(v0, 1 - t))
    weight0 = weight0.to(f0.dtype)
    average = weight0 * warped0 + (1 - weight0) * warped1
    return WarpedPair(warped0, warped1, weight0, error0.to(f0.dtype), error1.to(f0.dtype), average)


def warp_set(f0: torch.Tensor, f1: torch.Tensor, flow_set, t: float,
             options: FlowOptions = FlowOptions()) -> WarpedPair:
    """warp_pair for every estimate of estimate_flow_set (one batched warp), each field averaged over them."""
    flow01, flow10 = flow_set
    v = flow01.shape[0]
    if v == 1:
        return warp_pair(f0, f1, (flow01[0], flow10[0]), t, options.sigma, options.warp)
    pair = warp_pair(f0.repeat(v, 1, 1, 1), f1.repeat(v, 1, 1, 1), (flow01.flatten(0, 1), flow10.flatten(0, 1)), t,
                     options.sigma, options.warp)
    mean = lambda x: x.unflatten(0, (v, -1)).mean(0)   # noqa: E731
    fields = ("warped0", "warped1", "weight0", "error0", "error1", "average")
    return WarpedPair(*(mean(getattr(pair, f)) for f in fields))


def flow_average(f0: torch.Tensor, f1: torch.Tensor, t: float, options: FlowOptions = FlowOptions()) -> torch.Tensor:
    """The motion-compensated frame at time t between frames [B, 3, H, W] (no learned part)."""
    return warp_set(f0, f1, estimate_flow_set(f0, f1, options), t, options).average


def fusion_inputs(pair: WarpedPair, f0: torch.Tensor, f1: torch.Tensor, t: float):
    """(features [B, 19, H, W], average, warped0 - warped1): what FlowFusionNet takes."""
    b, _, h, w = f0.shape
    squash = lambda e: e / (1 + e)   # noqa: E731  (errors in px -> [0, 1))
    time = torch.full((b, 1, h, w), float(t), device=f0.device, dtype=f0.dtype)
    features = torch.cat([pair.warped0, pair.warped1, pair.average, pair.weight0 * 2 - 1, squash(pair.error0),
                          squash(pair.error1), f0, f1, time], 1)
    return features, pair.average, pair.warped0 - pair.warped1


def in_between(f0: torch.Tensor, f1: torch.Tensor, times, net: torch.nn.Module | None = None,
               options: FlowOptions = FlowOptions()) -> list[torch.Tensor]:
    """Frames at each time in `times` (each in (0, 1)) between frames f0 and f1 [B, 3, H, W]: one flow
    estimate (set) for the pair, then per time the warped average, fused by `net` when given (in the net's
    dtype; the result is in the input's dtype and on its device)."""
    flow_set = estimate_flow_set(f0, f1, options)
    out = []
    for t in times:
        pair = warp_set(f0, f1, flow_set, t, options)
        if net is None:
            out.append(pair.average)
            continue
        dtype = next(net.parameters()).dtype
        features, average, difference = (x.to(dtype) for x in fusion_inputs(pair, f0, f1, t))
        out.append(net(features, average, difference).to(f0.dtype))
    return out
