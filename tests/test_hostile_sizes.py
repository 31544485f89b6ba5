"""Generated variants of the sizes a file declares: every integer of every module class's mav_config, the
prior's own schedule, mav_schedule, and torch.save zip archives whose entries expand (any entry, any
suffix, a diffusers folder). Each is refused with one CheckpointError naming the file (and the key), by
load_model and by `python -m mav_core info`, with peak memory < 64 MiB over the child's baseline."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mav_core.io.checkpoints import MAX_CONFIG_INT, CheckpointError, MAX_TRAIN_STEPS
from mav_core.io.inflate import inflate_image_checkpoint
from mav_core.io.loader import check_declared, load_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "tests" / "hostile" / "make_corpus.py")
make_corpus = sys.modules.setdefault("make_corpus", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(make_corpus)

SEED = int(os.environ.get("HOSTILE_SEED", "20261202"))


def _int_fields(name: str) -> list[str]:
    module, _ = make_corpus._tiny_modules()[name]
    config = json.loads(module.config.to_json())
    return [k for k, v in config.items() if type(v) is int]


def config_variants(folder: Path, rng: random.Random) -> list[tuple[Path, str]]:
    """(file, regex of the refusal): one huge integer per config field of every module class, plus the
    prior's schedule with and without mav_schedule."""
    out = []
    for name in ("DiffusionPrior", "TextImageEncoder", "SpaceTimeUNet", "ControlAdapter"):
        for key in _int_fields(name):
            value = rng.choice([MAX_CONFIG_INT + 1 + rng.randrange(1000), rng.randrange(2 ** 20, 2 ** 62)])
            path = make_corpus.module_file(folder / f"{name}_{key}.safetensors", name, {key: value})
            out.append((path, rf"invalid mav_config.*{key} = {value} is beyond"))
    for drop in (True, False):
        steps = rng.randrange(MAX_TRAIN_STEPS + 1, 2 ** 40)
        path = make_corpus.module_file(folder / f"prior_steps_{drop}.safetensors", "DiffusionPrior",
                                       {"schedule.num_train_steps": steps}, {"mav_schedule": None} if drop else {})
        out.append((path, rf"invalid mav_config.*schedule.*num_train_steps.*{steps}"))
    steps = rng.randrange(MAX_TRAIN_STEPS + 1, 2 ** 40)
    path = make_corpus.module_file(folder / "mav_schedule.safetensors", "SpaceTimeUNet", {},
                                   {"mav_schedule": json.dumps({"name": "linear", "num_train_steps": steps})})
    out.append((path, rf"invalid mav_schedule.*num_train_steps.*{steps}"))
    return out


def zip_variants(folder: Path, rng: random.Random) -> list[tuple[Path, str]]:
    """torch.save archives with one entry (weights, pickle or bookkeeping) deflated from 40..160 MiB of zeros,
    under each accepted suffix and as a diffusers folder."""
    buf = io.BytesIO()
    torch.save({"conv_in.weight": torch.zeros(3), "conv_in.bias": torch.zeros(1)}, buf)
    out = []
    for i, suffix in enumerate((".pth", ".pt", ".ckpt", ".bin", "diffusers")):
        data = make_corpus.deflate_bomb(buf.getvalue(), rng.randrange(40, 160) << 20)
        if suffix == "diffusers":
            (folder / "diffusers" / "unet").mkdir(parents=True)
            (folder / "diffusers" / "unet" / "diffusion_pytorch_model.bin").write_bytes(data)
            path, named = folder / "diffusers", "diffusion_pytorch_model.bin"
        else:
            path = folder / f"bomb_{i}{suffix}"
            path.write_bytes(data)
            named = path.name
        out.append((path, rf"{named}: refused: its zip entries expand to"))
    return out


def test_every_declared_size_is_refused_by_name(tmp_path):
    problems = []
    for path, expect in config_variants(tmp_path, random.Random(SEED)):
        try:
            load_model(path)
        except CheckpointError as e:
            if path.name not in str(e) or not re.search(expect, str(e)):
                problems.append(f"{path.name}: {e} (expected {expect!r})")
        else:
            problems.append(f"{path.name}: loaded")
    assert not problems, "\n".join(problems)
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".safetensors"]


