"""Video files in and out: Video Save / Video Preview (IMAGE -> file + UI preview), Load Video (file -> IMAGE),
and, where the host has its VIDEO type, Frames To Video / Video To Frames.

Files go through mav_core.io.video (atomic temp-then-rename writes, streaming frame-selecting reads).
Paths follow the host's folder_paths rules (output/temp/input folders, `prefix_00001_.ext` counters,
no escaping the output folder), asked through nodes/host.py. Without ComfyUI the same rules run on
`standin_dirs` (tests).

The UI preview is `{"ui": {"videos": [entry]}}`; an entry is the host's file locator (filename,
subfolder, type) plus container, fps, frame_count, width and height. The pack's web extension
(web/makeavideo_video.js) plays it inside the node; the host's queue panel lists it as a video
(mp4/webm) or image (gif/webp). PNG frame folders are returned as `images` (the host's own preview).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
from fractions import Fraction
from pathlib import Path

import torch

from ..mav_core.inference.memory import available_bytes
from ..mav_core.io.video import (AUDIO_FORMATS, WRITE_FORMATS, VideoSettings, check_audio, check_fps_for_format,
                                  forced_size, probe_video, read_audio, read_bytes, read_video,
                                  write_video_with_audio)
from . import host
from .common import CATEGORY, example_names, example_path, require_frames, selection_inputs, with_examples

# the host's VIDEO type (ComfyUI >= 0.3.3x); older hosts only get the IMAGE nodes
HAS_VIDEO_TYPE = host.has_video_type()
SUFFIXES = {"mp4": ".mp4", "webm": ".webm", "gif": ".gif", "webp": ".webp", "png": ""}
READABLE_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".webp")
MAX_LISTED_INPUTS = 5000
UI_KEY = "videos"

standin_dirs: dict[str, Path] = {}
"""Without ComfyUI: folder type ('output' / 'temp' / 'input') -> folder. Tests set these."""

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# folders and names (the host's folder_paths through nodes/host.py, the same rules otherwise)


def folder_of(kind: str) -> Path:
    """The host's output / temp / input folder (or the stand-in)."""
    folder = host.io_folder(kind)
    if folder is not None:
        return folder
    if kind not in standin_dirs:
        raise RuntimeError(f"no {kind} folder: ComfyUI is absent and video_io.standin_dirs[{kind!r}] is not set")
    return Path(standin_dirs[kind])


def has_input_folder() -> bool:
    """Whether there is an input folder: the host's, or the stand-in."""
    return host.io_folder("input") is not None or "input" in standin_dirs


def save_location(filename_prefix: str, kind: str, width: int, height: int) -> tuple[Path, str, int, str]:
    """(folder, file name stem, next free counter, subfolder) for `prefix_NNNNN_` files in the output (or
    temp) folder, as the host's Save Image. A prefix that leaves the folder (`../x`, `/etc/x`) is refused
    with an error naming filename_prefix; a folder that cannot be made (e.g. its parent is a file) is
    reported with the folder's path."""
    if not isinstance(filename_prefix, str) or not filename_prefix.strip():
        raise ValueError(f"filename_prefix: expected a non-empty string, got {filename_prefix!r}")
    if "\0" in filename_prefix:
        raise ValueError("filename_prefix: contains a NUL character")
    base = os.path.abspath(str(folder_of(kind)))
    try:
        folder, filename, counter, subfolder, _ = host.save_image_path(filename_prefix, base, width, height)
    except (NotADirectoryError, FileExistsError, PermissionError) as e:
        raise OSError(f"filename_prefix: cannot create the folder for {filename_prefix!r} in {base}: {e}") from None
    except Exception as e:  # the host raises a bare Exception for a path outside the output folder
        if "outside the output folder" in str(e):
            raise ValueError(f"filename_prefix: {filename_prefix!r} points outside the {kind} folder {base}; "
                             "use a relative prefix such as 'MakeAVideo/video'") from None
        raise
    real_base, real_folder = os.path.realpath(base), os.path.realpath(folder)
    if os.path.commonpath((real_base, real_folder)) != real_base:
        raise ValueError(f"filename_prefix: {filename_prefix!r} resolves to {real_folder}, outside {real_base}")
    if not Path(folder).is_dir():
        raise OSError(f"filename_prefix: the output folder {folder} is not a folder")
    return Path(folder), filename, counter, subfolder


