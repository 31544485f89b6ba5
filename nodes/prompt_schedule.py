"""Prompt travel: MakeAVideo Prompt Schedule keyframes up to MAX_KEYFRAMES CONDITIONING inputs; the
Sampler turns the schedule (key SCHEDULE_KEY) of its positive input into per-frame conditioning."""
from __future__ import annotations

from ..mav_core.inference.prompt_travel import align_per_frame, frame_conditioning
from .common import CATEGORY, conditioning_dict

SCHEDULE_KEY = "mav_schedule"          # list of (start_frame, CONDITIONING, input name)
BLEND_KEY = "mav_schedule_blend"       # frames over which one keyframe fades into the next
MAX_KEYFRAMES = 4   # conditioning_1..4 (the signature of PromptSchedule.schedule)


class PromptSchedule:
    CATEGORY = CATEGORY
    FUNCTION = "schedule"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    DESCRIPTION = ("Prompt travel: conditioning_1 holds from frame 0, each further connected conditioning_k "
                   "from start_k on; over blend_frames frames before a start the previous prompt fades "
                   "linearly into the next. Connect to the Sampler's positive input (the negative stays "
                   "one prompt for the whole clip). Starts past the sampled frame count are an error.")

    @classmethod
    def INPUT_TYPES(cls):
        optional = {}
        for k in range(2, MAX_KEYFRAMES + 1):
            optional[f"conditioning_{k}"] = ("CONDITIONING",)
            optional[f"start_{k}"] = ("INT", {"default": 8 * (k - 1), "min": 1, "max": 1023,
                                              "tooltip": f"first frame fully on conditioning_{k}"})
        return {"required": {"conditioning_1": ("CONDITIONING",),
                             "blend_frames": ("INT", {"default": 4, "min": 0, "max": 1024})},
                "optional": optional}

    def schedule(self, conditioning_1, blend_frames, conditioning_2=None, start_2=8, conditioning_3=None,
                 start_3=16, conditioning_4=None, start_4=24):
        keyframes = {"conditioning_2": conditioning_2, "start_2": start_2, "conditioning_3": conditioning_3,
                     "start_3": start_3, "conditioning_4": conditioning_4, "start_4": start_4}
        entries = [(0, conditioning_1, "conditioning_1")]
        for k in range(2, MAX_KEYFRAMES + 1):
            cond = keyframes.get(f"conditioning_{k}")
            if cond is None:
                continue
            start = int(keyframes.get(f"start_{k}", 8 * (k - 1)))
            if start < 1:
                raise ValueError(f"start_{k}: must be >= 1 (conditioning_1 holds frame 0), got {start}")
            entries.append((start, cond, f"conditioning_{k}"))
        starts = [s for s, _, _ in entries]
        if len(set(starts)) != len(starts):
            dup = sorted({s for s in starts if starts.count(s) > 1})
            raise ValueError(f"start_2..start_{MAX_KEYFRAMES}: two keyframes start at frame(s) {dup}")
        if int(blend_frames) < 0:
            raise ValueError(f"blend_frames: must be >= 0, got {blend_frames}")
        if not conditioning_1 or not isinstance(conditioning_1, list):
            raise ValueError("conditioning_1: empty or not a CONDITIONING list")
        out = []
        for tokens, extras in conditioning_1:
            extras = dict(extras)
            extras[SCHEDULE_KEY] = sorted(entries, key=lambda e: e[0])
            extras[BLEND_KEY] = int(blend_frames)
            out.append([tokens, extras])
        return (out,)


def scheduled_conditioning(positive, model, frames: int, cond: dict, uncond: dict | None):
    """(cond, uncond) for the Sampler: per-frame when `positive` carries a schedule, else unchanged."""
    if not positive:
        return cond, uncond
    extras = positive[0][1] if isinstance(positive[0][1], dict) else {}
    entries = extras.get(SCHEDULE_KEY)
    if not entries:
        return cond, uncond
    keyframes = []
    for start, conditioning, name in entries:
        if start >= frames:
            raise ValueError(f"positive: the prompt schedule's {name} starts at frame {start}, but the Sampler "
                             f"makes {frames} frames")
        keyframes.append((start, conditioning_dict(conditioning, name, model)))
    try:
        per_frame = frame_conditioning(keyframes, frames, int(extras.get(BLEND_KEY, 0)))
    except ValueError as e:   # e.g. one prompt went through the Prior, another did not
        names = ", ".join(f"{name} (frame {start})" for start, _, name in entries)
        raise ValueError(f"positive: prompt schedule of {names}: {e}") from None
    if uncond is not None and "image_embed" in per_frame and "image_embed" not in uncond:
        import torch
        uncond = {**uncond, "image_embed": torch.zeros_like(keyframes[0][1]["image_embed"])}
    return align_per_frame(per_frame, uncond, frames)


NODE_CLASS_MAPPINGS = {"MakeAVideoPromptSchedule": PromptSchedule}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoPromptSchedule": "MakeAVideo Prompt Schedule"}
