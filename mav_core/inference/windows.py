"""Sliding temporal windows: long videos denoised a window at a time in one window's memory; with
`loop` the windows wrap around the clip's end (a closed loop: the last frame flows into the first)."""
from __future__ import annotations

import dataclasses
import math

import torch


def _window_slice(name: str, value, frames: int, a: int, b: int):
    """The window's frames [a, b) of a conditioning value that has a frame axis: video-shaped tensors
    [B, C, F, H, W] (e.g. ↑F's known frames), prompt travel's per-frame context [B, F, L, D] and
    image_embed [B, F, E], and the hint videos of `controls` (models.control.Control, hint [B, C, F, H, W]);
    anything else (per-clip conditioning, fps, a single-frame hint) is passed through."""
    if name == "controls" and isinstance(value, (list, tuple)):
        return [dataclasses.replace(c, hint=_window_slice("hint", c.hint, frames, a, b))
                if isinstance(getattr(c, "hint", None), torch.Tensor) else c for c in value]
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 5 and value.shape[2] == frames:
        return value[:, :, a:b]
    per_frame = (name == "context" and value.dim() == 4) or (name == "image_embed" and value.dim() == 3)
    if per_frame:
        if value.shape[1] != frames:
            raise ValueError(f"per-frame {name} has {value.shape[1]} frames, the video {frames}")
        return value[:, a:b]
    return value


def _window_take(name: str, value, frames: int, index: torch.Tensor):
    """_window_slice for a wrapped window: the frames at `index` (positions modulo the clip's length)."""
    if name == "controls" and isinstance(value, (list, tuple)):
        return [dataclasses.replace(c, hint=_window_take("hint", c.hint, frames, index))
                if isinstance(getattr(c, "hint", None), torch.Tensor) else c for c in value]
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 5 and value.shape[2] == frames:
        return value.index_select(2, index.to(value.device))
    if (name == "context" and value.dim() == 4) or (name == "image_embed" and value.dim() == 3):
        if value.shape[1] != frames:
            raise ValueError(f"per-frame {name} has {value.shape[1]} frames, the video {frames}")
        return value.index_select(1, index.to(value.device))
    return value


