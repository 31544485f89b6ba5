"""Fuzzing with hypothesis: parsers of untrusted input raise their clean error type, never anything else,
never crash the interpreter and never hang.

Targets: checkpoints.read_header / load_state_dict / load_model on byte mutations of a small valid
safetensors file and on random headers; convert.detect_family / to_ours / load_external on random key
sets and shapes; video.read_video and video.read_metadata on mutated webp/gif/mp4/png files (in a child
process with a per-example hang guard, so a crash in a decoder library cannot take pytest down);
scripts/comfy_client.py's describe_rejection / apply_overrides on random server answers and workflows.

Budgets are fixed and small by default (whole module well under 60 s at one thread, derandomised so
CI runs are repeatable). A longer, random run:

    HYPOTHESIS_PROFILE=long OMP_NUM_THREADS=1 nice -n 15 python -m pytest tests/test_fuzz.py -q

(`long` multiplies every budget by FUZZ_LONG_SCALE, 50 unless set, and keeps a failure database in
.hypothesis/). The video child can also be run alone: python tests/test_fuzz.py video [N].
"""
from __future__ import annotations

import atexit
import faulthandler
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mav_core.io import convert, unet_configs  # noqa: E402
from mav_core.io.checkpoints import DTYPE_SIZES, CheckpointError, load_state_dict, read_header
from mav_core.io.loader import load_model  # noqa: E402

settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = int(os.environ.get("FUZZ_LONG_SCALE", "50")) if PROFILE == "long" else 1


def budget(n: int) -> int:
    return n * SCALE


def _tiny_file(path: Path) -> Path:
    from mav_core.io.checkpoints import save_model
    from mav_core.diffusion import NoiseSchedule
    from mav_core.models.unet import SpaceTimeUNet, UNetConfig
    cfg = UNetConfig(block_out_channels=(8,), layers_per_block=1, attention_levels=(False,), mid_attention=False,
                     context_dim=8, norm_num_groups=4, attention_head_dim=8)
    torch.manual_seed(0)
    save_model(path, SpaceTimeUNet(cfg), "decoder", NoiseSchedule("cosine"), "v")
    return path


_WORK = Path(tempfile.mkdtemp(prefix="mav-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)
VALID = _tiny_file(_WORK / "valid.safetensors").read_bytes()
HEADER_END = 8 + struct.unpack("<Q", VALID[:8])[0]


def _write(data: bytes, name: str = "fuzz.safetensors") -> Path:
    path = _WORK / name
    path.write_bytes(data)
    return path


def _load_everything(path: Path):
    """read_header, then load_state_dict and load_model when the header passes: CheckpointError or success."""
    try:
        read_header(path)
    except CheckpointError as e:
        assert path.name in str(e)
        return
    try:
        load_state_dict(path)
        load_model(path)
    except CheckpointError as e:
        assert path.name in str(e)


# ---------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------

mutation = st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, HEADER_END + 16), st.integers(0, 255))


@settings(max_examples=budget(120))
@given(st.lists(mutation, min_size=1, max_size=6), st.one_of(st.none(), st.integers(0, len(VALID))))
def test_mutated_safetensors_give_checkpoint_errors(mutations, cut):
    data = bytearray(VALID)
    for kind, pos, byte in mutations:
        pos = min(pos, len(data))
        if kind == "set" and pos < len(data):
            data[pos] = byte
        elif kind == "insert":
            data[pos:pos] = bytes([byte])
        elif kind == "delete":
            del data[pos:pos + 1]
    if cut is not None:
        data = data[:cut]
    _load_everything(_write(bytes(data)))


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                      st.text(max_size=8))
json_any = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), c, max_size=4)),
                        max_leaves=12)
entry = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(sorted(DTYPE_SIZES)), json_any),
    "shape": st.one_of(st.lists(st.integers(-2, 2 ** 33), max_size=3), json_any),
    "data_offsets": st.one_of(st.lists(st.integers(-4, 80), min_size=2, max_size=2), json_any)})
header = st.one_of(
    st.dictionaries(st.text(max_size=10), st.one_of(entry, json_any), max_size=4),
    st.builds(lambda t, m: {**t, "__metadata__": m}, st.dictionaries(st.text(max_size=10), entry, max_size=3),
              st.one_of(st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=10), json_any), max_size=3),
                        json_any)),
    json_any)


