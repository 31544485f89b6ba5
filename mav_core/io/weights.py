"""Reading third-party weight files and building a SpaceTimeUNet from them.

  resolve_weights / read_weights   a diffusers folder, a weights file (+ its config.json), .safetensors or
                                   torch.save files (torch.load(weights_only=True) only: a pickle that
                                   needs code to load is refused);
  file_dtype / target_dtype        the dtype policy: half-precision files keep their dtype on CUDA and
                                   become float32 elsewhere unless a dtype is given;
  build_loaded                     the module built on the meta device and filled with assign=True (no
                                   second copy of the weights).
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from .checkpoints import CheckpointError, build_skeleton, check_state_dict, load_state_dict, read_header
from ..models.unet import SpaceTimeUNet


SUPPORTED = ("unet3d-diffusers (diffusers UNet3DConditionModel: ModelScope T2V, Zeroscope)",
             "unet3d-modelscope (text2video_pytorch_model.pth)",
             "sd-unet2d-diffusers / sd-unet2d-ldm (SD 1.x/2.x image UNet, inflated to video)")



PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")



DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                          "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")



HALF_DTYPES = (torch.float16, torch.bfloat16)



def resolve_weights(path: str | Path) -> tuple[Path, dict | None]:
    """(weights file, diffusers config dict or None) for a file, a diffusers model root or its unet/ folder."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "unet", path):
            for name in DIFFUSERS_WEIGHT_NAMES:
                if (folder / name).is_file():
                    return folder / name, _sibling_config(folder / name)
        raise CheckpointError(f"{path}: folder holds no diffusers UNet weights (looked for "
                              f"unet/{DIFFUSERS_WEIGHT_NAMES[0]} and {DIFFUSERS_WEIGHT_NAMES[0]})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    return path, _sibling_config(path)



def _sibling_config(weights: Path) -> dict | None:
    """The diffusers config.json beside a weights file, when there is one describing a UNet."""
    cfg_path = weights.parent / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not a readable JSON config ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: config.json is not a JSON object")
    name = cfg.get("_class_name")
    if name is None:          # not a diffusers config (diffusers always writes _class_name)
        return None
    if name not in ("UNet3DConditionModel", "UNet2DConditionModel"):
        raise CheckpointError(f"{weights}: its config.json describes a {name!r}, not a UNet; supported: "
                              + "; ".join(SUPPORTED))
    return cfg



MAX_ZIP_EXPANSION = 32 * 2**20   # bytes a torch.save zip's entries may expand to beyond the file's own size
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_BYTE = b"\x80"  # every pickle of protocol 2 and later (legacy torch.save files too) starts so


def check_torch_file(path: Path) -> bool:
    """Say what a file given as a torch.save file really is before torch reads it: a safetensors file with
    the wrong suffix, something that is neither a zip archive nor a pickle, or a zip whose directory
    declares entries that would expand beyond the file (refused before anything is decompressed).
    Returns whether the file is a zip archive (a pickle otherwise)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[8:9] == b"{" and _is_safetensors(path):
        raise CheckpointError(f"{path}: is a safetensors file, not a torch.save file; rename it to "
                              f"{path.with_suffix('.safetensors').name}")
    if head.startswith(ZIP_MAGIC):
        _check_zip_sizes(path)
        return True
    if not head.startswith(PICKLE_PROTOCOL_BYTE):
        raise CheckpointError(f"{path}: not a torch.save file (it starts with {head[:8]!r}; expected a zip archive "
                              "or a pickle)" if head else f"{path}: empty file, not a torch.save file")
    return False


def _is_safetensors(path: Path) -> bool:
    try:
        read_header(path)
    except CheckpointError:
        return False
    return True


def _check_zip_sizes(path: Path) -> None:
    """Bound the uncompressed sizes in the zip directory (what torch would allocate to read them)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (corrupt or truncated zip archive: {e})") from None
    total = sum(e.file_size for e in entries)
    if total > size + MAX_ZIP_EXPANSION:
        biggest = max(entries, key=lambda e: e.file_size)
        raise CheckpointError(
            f"{path}: refused: its zip entries expand to {total} bytes from a {size}-byte file (entry "
            f"{biggest.filename!r}: {biggest.compress_size} bytes stored, {biggest.file_size} uncompressed); "
            f"torch.save stores weights uncompressed, and at most {MAX_ZIP_EXPANSION // 2**20} MiB of expansion "
            "is accepted")


def read_pickled_state_dict(path: str | Path) -> dict:
    """Tensors of a torch.save file, loaded with weights_only=True (no code from the file ever runs).

    A zip archive is first read on the meta device (its pickle only, no tensor data): it must hold a state
    dict, and its data entries no more bytes than its tensors declare, before any tensor is read."""
    path = Path(path)
    if check_torch_file(path):
        unwrap_state_dict(_torch_load(path, "meta"), path)
    return unwrap_state_dict(_torch_load(path, "cpu"), path)


def _declared_bytes(obj, depth: int = 0) -> int:
    """Bytes of the tensor storages in a loaded object (shared storages counted once per tensor)."""
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if depth > 32:
        return 0
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    return sum(_declared_bytes(v, depth + 1) for v in values)


def _torch_load(path: Path, device: str):
    """torch.load(weights_only=True) onto `device` ("meta": the pickle only); every failure a CheckpointError."""
    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
        if device == "meta":
            with zipfile.ZipFile(path) as archive:
                stored = sum(e.file_size for e in archive.infolist() if re.search(r"(^|/)data/\d+$", e.filename))
            declared = _declared_bytes(obj)
            if stored > declared:
                raise CheckpointError(f"{path}: refused: its zip entries hold {stored} bytes of tensor data, "
                                      f"its pickle declares only {declared} (corrupt or crafted file)")
        return obj
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the file contains code or objects that are not plain tensors and containers, "
            f"so it will not be loaded (only weights_only=True loading is allowed; torch said: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}). Convert it to safetensors with a "
            "trusted tool first.") from None
    except Exception as e:  # noqa: BLE001 - weights_only=True ran no code; any parse failure is a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None



