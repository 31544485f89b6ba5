"""Checkpoints: safetensors files with the model's config in the header metadata.

Our files carry metadata keys
  mav_module   the module class ("SpaceTimeUNet", "TextImageEncoder", "DiffusionPrior", ...)
  mav_stage    what the model is for ("decoder", "interpolator", "sr_video", "sr_frame", "prior", "text", ...)
  mav_config   the module's config dataclass as JSON
  mav_schedule the noise schedule as JSON (diffusion models), mav_prediction ("eps" | "v")
The header is validated (size, JSON, dtypes, tensor extents inside the file and not overlapping)
before anything is allocated, and every error names the file and what was expected.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..diffusion.schedule import NoiseSchedule
from ..models.prior import MAX_TRAIN_STEPS

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def read_header(path: str | os.PathLike) -> tuple[dict, dict]:
    """Validate a safetensors file's header without loading tensors: returns (tensor_index, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: file is {size} bytes, too short to be a safetensors file")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file or truncated (header claims {n} bytes, "
                                  f"file has {size})")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    extents = []
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - info.keys()
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry (expected dtype, shape "
                                  "and data_offsets [start, end])")
        dtype, shape, (start, end) = info["dtype"], info["shape"], offsets
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r} (expected a list of "
                                  "non-negative integers)")
        numel = 1
        for d in shape:
            numel *= d
        if not (0 <= start <= end <= data_len) or end - start != numel * DTYPE_SIZES[dtype]:
            raise CheckpointError(f"{path}: tensor {name!r} claims bytes {start}..{end} for shape {shape} "
                                  f"{dtype}, outside or inconsistent with the {data_len}-byte data section "
                                  "(truncated or corrupt file)")
        extents.append((start, end, name))
    extents.sort()
    for (s0, e0, n0), (s1, e1, n1) in zip(extents, extents[1:]):
        if s1 < e0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap in the file")
    covered = 0
    for s0, e0, _ in extents:
        if s0 > covered:
            break
        covered = max(covered, e0)
    if covered != data_len:
        raise CheckpointError(f"{path}: bytes {covered}.. of the {data_len}-byte data section belong to no tensor "
                              "(corrupt file)")
    return header, meta


def load_state_dict(path: str | os.PathLike, device="cpu") -> tuple[dict, dict]:
    """(state_dict, metadata) of a validated safetensors file."""
    _, meta = read_header(path)
    try:
        sd = load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None
    return sd, meta