def save_target(filename_prefix: str, kind: str, fmt: str, width: int, height: int) -> tuple[Path, str]:
    """The next free `<prefix>_NNNNN_.<ext>` in the output (or temp) folder and its subfolder (see save_location)."""
    folder, filename, counter, subfolder = save_location(filename_prefix, kind, width, height)
    final = folder / f"{filename}_{counter:05}_{SUFFIXES[fmt]}"
    real_base, real_final = os.path.realpath(folder_of(kind)), os.path.realpath(final)
    if os.path.commonpath((real_base, real_final)) != real_base:
        raise ValueError(f"filename_prefix: {filename_prefix!r} resolves to {real_final}, outside {real_base}")
    return final, subfolder


def host_metadata(prompt=None, extra_pnginfo=None) -> dict[str, str]:
    """The prompt and workflow JSON as the host embeds them: key -> JSON text ('prompt', 'workflow', ...)."""
    if host.metadata_disabled():
        return {}
    meta = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            meta[str(key)] = json.dumps(value)
    return meta


# ---------------------------------------------------------------------------------------------
# saving


def check_fps(fps, input_name: str = "fps") -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"{input_name}: expected a number of frames per second, got {fps!r}") from None
    if not (value > 0 and value < 1e4):
        raise ValueError(f"{input_name}: expected frames per second in (0, 10000), got {fps!r}")
    return value


