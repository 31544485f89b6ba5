"""Prompt travel: per-frame conditioning from keyframed prompts.

Each keyframe is (start_frame, cond) with cond = {"context": [B, L, D], "image_embed": [B, E] (optional)}.
Keyframe k holds from its start frame; over the `blend` frames before the next keyframe's start it
fades linearly into the next one (reached exactly at that start). The result is the per-frame layout
SpaceTimeUNet.forward accepts: context [B, F, L, D], image_embed [B, F, E]. A single keyframe gives
its cond unchanged (the shared-context fast path). The negative of CFG stays per-clip; `align_per_frame` repeats it over
the frames so both guidance halves concatenate.
"""
from __future__ import annotations

import torch

COND_KEYS = ("context", "image_embed")


def keyframe_weights(starts: list[int], frames: int, blend: int = 0) -> torch.Tensor:
    """[F, K] weights (rows sum to 1) of K keyframes starting at `starts` (sorted, first 0)."""
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"keyframe starts must begin at 0 and increase strictly, got {starts}")
    if isinstance(blend, bool) or not isinstance(blend, int) or blend < 0:
        raise ValueError(f"blend must be an integer >= 0 frames, got {blend!r}")
    weights = torch.zeros(frames, len(starts), dtype=torch.float64)
    for frame in range(frames):
        k = max(i for i, s in enumerate(starts) if s <= frame)
        weights[frame, k] = 1.0
        if k + 1 < len(starts) and blend > 0:
            nxt = starts[k + 1]
            width = min(blend, nxt - starts[k])
            into = (frame - (nxt - width)) / width     # 0 at the blend's start, 1 at the next start
            if into > 0:
                weights[frame, k] = 1.0 - into
                weights[frame, k + 1] = into
    return weights


def frame_conditioning(keyframes: list[tuple[int, dict]], frames: int, blend: int = 0) -> dict:
    """Keyframed conds -> one cond with per-frame context [B, F, L, D] (and image_embed [B, F, E])."""
    if not keyframes:
        raise ValueError("a prompt schedule needs at least one keyframe")
    keyframes = sorted(keyframes, key=lambda kv: kv[0])
    starts = [int(s) for s, _ in keyframes]
    if starts[-1] >= frames:
        raise ValueError(f"keyframe start {starts[-1]} is past the last frame ({frames} frames)")
    conds = [c for _, c in keyframes]
    if len(conds) == 1:
        return dict(conds[0])
    weights = keyframe_weights(starts, frames, blend)
    out = dict(conds[0])
    for key in COND_KEYS:
        values = [c.get(key) for c in conds]
        if all(v is None for v in values):
            continue
        missing = [s for s, v in zip(starts, values) if v is None]
        if missing:
            raise ValueError(f"keyframes at frames {missing} have no {key!r} while others do")
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) != 1:
            raise ValueError(f"keyframe {key!r} shapes differ: {sorted(shapes)} (encode every prompt with "
                             "the same text encoder)")
        stacked = torch.stack(values, dim=1)                               # [B, K, ...]
        w = weights.to(stacked.device, stacked.dtype)
        out[key] = torch.einsum("fk,bk...->bf...", w, stacked).contiguous()   # [B, F, ...]
    return out


def is_per_frame(cond: dict) -> bool:
    ctx, emb = cond.get("context"), cond.get("image_embed")
    return (ctx is not None and ctx.dim() == 4) or (emb is not None and emb.dim() == 3)


def align_per_frame(cond: dict, uncond: dict | None, frames: int) -> tuple[dict, dict | None]:
    """Both halves of CFG in the same layout: whichever is per-frame makes the other per-frame too."""
    if uncond is None:
        return cond, None
    if is_per_frame(cond) or is_per_frame(uncond):
        cond = _all_per_frame(cond, frames)
        uncond = _all_per_frame(uncond, frames)
    return cond, uncond


def _all_per_frame(cond: dict, frames: int) -> dict:
    out = dict(cond)
    for key, clip_rank in (("context", 3), ("image_embed", 2)):
        v = cond.get(key)
        if v is not None and v.dim() == clip_rank:
            out[key] = v.unsqueeze(1).expand(-1, frames, *v.shape[1:]).contiguous()
    return out