def unwrap_state_dict(obj, path) -> dict:
    """The tensor dict inside {"state_dict": ...} / {"model": ...} / {"module": ...} containers."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in ("state_dict", "model", "module", "unet") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) - 4:   # tolerate a few bookkeeping entries (epoch, step, ...)
            return tensors
    raise CheckpointError(f"{path}: holds no state dict (expected a dict of tensors, possibly inside "
                          "'state_dict' or 'model')")



def read_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, safetensors metadata) of a .safetensors or torch.save file."""
    if path.suffix == ".safetensors":
        return load_state_dict(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return read_pickled_state_dict(path), {}
    raise CheckpointError(f"{path}: unsupported checkpoint suffix {path.suffix!r} (expected .safetensors, "
                          f"{', '.join(PICKLE_SUFFIXES)} or a diffusers folder)")



def file_dtype(sd: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype holding most floating-point elements of a state dict."""
    counts: dict = {}
    for v in sd.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32



def target_dtype(source: torch.dtype, device, dtype: torch.dtype | None) -> tuple[torch.dtype, str]:
    """(dtype to load in, a note saying why)."""
    if dtype is not None:
        return dtype, "as requested"
    if torch.device(device).type == "cuda" or source not in HALF_DTYPES:
        return source, "kept the file's dtype"
    return torch.float32, (f"converted {str(source).removeprefix('torch.')} to float32 for "
                           f"{torch.device(device).type} (half precision is slow or unsupported there)")



def build_loaded(path, module_sd: dict, config, device, dtype) -> tuple[SpaceTimeUNet, dict]:
    """SpaceTimeUNet(config) holding module_sd (checked key by key), built on meta and filled with assign=True;
    returns (module, dtype metadata). module_sd is consumed."""
    module = build_skeleton(path, SpaceTimeUNet, config)
    check_state_dict(path, module, module_sd)
    source = file_dtype(module_sd)
    target, note = target_dtype(source, device, dtype)
    for k in list(module_sd):   # one tensor at a time: at most one tensor exists twice during conversion
        v = module_sd[k]
        module_sd[k] = v.to(device=device, dtype=target if v.is_floating_point() else v.dtype)
    module.load_state_dict(module_sd, strict=True, assign=True)
    module_sd.clear()
    stray = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
             if t.is_meta and torch.device(device).type != "meta"]
    if stray:
        raise CheckpointError(f"{path}: tensor {stray[0]!r} was not filled from the file")
    module.eval()
    return module, {"mav_file_dtype": str(source).removeprefix("torch."),
                    "mav_dtype": str(target).removeprefix("torch."), "mav_dtype_note": note}
