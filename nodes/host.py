"""The only place that touches ComfyUI: progress, Cancel, devices and the model folder.

With ComfyUI present these call comfy.utils / comfy.model_management / folder_paths. Without it
(unit tests, plain Python) small stand-ins keep the node code itself unchanged: progress goes
nowhere, Cancel never fires, models run on the CPU and files are listed from `extra_model_dirs`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..mav_core import family

MODEL_FOLDER = "makeavideo"
EXTENSIONS = {".safetensors"}
SHIPPED_DIR = family.WEIGHTS_DIR.parent   # mav_core/weights: lists the shipped files as "mav-tiny/<stage>.safetensors"

try:  # ComfyUI imports the pack with its own modules on sys.path
    import comfy.model_management as _mm
    import comfy.utils as _cu
    import folder_paths as _fp
    HAS_COMFY = True
except ImportError:
    _mm = _cu = _fp = None
    HAS_COMFY = False

extra_model_dirs: list[Path] = [SHIPPED_DIR]
"""Search folders when ComfyUI is absent (tests add theirs)."""


def register_model_folder():
    """Add models/makeavideo and the shipped weights to folder_paths without dropping YAML-added paths."""
    if not HAS_COMFY:
        return
    default_dir = os.path.join(_fp.models_dir, MODEL_FOLDER)
    paths, exts = _fp.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    paths = list(paths)
    for p in (default_dir, str(SHIPPED_DIR)):
        if p not in paths:
            paths.append(p)
    _fp.folder_names_and_paths[MODEL_FOLDER] = (paths, set(exts) | EXTENSIONS)


def model_files() -> list[str]:
    """Checkpoint names (relative paths, '/'-separated) in every makeavideo folder."""
    if HAS_COMFY:
        return list(_fp.get_filename_list(MODEL_FOLDER))
    names = set()
    for root in extra_model_dirs:
        if root.is_dir():
            for path in root.rglob("*"):
                if path.suffix in EXTENSIONS and path.is_file():
                    names.add(path.relative_to(root).as_posix())
    return sorted(names)


def model_path(name: str, input_name: str = "ckpt_name") -> str:
    """Full path of a listed checkpoint; the error names the input and the folders searched."""
    if HAS_COMFY:
        path = _fp.get_full_path(MODEL_FOLDER, name)
        folders = _fp.get_folder_paths(MODEL_FOLDER)
    else:
        folders = [str(d) for d in extra_model_dirs]
        path = next((str(Path(d) / name) for d in folders if (Path(d) / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{input_name}: no checkpoint {name!r} in the {MODEL_FOLDER} folders {folders}")
    return path


def torch_device() -> torch.device:
    return _mm.get_torch_device() if HAS_COMFY else torch.device("cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if HAS_COMFY else torch.device("cpu")


def intermediate_device() -> torch.device:
    return _mm.intermediate_device() if HAS_COMFY else torch.device("cpu")


@contextmanager
def models_on_device(*models):
    """Move the given LoadedModels to the compute device for the run and back to the offload device after."""
    device = torch_device()
    moved = [m for m in models if m is not None]
    for m in moved:
        m.module.to(device)
    try:
        yield device
    finally:
        offload = offload_device()
        for m in moved:
            m.module.to(offload)
        if HAS_COMFY:
            _mm.soft_empty_cache()


def check_interrupted():
    """Raise the host's InterruptProcessingException if Cancel was pressed (no-op without the host)."""
    if HAS_COMFY:
        _mm.throw_exception_if_processing_interrupted()


class ProgressBar:
    """comfy.utils.ProgressBar, or a counter that only remembers the last update."""

    def __init__(self, total: int):
        self.total = total
        self.value = 0
        self.previews = 0
        self._bar = _cu.ProgressBar(total) if HAS_COMFY else None

    def update_absolute(self, value: int, total: int | None = None, preview=None):
        self.value, self.total = value, total or self.total
        self.previews += preview is not None
        if self._bar is not None:
            self._bar.update_absolute(value, total, preview)