@settings(max_examples=budget(200))
@given(header, st.integers(0, 96), st.one_of(st.none(), st.integers(0, 2 ** 64 - 1)))
def test_random_headers_give_checkpoint_errors(h, data_len, claimed):
    body = json.dumps(h).encode()
    raw = struct.pack("<Q", len(body) if claimed is None else claimed) + body + bytes(data_len)
    _load_everything(_write(raw))


# ---------------------------------------------------------------------------------------------------
# key converters
# ---------------------------------------------------------------------------------------------------

TOKENS = ["model", "diffusion_model", "input_blocks", "middle_block", "output_blocks", "down_blocks", "up_blocks",
          "mid_block", "conv_in", "conv_out", "resnets", "attentions", "temp_convs", "temp_attentions",
          "transformer_in", "temopral_conv", "in_layers", "out_layers", "emb_layers", "op", "norm", "proj_in",
          "time_embedding", "fps_embedding", "temporal", "attn2", "to_k", "0", "1", "2", "3", "weight", "bias"]
key = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=7).map(".".join)
shape = st.lists(st.integers(1, 4), min_size=1, max_size=4)
state = st.dictionaries(key, shape, min_size=1, max_size=20).map(lambda d: {k: torch.zeros(s) for k, s in d.items()})


@settings(max_examples=budget(150))
@given(state)
def test_converters_on_random_key_sets(sd):
    family = convert.detect_family(sd)
    assert family in convert.FAMILIES
    try:
        got, ours = convert.to_ours(sd)
    except ValueError:
        return
    assert got == family and all(isinstance(v, torch.Tensor) for v in ours.values())
    for infer in (unet_configs.infer_unet3d_config, unet_configs.infer_sd_unet_config):
        try:
            infer(sd)
        except ValueError:
            pass


@settings(max_examples=budget(80))
@given(state)
def test_load_external_on_random_state_dicts(sd):
    from mav_core.io.external import load_external
    try:
        load_external(str(_WORK / "random.safetensors"), device="meta", state_dict=sd, metadata={})
    except CheckpointError as e:
        assert "random.safetensors" in str(e)


# ---------------------------------------------------------------------------------------------------
# declared configs: any value in any mav_config key of any module class (sizes bounded before building)
# ---------------------------------------------------------------------------------------------------

_corpus_spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "tests" / "hostile" / "make_corpus.py")
make_corpus = sys.modules.setdefault("make_corpus", importlib.util.module_from_spec(_corpus_spec))
if not hasattr(make_corpus, "module_file"):
    _corpus_spec.loader.exec_module(make_corpus)
MODULE_KEYS = {name: sorted(json.loads(module.config.to_json())) + (["schedule.num_train_steps"]
                                                                     if name == "DiffusionPrior" else [])
               for name, (module, _) in make_corpus._tiny_modules().items()}
scalar = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.none(), st.text(max_size=6))
config_value = st.one_of(scalar, st.lists(scalar, max_size=6), st.dictionaries(st.text(max_size=4), scalar, max_size=3))


@settings(max_examples=budget(150))
@given(st.sampled_from(sorted(MODULE_KEYS)), st.data())
def test_any_declared_config_value_gives_a_checkpoint_error(name, data):
    changes = {k: data.draw(config_value, label=k)
               for k in data.draw(st.lists(st.sampled_from(MODULE_KEYS[name]), min_size=1, max_size=3, unique=True))}
    path = make_corpus.module_file(_WORK / "declared.safetensors", name, changes)
    try:
        load_model(path)
    except CheckpointError as e:
        message = str(e)
        assert "declared.safetensors" in message, message
        assert re.search(r"invalid mav_config|missing key|unexpected key|has shape", message), message


# ---------------------------------------------------------------------------------------------------
# client (answers from a server, workflows from users)
# ---------------------------------------------------------------------------------------------------

if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))
client = pytest.importorskip("comfy_client")   # scripts/comfy_client.py


@settings(max_examples=budget(150))
@given(json_any)
def test_describe_rejection_accepts_any_json(body):
    assert isinstance(client.describe_rejection(body), str)