def atomic_save_file(tensors: dict, path: str | os.PathLike, metadata: dict | None = None):
    """save_file into a temp file beside `path`, then rename: never a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(path, module: torch.nn.Module, stage: str, schedule: NoiseSchedule | None = None,
               prediction: str | None = None, extra: dict | None = None, state_dict: dict | None = None):
    meta = {"mav_module": type(module).__name__, "mav_stage": stage,
            "mav_config": json.dumps(asdict(module.config))}
    if schedule is not None:
        meta["mav_schedule"] = json.dumps(schedule.to_dict())
    if prediction is not None:
        meta["mav_prediction"] = prediction
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    atomic_save_file(state_dict if state_dict is not None else module.state_dict(), path, meta)


@dataclass
class LoadedModel:
    path: str
    stage: str
    family: str
    module: torch.nn.Module
    schedule: NoiseSchedule | None = None
    prediction: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.module.config

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


MAX_CONFIG_INT = 1 << 16     # any integer a mav_config declares: channels, layers, heads, tokens, widths
MAX_CONFIG_ITEMS = 1 << 20   # entries of one list in a mav_config (a vocabulary)


def schedule_from_dict(d) -> NoiseSchedule:
    """A NoiseSchedule from its JSON dict with every field bounded (ValueError / TypeError say which)."""
    if not isinstance(d, dict):
        raise TypeError(f"expected a JSON object, got {type(d).__name__}")
    steps = d.get("num_train_steps", 1000)
    if type(steps) is not int or not 2 <= steps <= MAX_TRAIN_STEPS:
        raise ValueError(f"num_train_steps must be an integer in [2, {MAX_TRAIN_STEPS}], got {steps!r}")
    for key in ("beta_start", "beta_end"):
        beta = d.get(key, 0.01)
        if type(beta) not in (int, float) or not 0 < beta < 1:
            raise ValueError(f"{key} must be a number in (0, 1), got {beta!r}")
    return NoiseSchedule.from_dict(d)


def parse_schedule(path, text: str) -> NoiseSchedule:
    """The NoiseSchedule of a mav_schedule metadata string, checked (a CheckpointError names the file)."""
    try:
        return schedule_from_dict(json.loads(text))
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{path}: invalid mav_schedule metadata ({e})") from None


def config_from_meta(path, meta: dict, config_cls):
    """config_cls built from a file's mav_config metadata, every declared size bounded first
    (check_config_sizes); any error the declared values raise is a CheckpointError naming the file."""
    try:
        config_json = json.loads(meta["mav_config"])
        if not isinstance(config_json, dict):
            raise TypeError(f"expected a JSON object, got {type(config_json).__name__}")
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{path}: invalid mav_config metadata ({e})") from None
    check_config_sizes(path, config_json)
    try:
        return config_cls.from_dict(config_json)
    except (KeyError, ValueError, TypeError, RecursionError, ZeroDivisionError, OverflowError, AttributeError,
            IndexError) as e:
        raise CheckpointError(f"{path}: invalid mav_config metadata ({type(e).__name__}: {e})") from None


def check_config_sizes(path, config: dict) -> None:
    """Bound every size a mav_config dict declares before any module is built from it: every number
    (channels, layers, heads, tokens, widths) finite and at most MAX_CONFIG_INT, every list at most
    MAX_CONFIG_ITEMS entries, and a nested noise schedule ("schedule") as mav_schedule is. A CheckpointError
    names the file and the key."""
    def walk(value, key: str):
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, float):
            if not math.isfinite(value) or abs(value) > MAX_CONFIG_INT:
                raise ValueError(f"{key} = {value} is not a finite number within the limit of {MAX_CONFIG_INT}")
        elif isinstance(value, int):
            if abs(value) > MAX_CONFIG_INT:
                raise ValueError(f"{key} = {value} is beyond the limit of {MAX_CONFIG_INT}")
        elif isinstance(value, list):
            if len(value) > MAX_CONFIG_ITEMS:
                raise ValueError(f"{key} has {len(value)} entries, more than the limit of {MAX_CONFIG_ITEMS}")
            for i, item in enumerate(value):
                walk(item, f"{key}[{i}]")
        elif isinstance(value, dict):
            for k, item in value.items():
                if k == "schedule":
                    try:
                        schedule_from_dict(item)
                    except (ValueError, TypeError) as e:
                        raise ValueError(f"{key}.schedule: {e}") from None
                else:
                    walk(item, f"{key}.{k}" if key else str(k))

    try:
        walk(config, "")
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: invalid mav_config metadata ({str(e).lstrip('.')})") from None


def build_skeleton(path, module_cls, config) -> torch.nn.Module:
    """module_cls(config) on the meta device (no memory); a config that cannot build a module raises a
    CheckpointError naming the file."""
    try:
        with torch.device("meta"):
            return module_cls(config)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError, AttributeError, IndexError,
            KeyError) as e:
        raise CheckpointError(f"{path}: invalid mav_config metadata: the config cannot build a "
                              f"{module_cls.__name__} ({type(e).__name__}: {e})") from None


def check_state_dict(path, module: torch.nn.Module, sd: dict, allow_missing=lambda k: False):
    """Raise a CheckpointError naming the first missing, unexpected or mis-shaped key."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd and not allow_missing(k)]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing in all); "
                              "the file does not match its declared config")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: key {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