class FrameWindows(torch.nn.Module):
    """Long videos in bounded memory (AnimateDiff-style context windows): the wrapped network runs on
    overlapping windows of `window` frames and the predictions are averaged where windows overlap, with
    pyramid weights (largest mid-window), so every step sees the whole clip and seams blend.

    Conditioning with a frame axis (video-shaped tensors such as ↑F's masked frames, prompt travel's
    per-frame context / image_embed) is sliced with the window; everything else is passed through. Peak
    memory is that of one window.

    loop=True: the clip is a closed loop. Windows wrap around its end (frame F-1 is followed by frame 0), all
    of them full length and none holding the whole loop (loop_layout), and their start moves every call, so
    the wrap transition is inside a window at every step and is denoised like any other."""

    def __init__(self, net: torch.nn.Module, window: int, overlap: int | None = None, loop: bool = False):
        super().__init__()
        if not isinstance(window, int) or isinstance(window, bool) or window < 2:
            raise ValueError(f"context_window must be an integer >= 2 frames, got {window!r}")
        overlap = max(1, window // 4) if overlap is None else overlap
        if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < window:
            raise ValueError(f"context_overlap must be an integer in [0, {window - 1}], got {overlap!r}")
        self.net, self.window, self.overlap, self.loop = net, window, overlap, bool(loop)
        self.calls = 0

    def spans(self, frames: int, shift: int = 0) -> list[tuple[int, int]]:
        """[start, end) of the windows covering the clip, each overlapping the previous by `overlap` frames.
        The first window ends at shift + overlap (a full window at shift 0) and the last one ends at the last
        frame, so both can be shorter than `window`: with them every boundary moves with `shift`, the clip's
        ends included (full-length end windows would put the same boundary at every step)."""
        if frames <= self.window:
            return [(0, frames)]
        stride = self.window - self.overlap
        shift %= stride
        spans = [(0, shift + self.overlap if shift else self.window)]
        while spans[-1][1] < frames:
            start = spans[-1][1] - self.overlap
            spans.append((start, min(start + self.window, frames)))
        return spans

    def loop_layout(self, frames: int) -> tuple[int, int]:
        """(window, overlap) of a closed loop of `frames`. A loop that fits one window is sampled in windows of
        half the clip overlapping by half a window: a window holding the whole loop would ask the network for
        one motion from its first frame to its last, which cannot close."""
        if frames <= self.window:
            window = max(2, -(-frames // 2))
            return window, window // 2
        return self.window, self.overlap

    def loop_spans(self, frames: int, shift: int = 0) -> list[tuple[int, int]]:
        """Wrapped windows of a closed loop: (start, length), start in [0, frames), frames start..start+length-1
        modulo `frames`: full windows (loop_layout) every window - overlap frames from `shift`, the last one
        overlapping the first by at least `overlap`."""
        window, overlap = self.loop_layout(frames)
        stride = window - overlap
        count = -(-frames // stride)
        return [((shift + k * stride) % frames, window) for k in range(count)]

    def loop_step(self, frames: int) -> int:
        """How far a closed loop's windows move per call: a quarter stride, plus one while that would revisit
        the same few starts (so over the steps the starts run through every frame)."""
        window, overlap = self.loop_layout(frames)
        step = max(1, (window - overlap) // 4)
        while math.gcd(step, frames) != 1 and step < frames - 1:
            step += 1
        return step

    def shifts(self) -> list[int]:
        """The boundary shifts the calls cycle through."""
        stride = self.window - self.overlap
        step = max(1, stride // 4)
        return sorted({(i * step) % stride for i in range(stride)})

    def edge_transitions(self, frames: int) -> list[int]:
        """Frame transitions t -> t+1 that lie at a window edge in any call (where a seam could show)."""
        edges = set()
        for shift in self.shifts():
            for a, b in self.spans(frames, shift):
                edges |= {a - 1, b - 1}
        return sorted(edges - {-1, frames - 1})

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        frames = x.shape[2]
        if self.loop and frames > 1:
            return self._forward_loop(x, t, cond)
        if frames <= self.window:
            return self.net(x, t, **cond)
        # the window boundaries move every call (every sampling step) by a quarter stride, so no frame
        # transition sits at a window edge at every step: seams average out instead of adding up
        stride = self.window - self.overlap
        shift = (self.calls * max(1, stride // 4)) % stride
        self.calls += 1
        out = total = None
        for a, b in self.spans(frames, shift):
            n = b - a
            ramp = torch.arange(n, device=x.device, dtype=torch.float32)
            weight = torch.minimum(ramp + 1, n - ramp)                  # pyramid: 1, 2, ..., 2, 1
            part = {k: _window_slice(k, v, frames, a, b) for k, v in cond.items()}
            y = self.net(x[:, :, a:b], t, **part).float()
            if out is None:
                out = y.new_zeros(y.shape[0], y.shape[1], frames, *y.shape[3:])
                total = torch.zeros(frames, device=x.device)
            out[:, :, a:b] += y * weight[:, None, None]
            total[a:b] += weight
        return (out / total[:, None, None]).to(x.dtype)

    def _forward_loop(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        frames = x.shape[2]
        shift = (self.calls * self.loop_step(frames)) % frames
        self.calls += 1
        out = total = None
        for start, n in self.loop_spans(frames, shift):
            index = (start + torch.arange(n)) % frames
            ramp = torch.arange(n, device=x.device, dtype=torch.float32)
            weight = torch.minimum(ramp + 1, n - ramp)
            part = {k: _window_take(k, v, frames, index) for k, v in cond.items()}
            y = self.net(x.index_select(2, index.to(x.device)), t, **part).float()
            if out is None:
                out = y.new_zeros(y.shape[0], y.shape[1], frames, *y.shape[3:])
                total = torch.zeros(frames, device=x.device)
            index = index.to(x.device)
            out.index_add_(2, index, y * weight[:, None, None])
            total.index_add_(0, index, weight)
        return (out / total[:, None, None]).to(x.dtype)
