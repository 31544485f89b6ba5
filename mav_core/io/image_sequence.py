"""Image sequences: a folder of still images in and out (8-bit PNG / JPEG written), without any host.

Reading (read_images): the folder's images in natural order (``frame2`` before ``frame10``), selected like
read_video (skip the first, then every n-th, at most a cap), every image the same size or resized to one;
frames float32 [F, H, W, 3] in 0..1 and masks [F, H, W] (1 - alpha, as the host's Load Image; zeros where
an image has no alpha). The memory the selection needs is checked from the first image's header before
anything is decoded. Writing (write_images): ``<stem>_<NNNNN>_.png`` (or .jpg) numbered from ``start``,
metadata as PNG text chunks in the first PNG, every file written under a temporary name and all renamed
once every frame is encoded (a failed write leaves no file behind).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, check_choice, check_int
from .video import backends, encode_png

READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SAVE_FORMATS = ("png", "jpg")
MAX_SIDE = 16384
BYTES_PER_PIXEL = 4 * 4 + 4   # float32 RGB + mask in the result, and the decoded image while reading


@dataclass(frozen=True)
class SequenceSelection:
    """Which images of the folder, and at what size: source indices skip_first + k * every_nth, at most
    max_frames of them (None = all); size (height, width) resizes every image (None = keep; then all
    selected images must share the first one's size)."""
    max_frames: int | None = None
    skip_first: int = 0
    every_nth: int = 1
    size: tuple[int, int] | None = None

    def validate(self) -> "SequenceSelection":
        if self.max_frames is not None:
            check_int("max_frames", self.max_frames, 1)
        check_int("skip_first", self.skip_first, 0)
        check_int("every_nth", self.every_nth, 1)
        if self.size is not None:
            if not isinstance(self.size, tuple) or len(self.size) != 2:
                raise InputError("size", f"must be (height, width) or None, got {self.size!r}")
            for side in self.size:
                check_int("size", side, 1, MAX_SIDE)
        return self


@dataclass
class ImageSequence:
    frames: torch.Tensor      # [F, H, W, 3] float32 0..1
    masks: torch.Tensor       # [F, H, W] float32, 1 - alpha
    files: list[Path]


def _natural_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The readable images directly in `folder` (no subfolders, no hidden files), naturally sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder", f"must be an existing folder of images, got {str(folder)!r}")
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in READ_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def select(files: list[Path], selection: SequenceSelection) -> list[Path]:
    picked = files[selection.skip_first::selection.every_nth]
    return picked[:selection.max_frames] if selection.max_frames is not None else picked


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError) as error:
        raise InputError("folder", f"has an image that cannot be read: {path.name} ({error})") from None


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB float32 [H, W, 3] in 0..1 and mask [H, W] (1 - alpha) of one image (8 or 16 bits, grey or colour)."""
    cv2 = backends.cv2
    data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if cv2 is not None else None
    if data is None:
        raise InputError("folder", f"has an image that cannot be decoded: {path.name}")
    scale = 65535.0 if data.dtype == np.uint16 else 255.0 if data.dtype == np.uint8 else 1.0
    data = data.astype(np.float32) / scale
    if data.ndim == 2:
        data = data[..., None]
    channels = data.shape[2]
    if channels in (1, 2):
        rgb, alpha = np.repeat(data[..., :1], 3, axis=2), data[..., 1] if channels == 2 else None
    else:
        rgb, alpha = data[..., 2::-1], data[..., 3] if channels == 4 else None   # BGR(A) -> RGB
    mask = 1.0 - alpha if alpha is not None else np.zeros(data.shape[:2], np.float32)
    return np.clip(rgb, 0, 1), np.clip(mask, 0, 1)


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if array.shape[:2] == size:
        return array
    shrinking = height * width < array.shape[0] * array.shape[1]
    cv2 = backends.cv2
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def read_images(folder: str | os.PathLike, selection: SequenceSelection = SequenceSelection(),
                max_bytes: int | None = None, callback: Callable[[int, int], None] | None = None) -> ImageSequence:
    """The selected images of `folder` (see the module docstring). max_bytes bounds the result's memory:
    refused before decoding (InputError 'max_frames') when the selection cannot fit. callback(done, total)
    runs after each image (progress; it may raise to cancel)."""
    selection.validate()
    if backends.cv2 is None:
        raise RuntimeError("reading images needs OpenCV (pip install opencv-python-headless)")
    files = list_images(folder)
    if not files:
        raise InputError("folder", f"holds no images ({', '.join(READ_SUFFIXES)}): {str(folder)!r}")
    picked = select(files, selection)
    if not picked:
        raise InputError("skip_first", f"{selection.skip_first} with every_nth {selection.every_nth} leaves none "
                                       f"of the {len(files)} images in {str(folder)!r}")
    first = image_size(picked[0])
    height, width = selection.size or first
    need = len(picked) * height * width * BYTES_PER_PIXEL
    if max_bytes is not None and need > max_bytes:
        raise InputError("max_frames", f"{len(picked)} images of {width}x{height} need about {need / 2**30:.2f} GiB, "
                                       f"more than the {max_bytes / 2**30:.2f} GiB free; load fewer (a cap, every "
                                       "n-th) or smaller images")
    frames = torch.empty((len(picked), height, width, 3), dtype=torch.float32)
    masks = torch.empty((len(picked), height, width), dtype=torch.float32)
    for index, path in enumerate(picked):
        rgb, mask = _decode(path)
        if selection.size is not None:
            rgb, mask = _resize(rgb, selection.size), _resize(mask, selection.size)
        elif rgb.shape[:2] != first:
            raise InputError("size", f"{path.name} is {rgb.shape[1]}x{rgb.shape[0]} (WxH), but {picked[0].name} is "
                                     f"{first[1]}x{first[0]}; images in a sequence share one size (or resize them)")
        frames[index].copy_(torch.from_numpy(np.ascontiguousarray(rgb)))
        masks[index].copy_(torch.from_numpy(np.ascontiguousarray(mask)))
        if callback is not None:
            callback(index + 1, len(picked))
    return ImageSequence(frames, masks, picked)


# ---------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class SequenceNames:
    """Where and how write_images writes: ``<folder>/<stem>_<start + i, 5 digits>_.<png|jpg>``;
    quality 1..100 is JPEG's (PNG is lossless; it sets nothing there); metadata goes into the first PNG."""
    folder: Path
    stem: str
    start: int = 1
    format: str = "png"
    quality: int = 95
    metadata: dict[str, str] | None = None

    def validate(self) -> "SequenceNames":
        check_choice("format", self.format, SAVE_FORMATS)
        check_int("quality", self.quality, 1, 100)
        check_int("start", self.start, 0)
        if not isinstance(self.stem, str) or not self.stem or "/" in self.stem or "\0" in self.stem:
            raise InputError("stem", f"must be a file name without '/', got {self.stem!r}")
        if not Path(self.folder).is_dir():
            raise InputError("folder", f"must be an existing folder, got {str(self.folder)!r}")
        return self

    def path(self, index: int) -> Path:
        return Path(self.folder) / f"{self.stem}_{self.start + index:05}_.{self.format}"


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError("images", f"must be an IMAGE batch [frames, height, width, 3] with at least one frame, got {shape}")
    if not frames.is_floating_point() or not bool(torch.isfinite(frames).all()):
        raise InputError("images", "must hold finite float values in 0..1")
    return frames.detach().float().clamp(0, 1).mul(255).round().to(device="cpu", dtype=torch.uint8)


def write_images(frames: torch.Tensor, names: SequenceNames,
                 callback: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write IMAGE frames [F, H, W, 3] as numbered 8-bit files (see SequenceNames); returns their paths.
    Existing files of the same names are replaced only when every frame has been written."""
    names.validate()
    u8 = _to_uint8(frames)
    cv2 = backends.cv2
    written: list[tuple[Path, Path]] = []
    try:
        for index in range(u8.shape[0]):
            rgb = u8[index].numpy()
            if names.format == "png":
                data = encode_png(rgb, names.metadata if index == 0 else None)
            else:
                if cv2 is None:
                    raise RuntimeError("writing JPEG needs OpenCV (pip install opencv-python-headless)")
                ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                          [cv2.IMWRITE_JPEG_QUALITY, names.quality])
                if not ok:
                    raise RuntimeError(f"OpenCV could not encode frame {index} as JPEG")
                data = buffer.tobytes()
            final = names.path(index)
            tmp = final.with_name(f".{final.name}.tmp")
            written.append((tmp, final))
            tmp.write_bytes(data)
            if callback is not None:
                callback(index + 1, u8.shape[0])
        for tmp, final in written:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    return [final for _, final in written]
