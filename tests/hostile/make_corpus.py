"""Write a corpus of hostile and broken checkpoint files, and what loading each must say.

    python tests/hostile/make_corpus.py OUT_DIR      # writes the files, prints one line per case

tests/test_hostile.py builds the corpus into a temp folder at test time (nothing binary lives in git).
Every case is loaded with mav_core.io.checkpoints.load_model (or, for motion files, apply_motion) and must
fail with a CheckpointError whose message names the file and matches `expect` (a regex), without side
effects: pickle payloads would create `marker` if they ever ran.
"""
from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mav_core.io.checkpoints import save_model  # noqa: E402
from mav_core.diffusion import NoiseSchedule  # noqa: E402
from mav_core.io.motion import save_motion  # noqa: E402
from mav_core.models.control import ControlAdapter, ControlConfig  # noqa: E402
from mav_core.models.prior import DiffusionPrior, PriorConfig  # noqa: E402
from mav_core.models.text import TextImageConfig, TextImageEncoder  # noqa: E402
from mav_core.models.unet import SpaceTimeUNet, UNetConfig  # noqa: E402

TINY = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True),
                  context_dim=24, norm_num_groups=8, attention_head_dim=16, image_embed_dim=12,
                  image_embed_tokens=2)
OTHER_BASE = UNetConfig(block_out_channels=(16, 48), layers_per_block=1, attention_levels=(False, True),
                        context_dim=24, norm_num_groups=8, attention_head_dim=16, image_embed_dim=12,
                        image_embed_tokens=2)


@dataclass
class Case:
    name: str                 # short id
    path: Path                # the file or folder handed to the loader
    expect: str               # regex the error message must match
    what: str                 # the corruption, in words
    action: str = "load"      # "load": load_model(path); "motion": apply_motion(TINY model, path)
    marker: Path | None = None  # a file the payload would create if it ran
    big: bool = False         # would need a lot of memory if anything were allocated before validation
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# raw safetensors building blocks
# ---------------------------------------------------------------------------------------------------

def raw_safetensors(header: dict | list | str | bytes, data: bytes = b"", claimed_len: int | None = None) -> bytes:
    """A safetensors-shaped byte string with an arbitrary header (JSON-encoded unless bytes/str)."""
    if isinstance(header, bytes):
        body = header
    elif isinstance(header, str):
        body = header.encode()
    else:
        body = json.dumps(header).encode()
    n = len(body) if claimed_len is None else claimed_len
    return struct.pack("<Q", n) + body + data


def _tensor(dtype="F32", shape=(2,), start=0, end=8):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}


def tiny_model(seed: int = 0, config: UNetConfig = TINY) -> SpaceTimeUNet:
    torch.manual_seed(seed)
    return SpaceTimeUNet(config).eval()


def valid_checkpoint(path: Path, seed: int = 0) -> Path:
    save_model(path, tiny_model(seed), "decoder", NoiseSchedule("cosine"), "v")
    return path


def _ours_with(path: Path, sd: dict, meta_changes: dict) -> None:
    """Our checkpoint file with a modified state dict and/or metadata."""
    meta = {"mav_module": "SpaceTimeUNet", "mav_stage": "decoder", "mav_config": TINY.to_json(),
            "mav_schedule": json.dumps(NoiseSchedule("cosine").to_dict()), "mav_prediction": "v"}
    meta.update(meta_changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)


# ---------------------------------------------------------------------------------------------------
# pickle payloads (never loaded by the code under test; they would create `marker`)
# ---------------------------------------------------------------------------------------------------

class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> dict:
    m = str(marker)
    return {
        "os_system": _Reduce(os.system, (f"touch '{m}'",)),
        "open": _Reduce(builtins.open, (m, "w")),
        "exec": _Reduce(builtins.exec, (f"open({m!r}, 'w').close()",)),
        "eval": _Reduce(builtins.eval, (f"open({m!r}, 'w')",)),
    }


