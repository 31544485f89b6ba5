"""LoRA files in the layouts UNet LoRAs are published in -> mav_core.models.lora deltas on our UNet.

Layouts (one file may mix them; every key must be understood, or the file is refused naming the keys):
  kohya          sd-scripts networks/lora.py: `lora_unet_<module path, '.' -> '_'>.lora_down.weight`,
                 `.lora_up.weight`, `.alpha` (scale alpha / rank);
  diffusers-attn diffusers attention-processor LoRA (`save_attn_procs`, LoRAAttnProcessor):
                 `<attention>.processor.to_q_lora.down.weight` / `.up.weight` for to_q / to_k / to_v /
                 to_out (-> to_out.0), no alpha (scale 1);
  diffusers      LoRACompatibleLinear / Conv: `[unet.]<module>.lora.down.weight` / `.lora.up.weight`, and
                 `.lora_linear_layer.down.weight` / `.up.weight`;
  peft           diffusers' PEFT-era files: `[unet.]<module>.lora_A.weight` / `.lora_B.weight` (also
                 `.lora_A.default.weight`), scale 1 unless the file has `<module>.alpha` or the adapter
                 config diffusers writes into the header (`lora_adapter_metadata`: lora_alpha,
                 alpha_pattern, use_rslora).
Module paths are ours (= diffusers UNet3DConditionModel / UNet2DConditionModel names), or, for a UNet3D
model, the original ModelScope names (`input_blocks.1.1.transformer_blocks.0.attn1.to_q`), or, for an image
UNet inflated to video, the original LDM names of its spatial layers; all three also in kohya's
underscore form. Prefixes `unet.`, `lora_unet_`, `base_model.model.`, `model.diffusion_model.` and
`diffusion_model.` are taken off.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from . import convert
from .checkpoints import CheckpointError, LoadedModel
from .weights import read_weights
from ..errors import check_number
from ..models.lora import LoraDelta, check_deltas, merged
from ..models.unet import is_temporal_key

MAX_STRENGTH = 100.0
LAYOUTS = ("kohya", "diffusers-attn", "diffusers", "peft")
KOHYA_PREFIX = "lora_unet_"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"   # diffusers' PEFT adapter config in a safetensors header
_PREFIXES = ("unet.", "base_model.model.", "model.diffusion_model.", "diffusion_model.")
# (suffix, role, layout): the longest suffixes first, so '.lora_A.default.weight' is not read as '.weight'
_SUFFIXES = ((".lora_linear_layer.down.weight", "down", "diffusers"),
             (".lora_linear_layer.up.weight", "up", "diffusers"),
             (".lora_A.default.weight", "down", "peft"), (".lora_B.default.weight", "up", "peft"),
             (".lora_down.weight", "down", "kohya"), (".lora_up.weight", "up", "kohya"),
             (".lora.down.weight", "down", "diffusers"), (".lora.up.weight", "up", "diffusers"),
             (".lora_A.weight", "down", "peft"), (".lora_B.weight", "up", "peft"),
             (".alpha", "alpha", None))
_PROCESSOR = re.compile(r"^(?P<attn>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight$")
_TEXT_ENCODER_HINTS = ("lora_te", "text_encoder", "text_model", "cond_stage_model", "te_")


class LoraFileError(CheckpointError):
    """A LoRA file that cannot be applied; the message names the file and the keys at fault."""


@dataclasses.dataclass
class _Entry:
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    alpha: float | None = None
    keys: list = dataclasses.field(default_factory=list)
    layouts: set = dataclasses.field(default_factory=set)


def _index_keys(keys: list[str]) -> dict:
    """Tensors standing for `keys` (0-d, holding each key's index): renamed by the key converters, they say
    which of our keys each converted key came from."""
    return {k: torch.tensor(i) for i, k in enumerate(keys)}


def _foreign_names(keys: list[str]) -> dict[str, str]:
    """{ModelScope or LDM weight key: our weight key} for a UNet3D model (ModelScope names) or the spatial
    layers of an image UNet inflated to video (LDM names); empty for models in neither layout."""
    for style, subset in (("modelscope", keys), ("ldm", [k for k in keys if not is_temporal_key(k)])):
        try:
            renamed = (convert.ours_to_modelscope if style == "modelscope" else convert.ours_to_ldm)(_index_keys(subset))
        except ValueError:
            continue
        return {k: subset[int(v)] for k, v in renamed.items()}
    return {}


def target_names(module: nn.Module) -> dict[str, str]:
    """{module path a LoRA may name, in every accepted spelling: weight key} for every weight LoRA can patch
    (Linear / Conv weights: 2 dimensions or more)."""
    weights = [k for k, p in module.named_parameters() if k.endswith(".weight") and p.dim() >= 2]
    names = {}
    for key in weights:
        names[key[:-len(".weight")]] = key
    for foreign, key in _foreign_names(list(module.state_dict())).items():
        if key in weights and foreign.endswith(".weight"):
            names.setdefault(foreign[:-len(".weight")], key)
    names.update({name.replace(".", "_"): key for name, key in list(names.items())})
    return names


def _split(key: str) -> tuple[str, str, str] | None:
    """(module path, role, layout) of one LoRA key, or None when it is in no known layout."""
    m = _PROCESSOR.match(key)
    if m:
        proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
        return f"{m['attn']}.{proj}", m["role"], "diffusers-attn"
    for suffix, role, layout in _SUFFIXES:
        if key.endswith(suffix):
            return key[:-len(suffix)], role, layout or ""
    return None


def _strip(name: str) -> str:
    if name.startswith(KOHYA_PREFIX):
        return name[len(KOHYA_PREFIX):]
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _hint(unknown: list[str]) -> str:
    if any(k.lower().startswith(_TEXT_ENCODER_HINTS) for k in unknown):
        return " (text-encoder LoRA keys: this node patches the decoder's UNet only)"
    return ""


def _named(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def adapter_alphas(metadata: dict | None, source: str = "LoRA"):
    """alpha_for(module path, rank) -> alpha or None, from the PEFT adapter config diffusers writes into a
    safetensors header (`lora_adapter_metadata`: `unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`;
    keys also without the `unet.` prefix). None when the file has no such config."""
    raw = (metadata or {}).get(ADAPTER_METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
        config = {k.removeprefix("unet."): v for k, v in config.items()} if isinstance(config, dict) else None
        alpha, patterns = config.get("lora_alpha"), dict(config.get("alpha_pattern") or {})
        rslora = bool(config.get("use_rslora", False))
        numbers = [alpha, *patterns.values()] if alpha is not None else list(patterns.values())
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ValueError("lora_alpha / alpha_pattern values must be finite numbers")
    except (ValueError, TypeError, AttributeError) as e:
        raise LoraFileError(f"{source}: unreadable {ADAPTER_METADATA_KEY} in the header ({e})") from None

    def alpha_for(name: str, rank: int) -> float | None:
        hit = next((v for p, v in patterns.items() if re.fullmatch(rf"(.*\.)?(?:{p})", name)), alpha)
        if hit is None:
            return None
        return float(hit) * math.sqrt(rank) if rslora else float(hit)   # rsLoRA scales by alpha / sqrt(rank)
    return alpha_for


def parse_lora(sd: dict, module: nn.Module, source: str = "LoRA", alpha_for=None) -> list[LoraDelta]:
    """The deltas of a LoRA state dict `sd` on `module`'s weights. Every key must be a LoRA key of a known
    layout naming a weight of `module`, with its up and down both present and fitting the weight;
    otherwise LoraFileError names `source` and every key at fault. alpha_for (adapter_alphas): the file's
    adapter config, for layers without an alpha key of their own."""
    names = target_names(module)
    entries: dict[str, _Entry] = {}
    unknown, bad = [], []
    for key, value in sd.items():
        parts = _split(key)
        target = names.get(_strip(parts[0])) if parts else None
        if target is None or not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        _, role, layout = parts
        entry = entries.setdefault(target, _Entry())
        entry.keys.append(key)
        if layout:
            entry.layouts.add(layout)
        if role == "alpha":
            if value.numel() != 1 or not bool(torch.isfinite(value.double()).all()):
                bad.append(f"{key}: alpha must be one finite number, got shape {tuple(value.shape)}")
            else:
                entry.alpha = float(value.reshape(()))
        elif getattr(entry, role) is not None:
            bad.append(f"{key}: a second {role} matrix for {target} (the file names this layer twice)")
        else:
            setattr(entry, role, value)
    if unknown:
        raise LoraFileError(f"{source}: {len(unknown)} keys name no weight of this decoder or are in no known "
                            f"LoRA layout ({', '.join(LAYOUTS)}): {_named(unknown)}{_hint(unknown)}")
    deltas = []
    for target, e in entries.items():
        named = ", ".join(sorted(e.keys))
        if e.alpha is None and alpha_for is not None and e.down is not None and e.down.dim() >= 1:
            e.alpha = alpha_for(_strip(_split(e.keys[0])[0]), int(e.down.shape[0]))
        if e.up is None or e.down is None:
            bad.append(f"{named}: {'up' if e.up is None else 'down'} matrix missing for {target}")
        elif len(e.layouts) > 1:
            bad.append(f"{named}: one layer in several layouts ({sorted(e.layouts)})")
        elif problem := check_deltas(module, [LoraDelta(target, e.up, e.down, e.alpha)]):
            bad.append(f"{named}: {problem[0]}")
        else:
            deltas.append(LoraDelta(target, e.up, e.down, e.alpha))
    if bad:
        raise LoraFileError(f"{source}: {len(bad)} LoRA entries cannot be applied: {_named(bad, 10)}")
    return deltas


def read_lora(path: str | Path) -> tuple[dict, dict]:
    """(tensors, safetensors header metadata) of a LoRA file (.safetensors, header validated first;
    .pt/.pth/.bin/.ckpt read weights-only, no metadata)."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"{path}: no such LoRA file")
    sd, metadata = read_weights(path)
    if not sd:
        raise LoraFileError(f"{path}: holds no tensors")
    return sd, metadata


def apply_lora(model: LoadedModel, path: str | Path, strength: float) -> LoadedModel:
    """A new LoadedModel: `model` with the LoRA file at `path` merged at `strength` (in [-100, 100]; 0
    gives the model's own weights). `model` is left as it was; untouched weights are shared with it."""
    check_number("strength", strength, -MAX_STRENGTH, MAX_STRENGTH)
    sd, metadata = read_lora(path)
    deltas = parse_lora(sd, model.module, str(path), adapter_alphas(metadata, str(path)))
    module = merged(model.module, deltas, float(strength))
    applied = json.loads(model.metadata.get("mav_loras", "[]"))
    applied.append({"file": Path(path).name, "strength": float(strength), "layers": len(deltas)})
    metadata = dict(model.metadata, mav_loras=json.dumps(applied))
    return dataclasses.replace(model, module=module, metadata=metadata)