_PROBE = r"""
import contextlib, io, json, re, resource, sys
from pathlib import Path
sys.path.insert(0, {root!r})
vmdata = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmData:")) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (vmdata + (1 << 30), vmdata + (1 << 30)))   # safety net: +1 GiB
import torch
torch.set_num_threads(1)
from mav_core.io.loader import check_declared, load_model
from mav_core.cli.main import main

def kib(field):
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

result = {{}}
for path in {paths!r}:
    Path("/proc/self/clear_refs").write_text("5")
    before = kib("VmRSS")
    try:
        load_model(path)
        kind, msg = "none", ""
    except Exception as e:
        kind, msg = type(e).__name__, str(e)
    grown = (kib("VmHWM") - before) * 1024
    err = io.StringIO()
    Path("/proc/self/clear_refs").write_text("5")
    before = kib("VmRSS")
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["info", path])
    result[path] = [kind, msg, grown, rc, err.getvalue(), (kib("VmHWM") - before) * 1024]
print(json.dumps(result))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_declared_sizes_and_expanding_archives_stay_within_64_mib(tmp_path):
    rng = random.Random(SEED + 1)
    cases = rng.sample(config_variants(tmp_path, rng), 6) + zip_variants(tmp_path, rng)
    code = _PROBE.format(root=str(ROOT), paths=[str(p) for p, _ in cases])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "32768",
                               "MALLOC_TRIM_THRESHOLD_": "0"})
    if proc.returncode != 0 and "clear_refs" in proc.stderr:
        pytest.skip("cannot reset peak RSS (/proc/self/clear_refs not writable)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, expect in cases:
        kind, msg, grown, rc, stderr, cli_grown = result[str(path)]
        assert kind == "CheckpointError" and re.search(expect, msg), (path.name, kind, msg)
        assert grown < 64 * 2 ** 20, f"{path.name}: load_model peak grew by {grown / 2 ** 20:.0f} MiB"
        assert rc == 2 and stderr.startswith("error: ") and re.search(expect, stderr), (path.name, rc, stderr)
        assert stderr.count("\n") == 1, f"{path.name}: one message expected, got {stderr!r}"
        assert cli_grown < 64 * 2 ** 20, f"{path.name}: info peak grew by {cli_grown / 2 ** 20:.0f} MiB"


@pytest.mark.parametrize("loader, name, changes, meta, expect", [
    ("PriorLoader", "DiffusionPrior", {"schedule.num_train_steps": 400_000_000}, {"mav_schedule": None},
     r"invalid mav_config.*num_train_steps"),
    ("TextEncoderLoader", "TextImageEncoder", {"image_size": 10 ** 6}, {}, r"image_size = 1000000 is beyond"),
    ("DecoderLoader", "SpaceTimeUNet", {"layers_per_block": 3}, {}, r"missing key|has shape|unexpected key"),
])
def test_loader_nodes_refuse_declared_sizes_in_validation(pack, tmp_path, monkeypatch, loader, name, changes,
                                                          meta, expect):
    make_corpus.module_file(tmp_path / "hostile.safetensors", name, changes, meta)
    monkeypatch.setattr(pack.host, "extra_model_dirs", [tmp_path, *pack.host.extra_model_dirs])
    node = getattr(pack.loaders, loader)
    message = node.VALIDATE_INPUTS("hostile.safetensors")
    assert isinstance(message, str) and message.startswith("ckpt_name: "), message
    assert "hostile.safetensors" in message and re.search(expect, message), message
    with pytest.raises(ValueError, match=rf"^ckpt_name: .*hostile\.safetensors.*({expect})"):
        node().load("hostile.safetensors")


@pytest.mark.parametrize("content, expect", [("bomb", r"refused: its zip entries expand to"),
                                             ("safetensors", r"is a safetensors file, not a torch.save file"),
                                             ("text", r"not a torch.save file \(it starts with")])
def test_check_declared_reads_no_tensor_of_a_torch_file(tmp_path, content, expect):
    path = tmp_path / "weights.pth"
    if content == "bomb":
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(2)}, buf)
        path.write_bytes(make_corpus.deflate_bomb(buf.getvalue(), 64 << 20))
    elif content == "safetensors":
        make_corpus.module_file(path, "SpaceTimeUNet", {})
    else:
        path.write_text("a note\n")
    with pytest.raises(CheckpointError, match=rf"weights\.pth.*{expect}|{expect}.*weights\.pth"):
        check_declared(path)


@pytest.mark.parametrize("changes, expect", [({"layers_per_block": 10 ** 9}, r"layers_per_block = \d+ is beyond"),
                                             ({"image_embed_tokens": 10 ** 8}, r"image_embed_tokens = \d+ is beyond")])
def test_inflating_an_image_file_bounds_its_declared_sizes(tmp_path, changes, expect):
    """Inflating one of our image UNet files checks its declared config like every loader does."""
    path = make_corpus.module_file(tmp_path / "image.safetensors", "SpaceTimeUNet", changes)
    with pytest.raises(CheckpointError, match=rf"image\.safetensors.*{expect}"):
        inflate_image_checkpoint(path)