node = st.fixed_dictionaries({"class_type": st.sampled_from([client.TEXT_ENCODE, client.SAMPLER, "Other"]),
                              "inputs": st.dictionaries(st.sampled_from(["seed", "text", "frames", "steps"]),
                                                        json_leaf, max_size=3)},
                             optional={"_meta": st.fixed_dictionaries({"title": st.sampled_from(["Negative", "x", ""])})})
workflow = st.dictionaries(st.sampled_from(["1", "2", "3"]), node, max_size=3)
set_item = st.one_of(st.text(max_size=12), st.builds("{}={}".format, st.sampled_from(
    ["prompt", "negative", "1.steps", "Other.frames", "x.seed", "9.cfg", "steps"]), st.text(max_size=6)))


@settings(max_examples=budget(150))
@given(workflow, st.lists(set_item, max_size=3), st.one_of(st.none(), st.integers(0, 2 ** 32)),
       st.one_of(st.none(), st.integers(1, 64)))
def test_apply_overrides_raises_only_value_errors(wf, sets, seed, frames):
    try:
        out = client.apply_overrides(wf, sets, seed=seed, frames=frames)
    except ValueError:
        return
    assert set(out) == set(wf)


# ---------------------------------------------------------------------------------------------------
# video reader and metadata parsers: run in a child process (crash/hang isolation)
# ---------------------------------------------------------------------------------------------------

VIDEO_FORMATS = ("gif", "webp", "mp4", "png")
CLEAN_VIDEO_ERRORS = (ValueError, OSError)        # av's errors subclass these; RuntimeError = missing library


def _video_seeds(folder: Path) -> dict:
    from mav_core.io.video import write_video
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 16, 16, 3, generator=g)
    seeds = {}
    for fmt in VIDEO_FORMATS:
        target = folder / (f"seed.{fmt}" if fmt != "png" else "seed_png")
        out = write_video(frames, target, 8.0, format=fmt, metadata={"prompt": '{"1": {"inputs": {}}}', "k": "v"})
        seeds[fmt] = sorted(out.iterdir())[0] if fmt == "png" else out     # png: the first frame of the folder
    return seeds


def run_video_fuzz(examples: int, hang_seconds: float = 20.0) -> int:
    """The child-process side: mutate each seed file and read it back; returns examples run."""
    import av  # noqa: F401 - decoders under test
    from mav_core.io.video import probe_video, read_metadata, read_video
    folder = Path(tempfile.mkdtemp(prefix="mav-fuzz-video-"))
    seeds = _video_seeds(folder)
    count = [0]

    def check(fmt: str, data: bytes):
        suffix = ".png" if fmt == "png" else f".{fmt}"
        path = folder / f"mutated{suffix}"
        path.write_bytes(data)
        faulthandler.dump_traceback_later(hang_seconds, exit=True)   # a hang kills the child with a traceback
        try:
            for fn in ((read_metadata,) if fmt == "png" else (probe_video, read_video, read_metadata)):
                try:
                    fn(path)
                except CLEAN_VIDEO_ERRORS as error:
                    assert path.name in str(error), f"{fn.__name__}: the error does not name the file: {error!r}"
        finally:
            faulthandler.cancel_dump_traceback_later()
        count[0] += 1

    def fuzz_format(fmt: str, base: bytes):
        edits = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=8)

        @settings(max_examples=examples)
        @given(edits, st.one_of(st.none(), st.integers(0, len(base))))
        def fuzz(changes, cut):
            data = bytearray(base)
            for pos, byte in changes:
                data[pos] = byte
            check(fmt, bytes(data[:cut] if cut is not None else data))

        fuzz()

    for fmt, seed in seeds.items():
        fuzz_format(fmt, seed.read_bytes())
    return count[0]


def test_video_readers_survive_mutated_files(tmp_path):
    pytest.importorskip("av")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path),
           "OPENCV_LOG_LEVEL": "OFF"}
    proc = subprocess.run([sys.executable, str(Path(__file__)), "video", str(budget(40))], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "ran " in proc.stdout, proc.stdout


if __name__ == "__main__":
    if sys.argv[1:2] == ["video"]:
        torch.set_num_threads(1)
        n = run_video_fuzz(int(sys.argv[2]) if len(sys.argv) > 2 else budget(40))
        print(f"ran {n} examples")
        sys.exit(0)
    sys.exit(pytest.main([__file__, "-q"]))
