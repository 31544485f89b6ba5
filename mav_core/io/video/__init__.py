"""Frames <-> video files, without any host (ComfyUI) dependency.

Frames are float32 tensors [F, H, W, 3] with values in 0..1 (ComfyUI's IMAGE convention).

Formats: mp4 (H.264), webm (VP9), gif, animated webp, and a folder of numbered PNG frames.
PyAV does the encoding and decoding; OpenCV stands in where PyAV is absent (mp4/webm) and reads
animated webp, which FFmpeg cannot decode. Every write goes to a temporary file (or folder) next
to the target and is moved into place with ``os.replace``; a failed write leaves nothing behind.

Metadata (``dict[str, str]``, e.g. ``{"prompt": ..., "workflow": ...}`` as JSON strings):
- mp4: container tags (``movflags=use_metadata_tags``), keys kept as given.
- webm: Matroska tags; Matroska stores tag names upper-case, so they read back lower-case.
- png folder: tEXt/iTXt chunks in the first frame (as ComfyUI's PNGs), plus the fps.
- webp: EXIF ASCII tags holding ``"key:value"`` (ComfyUI's animated-webp convention).
- gif: one comment extension holding the whole dict as JSON.

Modules (each imports only those listed before it):
- backends: the optional libraries ``av`` and ``cv2`` (None when missing; patch them there), and
  naming_the_file (every error a corrupt file causes, as one ValueError naming it).
- formats: format, suffix and codec tables; argument checks.
- containers: byte-level PNG / GIF / WebP chunks (metadata, WebP probe) and frame-folder listing.
- atomic: temp-then-rename targets for files and frame folders.
- audio: sound tracks as the host's AUDIO dict: read_audio, and the AAC / Opus muxer write.py uses.
- write: write_video (write_video_with_audio with a sound track) and its encoders.
- read: read_video (streaming, frame selection, one float allocation).
- probe: probe_video and read_metadata (no frame decoding).
Names with a leading underscore are private to this package.
"""
from __future__ import annotations

from . import backends
from .backends import av, cv2  # noqa: F401 - for callers that check which libraries are present
from .atomic import temp_file_for
from .audio import AUDIO_FORMATS, check_audio, fit_to_duration, read_audio
from .containers import encode_png, png_text
from .formats import DEFAULT_FOLDER_FPS, FPS_KEY, WRITE_FORMATS, check_fps_for_format, fps_limits  # noqa: F401
from .formats import _BT709, _LIMITED_RANGE  # noqa: F401 - the colour tags, checked by tests/test_video.py
from .probe import probe_video, read_metadata
from .read import forced_size, read_bytes, read_video
from .write import VideoSettings, write_video, write_video_with_audio

__all__ = ["write_video", "write_video_with_audio", "VideoSettings", "read_audio", "check_audio", "fit_to_duration",
           "AUDIO_FORMATS", "encode_png", "png_text", "temp_file_for", "read_video", "read_metadata", "probe_video", "check_fps_for_format", "fps_limits", "WRITE_FORMATS", "DEFAULT_FOLDER_FPS"]