def _torch_zip_with_pickle(good: bytes, pkl: bytes) -> bytes:
    """A torch.save zip archive whose data.pkl is replaced by `pkl`."""
    src = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = pkl if item.filename.endswith("/data.pkl") else src.read(item.filename)
            dst.writestr(item, data)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------
# sizes declared anywhere in a file, and archives that expand
# ---------------------------------------------------------------------------------------------------
def _tiny_modules() -> dict:
    """mav_module -> (module, stage) of small instances of every module class our files hold."""
    return {"DiffusionPrior": (DiffusionPrior(PriorConfig(embed_dim=4, text_width=4, width=8, layers=1, heads=1,
                                                          max_tokens=2)), "prior"),
            "TextImageEncoder": (TextImageEncoder(TextImageConfig(vocab=["cat"], max_tokens=4, width=8, layers=1,
                                                                  heads=1, embed_dim=4, image_channels=(8,))), "text"),
            "SpaceTimeUNet": (tiny_model(), "decoder"),
            "ControlAdapter": (ControlAdapter(ControlConfig.for_unet(TINY, hidden=4)), "control")}


def module_file(path: Path, name: str, config_changes: dict, meta_changes: dict | None = None) -> Path:
    """One of our files holding a small `name` module whose mav_config has `config_changes` (a key of
    "schedule.<field>" changes the config's own noise schedule); meta_changes with None drop a key."""
    module, stage = _tiny_modules()[name]
    config = json.loads(module.config.to_json())
    for key, value in config_changes.items():
        if key.startswith("schedule."):
            schedule = config["schedule"] if isinstance(config.get("schedule"), dict) else {}
            config["schedule"] = {**schedule, key.split(".", 1)[1]: value}
        else:
            config[key] = value
    meta = {"mav_module": name, "mav_stage": stage, "mav_config": json.dumps(config),
            "mav_schedule": json.dumps(NoiseSchedule("cosine").to_dict()), **(meta_changes or {})}
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path),
              metadata={k: v for k, v in meta.items() if v is not None})
    return path


# (module, config changes, regex of the refusal): sizes a config declares that no tensor bounds
DECLARED_SIZES = (
    ("DiffusionPrior", {"schedule.num_train_steps": 10 ** 12}, r"schedule.*num_train_steps"),
    ("DiffusionPrior", {"layers": 10 ** 9}, r"layers = 1000000000 is beyond"),
    ("DiffusionPrior", {"heads": 2 ** 40}, r"heads = \d+ is beyond"),
    ("DiffusionPrior", {"max_tokens": 10 ** 7}, r"max_tokens = \d+ is beyond"),
    ("TextImageEncoder", {"image_size": 60_000}, r"image_size must be an integer in 1..4096"),
    ("TextImageEncoder", {"max_tokens": 10 ** 9}, r"max_tokens = \d+ is beyond"),
    ("TextImageEncoder", {"width": 2 ** 20, "heads": 2 ** 20}, r"width = \d+ is beyond"),
    ("SpaceTimeUNet", {"layers_per_block": 10 ** 9}, r"layers_per_block = \d+ is beyond"),
    ("SpaceTimeUNet", {"image_embed_tokens": 10 ** 8}, r"image_embed_tokens = \d+ is beyond"),
    ("ControlAdapter", {"hidden": 10 ** 9}, r"hidden = \d+ is beyond"),
)


def _torch_zip_with_record(good: bytes, data: bytes) -> bytes:
    """A torch.save zip archive whose data/0 entry is replaced by `data`, stored uncompressed."""
    src = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            dst.writestr(item, data if item.filename.endswith("/data/0") else src.read(item.filename))
    return out.getvalue()


def deflate_bomb(good: bytes, expanded: int) -> bytes:
    """A torch.save zip whose data/0 entry is `expanded` zero bytes, deflated (about expanded / 1000 bytes)."""
    src = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.endswith("/data/0"):
                info = zipfile.ZipInfo(item.filename)
                info.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(info, "w", force_zip64=True) as entry:
                    zeros = bytes(1 << 20)
                    for _ in range(expanded >> 20):
                        entry.write(zeros)
            else:
                dst.writestr(item.filename, src.read(item.filename))
    return out.getvalue()