def check_save_inputs(fps=None, format=None, quality=None, loop_count=None) -> str | bool:
    """True, or a message naming the first save input that cannot be written (None = not known yet, e.g.
    a linked input during validation): fps within the format's limits, quality 0..100, loop_count >= 0."""
    if format is not None and format not in WRITE_FORMATS:
        return f"format: {format!r} is not one of {list(WRITE_FORMATS)}"
    if fps is not None:
        try:
            check_fps(fps)
            if format is not None:
                check_fps_for_format(float(fps), format)
        except ValueError as e:
            return str(e) if str(e).startswith("fps:") else f"fps: {e}"
    for name, value, low, high in (("quality", quality, 0, 100), ("loop_count", loop_count, 0, None)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"in {low}..{high}" if high is not None else f">= {low}"
            return f"{name}: expected an integer {bounds}, got {value!r}"
    return True


def save_frames(frames, fps, filename_prefix: str, format: str, quality: int = 85, loop_count: int = 0,
                pingpong: bool = False, kind: str = "output", metadata: dict[str, str] | None = None,
                audio=None) -> dict:
    """Write frames as a video file (or PNG frame folder), with `audio` (the host's AUDIO) muxed into
    mp4/webm, and return its UI entry (see module docstring)."""
    frames = require_frames(frames, "frames")
    problem = check_save_inputs(fps, format, quality, loop_count)
    if problem is not True:
        raise ValueError(problem)
    check_audio(audio)
    if audio is not None and format not in AUDIO_FORMATS:
        raise ValueError(f"audio: {format} cannot hold sound; choose format {' or '.join(AUDIO_FORMATS)}, "
                         "or disconnect audio")
    fps = float(fps)
    height, width = int(frames.shape[1]), int(frames.shape[2])
    target, subfolder = save_target(filename_prefix, kind, format, width, height)
    try:
        settings = VideoSettings(format, int(quality), int(loop_count), bool(pingpong), metadata or None)
        path = write_video_with_audio(frames, target, fps, audio, settings)
    except OSError as e:
        raise OSError(f"filename_prefix: could not write {target}: {e}") from None
    count = int(frames.shape[0])
    if pingpong and count > 2:
        count = 2 * count - 2
    even = format in ("mp4", "webm")
    return {"filename": path.name, "subfolder": subfolder.replace(os.sep, "/"), "type": kind,
            "container": format, "fps": fps, "frame_count": count, "audio": audio is not None,
            "width": width + (width % 2 if even else 0), "height": height + (height % 2 if even else 0)}


def preview_ui(entry: dict) -> dict:
    """The node's `ui` dict for one saved entry: a video/animation, or the host's image list for PNG frames."""
    if entry["container"] != "png":
        return {UI_KEY: [entry]}
    folder = folder_of(entry["type"]) / entry["subfolder"] / entry["filename"]
    subfolder = "/".join(p for p in (entry["subfolder"], entry["filename"]) if p)
    return {"images": [{"filename": f.name, "subfolder": subfolder, "type": entry["type"]}
                       for f in sorted(folder.glob("*.png"))]}


def animated_preview_ui(frames, fps, format: str = "webp") -> dict:
    """A temp-folder animation of `frames` as a `ui` dict: for any node of the pack that wants to show its output."""
    prefix = f"MakeAVideo/preview_{secrets.token_hex(4)}"
    return preview_ui(save_frames(frames, fps, prefix, format, quality=90, kind="temp"))


QUALITY_TOOLTIP = ("0..100. mp4: crf = 40 - 0.3*quality (85 -> crf 14); webm (VP9): crf = 50 - 0.4*quality; "
                   "webp: lossy quality, 100 = lossless; gif and png ignore it (png is lossless)")


class VideoSave:
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    DESCRIPTION = ("Saves frames as mp4 (H.264), webm (VP9), gif, animated webp or a folder of PNG frames in the "
                   "output folder, with the prompt and workflow embedded, and plays the result in the node. An "
                   "optional audio is muxed into mp4 (AAC) / webm (Opus), trimmed or padded with silence to the "
                   "video's length (frames / fps).")
    KIND = "output"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE",),
                "fps": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 240.0, "step": 0.01,
                                  "tooltip": "frames per second (link the Sampler's / Interpolator's fps here)"}),
                "filename_prefix": ("STRING", {"default": "MakeAVideo/video",
                                               "tooltip": "relative to the output folder; %width% / %height% / "
                                                          "%year% ... are replaced"}),
                "format": (list(WRITE_FORMATS), {"default": "mp4"}),
                "quality": ("INT", {"default": 85, "min": 0, "max": 100, "tooltip": QUALITY_TOOLTIP}),
                "loop_count": ("INT", {"default": 0, "min": 0, "max": 100,
                                       "tooltip": "gif/webp: times to loop, 0 = forever"}),
                "pingpong": ("BOOLEAN", {"default": False,
                                         "tooltip": "append the frames reversed so the clip plays back and forth"}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "sound for mp4 (AAC) / webm (Opus), fitted to frames / fps "
                                               "seconds (link Load Video's audio; with ↑F link its fps too)"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, fps=None, format=None, quality=None, loop_count=None, **_):
        return check_save_inputs(fps, format, quality, loop_count)

    def save(self, frames, fps, filename_prefix, format, quality, loop_count, pingpong, prompt=None,
             extra_pnginfo=None, audio=None):
        meta = host_metadata(prompt, extra_pnginfo)
        entry = save_frames(frames, fps, filename_prefix, format, quality, loop_count, pingpong,
                            kind=self.KIND, metadata=meta, audio=audio)
        path = folder_of(self.KIND) / entry["subfolder"] / entry["filename"]
        return {"ui": preview_ui(entry), "result": (str(path),)}


class VideoPreview(VideoSave):
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    DESCRIPTION = "Plays frames inside the node (written to the temp folder, not kept)."
    KIND = "temp"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE",),
                "fps": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 240.0, "step": 0.01}),
                "format": (["webp", "mp4", "webm", "gif"], {"default": "webp"}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, fps=None, format=None, **_):
        return check_save_inputs(fps, format)

    def save(self, frames, fps, format):
        entry = save_frames(frames, fps, f"MakeAVideo/preview_{secrets.token_hex(4)}", format, quality=90,
                            kind=self.KIND)
        return {"ui": preview_ui(entry)}


# ---------------------------------------------------------------------------------------------
# loading


def walk_input(suffixes: tuple[str, ...]):
    """(folder relative to the input folder, its visible files ending in one of `suffixes`, sorted) for the
    input folder and each visible subfolder, in sorted order; nothing when the host has no input folder."""
    try:
        root = folder_of("input")
    except RuntimeError:
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield (Path(folder).relative_to(root),
               sorted(f for f in files if f.lower().endswith(suffixes) and not f.startswith(".")))


def input_videos() -> list[str]:
    """Video files ('/'-separated, relative) in the input folder and its subfolders (at most MAX_LISTED_INPUTS),
    then the pack's example clips (`examples/<name>`) that no input file of the same name shadows."""
    names = (Path(folder, name).as_posix() for folder, files in walk_input(READABLE_SUFFIXES) for name in files)
    return with_examples(sorted(itertools.islice(names, MAX_LISTED_INPUTS)), example_names(READABLE_SUFFIXES))


def input_path(name: str, input_name: str = "video") -> Path:
    """The file `name` in the input folder ('name [output]' annotations as the host's), else the pack's example
    of that name (`examples/<name>`); refuses escapes. Errors name `input_name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{input_name}: expected a file name from the input folder, got {name!r}")
    hosted = host.annotated_input_file(name)
    example = example_path(name)
    if hosted is not None:
        path, bases = hosted
    elif example is not None and example.is_file() and not has_input_folder():
        return example   # no input folder at all (ComfyUI absent): the shipped example
    else:
        path = folder_of("input") / name
        bases = [str(folder_of("input"))]
    real = os.path.realpath(path)
    if not any(os.path.commonpath((os.path.realpath(b), real)) == os.path.realpath(b) for b in bases):
        raise ValueError(f"{input_name}: {name!r} is outside the input folder")
    if not path.is_file():
        if example is not None and example.is_file():
            return example
        raise FileNotFoundError(f"{input_name}: no file {name!r} in the input folder {bases[0]}")
    return path


def selected_count(total: int, cap: int, skip: int, nth: int) -> int:
    """How many frames read_video keeps from `total` (cap 0 = no cap)."""
    count = max(0, -(-(total - skip) // nth))
    return min(count, cap) if cap else count


def check_load_fits(frames: int, size: tuple[int, int], source: tuple[int, int], available: int | None) -> None:
    """Refuse a load whose estimate (read_bytes: the kept frames while decoding + the float32 IMAGE, the
    decoder's frames of the `source` size and its buffers) exceeds the free memory."""
    height, width = size
    need = read_bytes(frames, height, width, source)
    if available is not None and need > available:
        raise MemoryError(f"frame_load_cap: {frames} frames of {width}x{height} need about {need / 2**30:.2f} GiB, "
                          f"but only {available / 2**30:.2f} GiB is free; lower frame_load_cap, raise "
                          "select_every_nth or set force_width/force_height")


class LoadVideo:
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT", "AUDIO")
    RETURN_NAMES = ("frames", "fps", "frame_count", "audio")
    DESCRIPTION = ("Loads a video (mp4, webm, mkv, mov, avi, gif, webp) from the input folder, or the pack's example "
                   "clip (examples/...), as frames. Frames "
                   "kept: skip_first_frames, then every select_every_nth, at most frame_load_cap (0 = all). "
                   "fps is the source rate divided by select_every_nth. force_width/height resize (0 = keep; "
                   "one of them alone keeps the aspect ratio). audio: the sound of the selected span (None when "
                   "the file has no sound, as the host's Get Video Components).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": (input_videos(), {"video_upload": True}),
                **selection_inputs("frame"),
            },
        }

    @classmethod
    def IS_CHANGED(cls, video, **_):
        try:
            return os.path.getmtime(input_path(video))
        except (OSError, ValueError):
            return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, video, **_):
        try:
            path = input_path(video)
            if probe_video(path)["frames"] == 0:
                return f"video: {str(path)!r} contains no frames (empty, truncated or not a video)"
        except (OSError, ValueError) as e:
            return str(e) if str(e).startswith("video:") else f"video: {e}"
        return True

    def load(self, video, frame_load_cap, skip_first_frames, select_every_nth, force_width, force_height):
        path = input_path(video)
        for name, value, minimum in (("frame_load_cap", frame_load_cap, 0), ("skip_first_frames", skip_first_frames, 0),
                                     ("select_every_nth", select_every_nth, 1), ("force_width", force_width, 0),
                                     ("force_height", force_height, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
        available = available_bytes("cpu")
        try:
            probe = probe_video(path)
            size = None
            if force_width > 0 or force_height > 0:
                src_h, src_w = probe["height"], probe["width"]
                if not (src_h and src_w):
                    src_h, src_w = read_video(path, max_frames=1)[0].shape[1:3]
                size = forced_size(src_h, src_w, force_width, force_height)
            if probe["frames"]:
                out_h, out_w = size or (probe["height"], probe["width"])
                check_load_fits(selected_count(probe["frames"], frame_load_cap, skip_first_frames, select_every_nth),
                                (out_h, out_w), (probe["height"], probe["width"]), available)
            # the header may not declare a frame count (live webm, MediaRecorder): decoding stops at the budget
            frames, fps = read_video(path, max_frames=frame_load_cap or None, skip_first=skip_first_frames,
                                     every_nth=select_every_nth, size=size, max_bytes=available)
        except ValueError as e:
            raise ValueError(f"video: {e}") from None
        except MemoryError as e:
            if str(e).startswith("frame_load_cap:"):
                raise
            raise MemoryError(f"frame_load_cap: {e}; lower frame_load_cap, raise select_every_nth or set "
                              "force_width/force_height") from None
        count = int(frames.shape[0])
        # the sound under the kept frames: from the first kept frame for count * select_every_nth source frames
        try:
            audio = read_audio(path, skip_first_frames / fps, count * select_every_nth / fps,
                               max_bytes=available_bytes("cpu"))
        except ValueError as e:
            raise ValueError(f"video: {e}") from None
        except MemoryError as e:
            raise MemoryError(f"frame_load_cap: {e}; lower frame_load_cap or skip frames") from None
        return (frames.to(host.intermediate_device()), float(fps) / select_every_nth, count, audio)


# ---------------------------------------------------------------------------------------------
# the host's VIDEO type


def _require_video_type():
    if not HAS_VIDEO_TYPE:
        raise RuntimeError("this ComfyUI has no VIDEO type (comfy_api.input_impl); use Video Save / Load Video")


class FramesToVideo:
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "run"
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    DESCRIPTION = "IMAGE frames + fps -> the host's VIDEO (for Save Video and other VIDEO nodes)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"frames": ("IMAGE",),
                             "fps": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 240.0, "step": 0.01})}}

    def run(self, frames, fps):
        _require_video_type()
        frames = require_frames(frames, "frames")
        rate = Fraction(check_fps(fps)).limit_denominator(1001)
        return (host.video_from_frames(frames, rate),)