def bounded_cases(out: Path) -> list[Case]:
    """Sizes declared in any config or schedule, deflated archives, files that are something else."""
    cases = []
    path = module_file(out / "prior_schedule_in_config.safetensors", "DiffusionPrior",
                       {"schedule.num_train_steps": 400_000_000}, {"mav_schedule": None})
    cases.append(Case("prior_schedule_in_config", path, r"invalid mav_config.*num_train_steps",
                      "prior config declaring a 4*10^8-step schedule, no mav_schedule entry", big=True))
    for i, (name, changes, expect) in enumerate(DECLARED_SIZES):
        path = module_file(out / f"declared_{i}_{name}.safetensors", name, changes)
        cases.append(Case(f"declared_{i}_{name}", path, rf"invalid mav_config.*{expect}",
                          f"{name} config declaring {changes}", big=True))
    buf = io.BytesIO()
    torch.save({"conv_in.weight": torch.zeros(2)}, buf)
    (out / "bomb.pth").write_bytes(deflate_bomb(buf.getvalue(), 512 << 20))
    cases.append(Case("zip_deflate_bomb", out / "bomb.pth", r"refused: its zip entries expand to",
                      "torch zip whose data/0 deflates 512 MiB of zeros", big=True))
    folder = out / "diffusers_bin_bomb" / "unet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diffusion_pytorch_model.bin").write_bytes(deflate_bomb(buf.getvalue(), 128 << 20))
    cases.append(Case("diffusers_bin_bomb", out / "diffusers_bin_bomb", r"refused: its zip entries expand to",
                      "diffusers folder whose .bin deflates 128 MiB of zeros", big=True))
    (out / "oversized_record.pth").write_bytes(_torch_zip_with_record(buf.getvalue(), bytes(96 << 20)))
    cases.append(Case("zip_oversized_record", out / "oversized_record.pth", r"refused: its zip entries hold \d+ bytes",
                      "torch zip storing 96 MiB in data/0 for a declared 8-byte tensor", big=True))
    module_file(out / "safetensors_as.pth", "SpaceTimeUNet", {})
    cases.append(Case("safetensors_as_pth", out / "safetensors_as.pth", r"is a safetensors file, not a torch.save",
                      "one of our safetensors files renamed .pth"))
    return cases


# ---------------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------------