class VideoToFrames:
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")
    DESCRIPTION = "The host's VIDEO -> IMAGE frames, fps and frame count."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",)}}

    def run(self, video):
        _require_video_type()
        if not hasattr(video, "get_components"):
            raise ValueError(f"video: expected the host's VIDEO input, got {type(video).__name__}")
        components = video.get_components()
        frames = components.images
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4:
            raise ValueError("video: its components hold no frame batch [F, H, W, 3]")
        frames = frames[..., :3].float().to(host.intermediate_device())
        return (frames, float(components.frame_rate), int(frames.shape[0]))


NODE_CLASS_MAPPINGS = {
    "MakeAVideoVideoSave": VideoSave,
    "MakeAVideoVideoPreview": VideoPreview,
    "MakeAVideoLoadVideo": LoadVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MakeAVideoVideoSave": "MakeAVideo Video Save",
    "MakeAVideoVideoPreview": "MakeAVideo Video Preview",
    "MakeAVideoLoadVideo": "MakeAVideo Load Video",
}
if HAS_VIDEO_TYPE:
    NODE_CLASS_MAPPINGS.update({"MakeAVideoFramesToVideo": FramesToVideo, "MakeAVideoVideoToFrames": VideoToFrames})
    NODE_DISPLAY_NAME_MAPPINGS.update({"MakeAVideoFramesToVideo": "MakeAVideo Frames To Video",
                                       "MakeAVideoVideoToFrames": "MakeAVideo Video To Frames"})