def build(out: str | os.PathLike) -> list[Case]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "PWNED"
    cases: list[Case] = []

    def add(name, filename, content: bytes, expect, what, **kw):
        path = out / filename
        path.write_bytes(content)
        cases.append(Case(name, path, expect, what, **kw))

    good = valid_checkpoint(out / "_valid.safetensors")
    good_bytes = good.read_bytes()
    (n,) = struct.unpack("<Q", good_bytes[:8])
    header = json.loads(good_bytes[8:8 + n])
    data = good_bytes[8 + n:]
    names = [k for k in header if k != "__metadata__"]

    # --- safetensors container -----------------------------------------------------------------
    add("truncated", "truncated.safetensors", good_bytes[: len(good_bytes) // 2], r"truncated|outside",
        "valid file cut in half")
    add("truncated_header", "truncated_header.safetensors", good_bytes[: 8 + n // 2], r"truncated",
        "cut inside the header")
    add("huge_header_len", "huge_header_len.safetensors", struct.pack("<Q", 2 ** 62) + b"{}",
        r"header claims \d+ bytes", "header length 2**62", big=True)
    add("header_len_max", "header_len_max.safetensors", b"\xff" * 8 + b"{}" * 8, r"header claims \d+ bytes",
        "header length 2**64-1", big=True)
    add("header_not_json", "header_not_json.safetensors", raw_safetensors(b"not json at all!"),
        r"header is not JSON", "header bytes are not JSON")
    add("header_not_utf8", "header_not_utf8.safetensors", raw_safetensors(b"\xff\xfe{\x00}"),
        r"header is not JSON", "header bytes are not UTF-8")
    add("header_empty", "header_empty.safetensors", raw_safetensors(b""), r"header is not JSON",
        "header length 0")
    add("header_list", "header_list.safetensors", raw_safetensors([1, 2, 3]), r"not a JSON object",
        "header JSON is a list")
    add("header_string", "header_string.safetensors", raw_safetensors('"hello"'), r"not a JSON object",
        "header JSON is a string")
    add("overlap", "overlap.safetensors",
        raw_safetensors({"a": _tensor(start=0, end=8), "b": _tensor(start=4, end=12)}, bytes(12)),
        r"'a' and 'b' overlap", "two tensors share bytes")
    add("past_eof", "past_eof.safetensors", raw_safetensors({"a": _tensor(start=0, end=4000)}, bytes(8)),
        r"'a'.*outside", "tensor extends past the end of the file", )
    add("negative_shape", "negative_shape.safetensors",
        raw_safetensors({"a": _tensor(shape=(-2,), start=0, end=8)}, bytes(8)), r"'a'.*invalid shape",
        "negative dimension")
    add("float_shape", "float_shape.safetensors",
        raw_safetensors({"a": _tensor(shape=(2.5,), start=0, end=8)}, bytes(8)), r"'a'.*invalid shape",
        "non-integer dimension")
    add("shape_not_list", "shape_not_list.safetensors",
        raw_safetensors({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8)),
        r"'a'.*(invalid shape|malformed)", "shape is a number, not a list")
    add("bool_shape", "bool_shape.safetensors",
        raw_safetensors({"a": _tensor(shape=(True, 2), start=0, end=8)}, bytes(8)), r"'a'.*invalid shape",
        "boolean dimension")
    add("offsets_malformed", "offsets_malformed.safetensors",
        raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8)),
        r"'a'.*malformed", "data_offsets has one number")
    add("offsets_strings", "offsets_strings.safetensors",
        raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, bytes(8)),
        r"'a'.*malformed", "data_offsets are strings")
    add("huge_shape", "huge_shape.safetensors",
        raw_safetensors({"a": _tensor(shape=(2 ** 40, 2 ** 40), start=0, end=8)}, bytes(8)),
        r"'a'.*(outside|inconsistent)", "shape of 2**80 elements in 8 bytes", big=True)
    add("entry_not_object", "entry_not_object.safetensors", raw_safetensors({"a": "F32"}, bytes(8)),
        r"'a'.*malformed", "tensor entry is a string")
    add("unknown_dtype", "unknown_dtype.safetensors",
        raw_safetensors({"a": _tensor(dtype="F128", start=0, end=8)}, bytes(8)), r"'a'.*unsupported dtype 'F128'",
        "dtype F128")
    add("dtype_size_mismatch", "dtype_size_mismatch.safetensors",
        raw_safetensors({"a": _tensor(dtype="F32", shape=(4,), start=0, end=8)}, bytes(8)),
        r"'a'.*inconsistent", "F32 [4] in 8 bytes")
    add("zero_size", "zero_size.safetensors", b"", r"0 bytes, too short", "empty file")
    add("seven_bytes", "seven_bytes.safetensors", b"\x10\x00\x00\x00\x00\x00\x00", r"7 bytes, too short",
        "7-byte file")
    add("metadata_nonstring", "metadata_nonstring.safetensors",
        raw_safetensors({"__metadata__": {"mav_module": 5}, "a": _tensor()}, bytes(8)),
        r"__metadata__ must map strings to strings", "metadata value is a number")
    add("metadata_list", "metadata_list.safetensors",
        raw_safetensors({"__metadata__": ["mav_module"], "a": _tensor()}, bytes(8)),
        r"__metadata__ must map strings to strings", "metadata is a list")
    add("gap_between_tensors", "padding_only.safetensors",
        raw_safetensors({}, bytes(64)), r"belong to no tensor", "no tensors, only stray data bytes")

    # --- wrong families ------------------------------------------------------------------------
    vae = {"encoder.down.0.block.0.conv1.weight": torch.zeros(8, 3, 3, 3),
           "decoder.up.0.block.0.conv1.weight": torch.zeros(8, 8, 3, 3), "quant_conv.weight": torch.zeros(8, 8, 1, 1)}
    save_file(vae, str(out / "vae_like.safetensors"))
    cases.append(Case("vae_like", out / "vae_like.safetensors", r"looks like a VAE.*supported families",
                      "a VAE's key set"))
    text = {"text_model.embeddings.token_embedding.weight": torch.zeros(16, 8),
            "text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8)}
    save_file(text, str(out / "text_encoder_like.safetensors"))
    cases.append(Case("text_encoder_like", out / "text_encoder_like.safetensors",
                      r"looks like a text encoder.*supported families", "a CLIP text encoder's key set"))
    save_file({"x": torch.zeros(2)}, str(out / "random_keys.safetensors"))
    cases.append(Case("random_keys", out / "random_keys.safetensors", r"no supported layout",
                      "a state dict of no known layout"))
    sd = tiny_model().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "ours_without_config.safetensors"))
    cases.append(Case("ours_without_config", out / "ours_without_config.safetensors",
                      r"our own key layout but no mav_config", "our keys without metadata"))

    # --- our files with a config that does not match -------------------------------------------
    dropped = dict(sd)
    gone = next(k for k in dropped if k.endswith("conv_in.weight"))
    del dropped[gone]
    _ours_with(out / "missing_key.safetensors", dropped, {})
    cases.append(Case("missing_key", out / "missing_key.safetensors", rf"missing key '{gone}'", "one key removed"))
    wrong = dict(sd)
    wrong["conv_out.weight"] = torch.zeros(3, 16, 1, 1)
    _ours_with(out / "wrong_shape.safetensors", wrong, {})
    cases.append(Case("wrong_shape", out / "wrong_shape.safetensors", r"'conv_out.weight' has shape \(3, 16, 1, 1\)",
                      "one tensor with another shape"))
    _ours_with(out / "unexpected_key.safetensors", {**sd, "sneaky.weight": torch.zeros(1)}, {})
    cases.append(Case("unexpected_key", out / "unexpected_key.safetensors", r"unexpected key 'sneaky.weight'",
                      "one key too many"))
    cfg = json.loads(TINY.to_json())
    _ours_with(out / "config_unknown_keys.safetensors", sd, {"mav_config": json.dumps({**cfg, "wibble": 3})})
    cases.append(Case("config_unknown_keys", out / "config_unknown_keys.safetensors",
                      r"invalid mav_config.*unknown UNetConfig keys \['wibble'\]", "config with an unknown key"))
    _ours_with(out / "config_wrong_type.safetensors", sd, {"mav_config": json.dumps({**cfg, "block_out_channels": "ab"})})
    cases.append(Case("config_wrong_type", out / "config_wrong_type.safetensors", r"invalid mav_config",
                      "block_out_channels is a string"))
    _ours_with(out / "config_float_channels.safetensors", sd, {"mav_config": json.dumps({**cfg, "in_channels": 2.5})})
    cases.append(Case("config_float_channels", out / "config_float_channels.safetensors", r"invalid mav_config",
                      "in_channels is 2.5"))
    _ours_with(out / "config_negative.safetensors", sd, {"mav_config": json.dumps({**cfg, "in_channels": -3})})
    cases.append(Case("config_negative", out / "config_negative.safetensors", r"invalid mav_config",
                      "in_channels is -3"))
    _ours_with(out / "config_list.safetensors", sd, {"mav_config": "[1, 2]"})
    cases.append(Case("config_list", out / "config_list.safetensors", r"invalid mav_config", "config is a JSON list"))
    _ours_with(out / "config_not_json.safetensors", sd, {"mav_config": "{oops"})
    cases.append(Case("config_not_json", out / "config_not_json.safetensors", r"invalid mav_config",
                      "config is not JSON"))
    huge = {**cfg, "block_out_channels": [65536, 131072], "norm_num_groups": 8}
    _ours_with(out / "config_huge.safetensors", sd, {"mav_config": json.dumps(huge)})
    cases.append(Case("config_huge", out / "config_huge.safetensors", r"invalid mav_config.*beyond the limit",
                      "config declaring a ~10^12-parameter model over tiny tensors", big=True))
    _ours_with(out / "schedule_not_json.safetensors", sd, {"mav_schedule": "cosine!"})
    cases.append(Case("schedule_not_json", out / "schedule_not_json.safetensors", r"invalid mav_schedule",
                      "schedule metadata is not JSON"))
    _ours_with(out / "schedule_bad.safetensors", sd, {"mav_schedule": json.dumps({"name": "zigzag"})})
    cases.append(Case("schedule_bad", out / "schedule_bad.safetensors", r"invalid mav_schedule.*zigzag",
                      "unknown schedule name"))
    _ours_with(out / "prediction_bad.safetensors", sd, {"mav_prediction": "guess"})
    cases.append(Case("prediction_bad", out / "prediction_bad.safetensors", r"invalid mav_prediction 'guess'",
                      "unknown prediction type"))
    _ours_with(out / "schedule_huge.safetensors", sd, {"mav_schedule": json.dumps({"name": "cosine",
                                                                                    "num_train_steps": 10 ** 12})})
    cases.append(Case("schedule_huge", out / "schedule_huge.safetensors", r"invalid mav_schedule.*num_train_steps",
                      "a 10^12-step schedule (would allocate terabytes when sampling)", big=True))
    deep = "[" * 100_000 + "]" * 100_000
    _ours_with(out / "config_deep.safetensors", sd, {"mav_config": deep})
    cases.append(Case("config_deep", out / "config_deep.safetensors", r"invalid mav_config",
                      "config JSON nested 100000 deep"))
    add("header_deep", "header_deep.safetensors", raw_safetensors(deep), r"header is not JSON",
        "header JSON nested 100000 deep")
    _ours_with(out / "unknown_module.safetensors", sd, {"mav_module": "Trojan"})
    cases.append(Case("unknown_module", out / "unknown_module.safetensors", r"module 'Trojan' is not one of",
                      "mav_module names no known class"))

    # --- pickles ---------------------------------------------------------------------------------
    for kind, payload in _payloads(marker).items():
        add(f"pickle_{kind}", f"pickle_{kind}.pth", pickle.dumps({"conv_in.weight": payload}, protocol=2),
            r"refused|not a readable torch checkpoint", f"bare pickle whose __reduce__ calls {kind}", marker=marker)
    buf = io.BytesIO()
    torch.save({"conv_in.weight": torch.zeros(2)}, buf)
    evil = pickle.dumps({"conv_in.weight": _payloads(marker)["os_system"]}, protocol=2)
    add("zip_malicious_data_pkl", "zip_malicious.pth", _torch_zip_with_pickle(buf.getvalue(), evil),
        r"refused", "torch zip archive whose data.pkl calls os.system", marker=marker)
    add("zip_malicious_bin", "pytorch_model.bin", _torch_zip_with_pickle(
        buf.getvalue(), pickle.dumps(_payloads(marker)["exec"], protocol=2)), r"refused",
        ".bin zip whose data.pkl calls exec", marker=marker)
    add("text_ckpt", "model.ckpt", b"this is just a text file\n" * 20, r"not a torch.save file \(it starts with b'this",
        "plain text named .ckpt")
    add("zero_pth", "empty.pth", b"", r"empty file, not a torch.save file", "empty .pth")
    add("truncated_zip", "truncated.pth", buf.getvalue()[: len(buf.getvalue()) // 2],
        r"not a readable torch checkpoint|refused", "torch zip cut in half")
    list_buf = io.BytesIO()
    torch.save([1, 2, 3], list_buf)
    add("pickle_not_state_dict", "list.pt", list_buf.getvalue(), r"holds no state dict", "a pickled list")
    add("unknown_suffix", "weights.xyz", b"\x00" * 32, r"unsupported checkpoint suffix '.xyz'",
        "a file with an unknown suffix")

    cases += bounded_cases(out)

    # --- diffusers folders -----------------------------------------------------------------------
    folder = out / "diffusers_vae" / "unet"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(vae, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "in_channels": 3}))
    cases.append(Case("diffusers_other_class", out / "diffusers_vae", r"describes a 'AutoencoderKL', not a UNet",
                      "diffusers folder whose config names AutoencoderKL"))
    folder = out / "diffusers_bad_json" / "unet"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(vae, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text("{not json")
    cases.append(Case("diffusers_bad_json", out / "diffusers_bad_json", r"not a readable JSON config",
                      "config.json is not JSON"))
    from mav_core.io import convert, unet_configs
    cfg3d = unet_configs.config_from_diffusers({"_class_name": "UNet3DConditionModel", "block_out_channels": [32, 64],
                                           "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
                                           "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
                                           "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 16,
                                           "attention_head_dim": 8})
    sd3d = convert.ours_to_diffusers(SpaceTimeUNet(cfg3d).state_dict())
    diff_cfg = unet_configs.unet3d_config_to_diffusers(cfg3d)
    for name, change, expect in (
            ("diffusers_channels_int", {"block_out_channels": 5}, r"block_out_channels=5 must be a list"),
            ("diffusers_channels_str", {"in_channels": "four"}, r"in_channels='four' must be a positive integer"),
            ("diffusers_layers_str", {"layers_per_block": "2"}, r"layers_per_block='2' must be a positive integer"),
            ("diffusers_negative", {"in_channels": -4}, r"in_channels=-4 must be a positive integer"),
            ("diffusers_heads_zero", {"attention_head_dim": 0}, r"attention_head_dim=0 must be a positive integer"),
            ("diffusers_channel_mismatch", {"in_channels": 7}, r"conv_in.weight' has shape")):
        folder = out / name / "unet"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd3d.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**diff_cfg, **change}))
        cases.append(Case(name, out / name, expect, f"UNet3D config.json with {change}"))
    (out / "empty_folder").mkdir(exist_ok=True)
    cases.append(Case("empty_folder", out / "empty_folder", r"no diffusers UNet weights", "an empty folder"))

    # --- motion files ----------------------------------------------------------------------------
    save_motion(tiny_model(1, OTHER_BASE), out / "motion_other_base.safetensors")
    cases.append(Case("motion_wrong_base", out / "motion_other_base.safetensors", r"has shape|missing key|unexpected key",
                      "motion file of another base model applied to TINY", action="motion"))
    save_motion(tiny_model(1), out / "_motion_ok.safetensors")
    sdm = dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(out / "_motion_ok.safetensors")))
    first = sorted(sdm)[0]
    del sdm[first]
    save_file(sdm, str(out / "motion_missing.safetensors"),
              metadata={"mav_module": "MotionModule", "mav_stage": "motion", "mav_config": TINY.to_json()})
    cases.append(Case("motion_missing_key", out / "motion_missing.safetensors", rf"missing key '{first}'",
                      "motion file missing a temporal tensor"))
    add("motion_not_motion", "motion_is_decoder.safetensors", good_bytes, r"not a motion file",
        "a decoder checkpoint given as a motion file", action="motion")
    os.unlink(out / "_motion_ok.safetensors")
    os.unlink(good)
    return cases


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python tests/hostile/make_corpus.py OUT_DIR", file=sys.stderr)
        return 2
    for case in build(argv[0]):
        print(f"{case.name:28s} {case.path.name:40s} {case.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
