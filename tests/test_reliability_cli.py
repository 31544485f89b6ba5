"""`python -m mav_core generate`: every argument checked before anything is loaded, each error one line
naming the argument (exit 2); the largest seed (2**64 - 1) runs end to end, and one seed gives the same
video from the CLI, from MakeAVideo and from the node chain on the shipped weights."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mav_core.cli import generate as cli_generate
from mav_core.cli.main import main as cli_main
from mav_core.inference.options import MAX_SEED
from mav_core.inference.pipeline import ChainSettings, MakeAVideo
from mav_core.io.video import read_video

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a black background"


@pytest.fixture
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(cli_generate.MakeAVideo, "load", refuse)


def _run(capsys, *argv):
    try:
        rc = cli_main(["generate", PROMPT, *map(str, argv)])
    except SystemExit as e:   # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err.strip()
    return rc, err


LONG = "a" * 256
BAD_ARGUMENTS = [
    (["-o", "clip.avi"], "-o/--output", "unsupported suffix '.avi'"),
    (["-o", "clip.MOV"], "-o/--output", "unsupported suffix"),
    (["-o", f"{LONG}.mp4"], "-o/--output", "file names hold at most 255"),
    (["-o", f"{'é' * 128}.gif"], "-o/--output", "260 bytes long"),        # 255 characters, 260 bytes
    (["-o", f"{LONG}/clip.mp4"], "-o/--output", "file names hold at most 255"),
    (["-o", "{tmp}/missing/clip.mp4"], "-o/--output", "does not exist"),
    (["-o", "{tmp}/folder.mp4"], "-o/--output", "is a folder"),
    (["--quality", "101"], "--quality", "[0, 100]"),
    (["--quality", "-1"], "--quality", "[0, 100]"),
    (["--quality", "high"], "--quality", "invalid int value"),
    (["--threads", "-2"], "--threads", "got -2"),
    (["--threads", "100000"], "--threads", "got 100000"),
    (["--device", "cuda:7"], "--device", "not available"),
    (["--device", "tpu"], "--device", "tpu"),
    (["--device", "cuda:x"], "--device", "is not a device"),
    (["--weights", "{tmp}/none"], "--weights", "not a folder"),
    (["--seed", str(MAX_SEED + 1)], "--seed", str(MAX_SEED + 1)),
    (["--seed", "-1"], "--seed", "got -1"),
    (["--frames", "0"], "--frames", "got 0"),
    (["--fps", "nan"], "--fps", "nan"),
    (["--fps", "200", "--multiplier", "2"], "--multiplier", "exceeds 240"),
    (["--prior-cfg", "inf"], "--prior-cfg", "inf"),
    (["--sampler", "warp"], "--sampler", "warp"),
    (["--upscale", "3"], "--upscale", "got 3"),
    (["--interp-steps", "0"], "--interp-steps", "got 0"),
]


@pytest.mark.parametrize("argv,name,expected", BAD_ARGUMENTS, ids=[" ".join(a)[:40] for a, _, _ in BAD_ARGUMENTS])
def test_every_argument_is_checked_before_loading(nothing_loads, capsys, tmp_path, argv, name, expected):
    (tmp_path / "folder.mp4").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "clip.mp4")]
    if name == "--device" and expected == "not available" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    rc, err = _run(capsys, *argv)
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert name.split("/")[-1] in err and expected in err, err


def test_an_empty_prompt_is_refused(nothing_loads, capsys, tmp_path):
    rc = cli_main(["generate", "  ", "-o", str(tmp_path / "a.gif")])
    assert rc == 2 and capsys.readouterr().err.startswith("error: prompt:")


@pytest.mark.parametrize("output", ["clip.mp4", "clip.webm", "clip.gif", "clip.webp", "frames", "a" * 251 + ".gif"])
def test_good_arguments_reach_the_loader(monkeypatch, tmp_path, output):
    loaded = []
    monkeypatch.setattr(cli_generate.MakeAVideo, "load", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(
        FileNotFoundError("stop here")))
    assert cli_main(["generate", PROMPT, "-o", str(tmp_path / output), "--seed", str(MAX_SEED), "--threads", "1"]) == 2
    assert loaded


# --- seeds: one range, the same video everywhere ------------------------------------------------------

FEW = dict(frames=3, steps=2, prior_steps=2, interp_steps=1, sr_steps=1)


@pytest.fixture(scope="module")
def shipped():
    return MakeAVideo.load(None)


@pytest.mark.parametrize("seed", [MAX_SEED, 2 ** 63, 0])
def test_the_cli_makes_the_chains_video_for_any_seed(shipped, tmp_path, seed):
    """End to end through every stage (↑F and both SR stages derive window / chunk seeds from it), into a
    lossless PNG folder: the CLI's frames are MakeAVideo's, quantised to 8 bits."""
    out = tmp_path / "frames"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in FEW.items()]
    r = subprocess.run([sys.executable, "-m", "mav_core", "generate", PROMPT, "-o", str(out), "--seed", str(seed),
                        *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    frames, fps = read_video(out)
    expected = shipped(PROMPT, ChainSettings(seed=seed, **FEW))
    assert frames.shape == expected.frames.shape == (5, 128, 128, 3) and abs(fps - expected.fps) < 1e-6
    assert (frames - expected.frames).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("seed,count", [(MAX_SEED, 3), (12345, 3), (MAX_SEED - 1, 10)])
def test_the_node_chain_makes_the_chains_video(pack, shipped, seed, count):
    """Text Encode -> Prior -> Sampler -> Frame Interpolator -> Upscaler (sr_video) -> Upscaler (sr_frame)
    with one seed and the nodes' defaults gives MakeAVideo's frames (10 frames: 19 after ↑F, more than one
    SR^t_l chunk)."""
    def node(name):
        return pack.NODE_CLASS_MAPPINGS[name]()

    def default(name, param):
        spec = pack.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
        return {**spec["required"], **spec.get("optional", {})}[param][1]["default"]

    s = ChainSettings(seed=seed, **{**FEW, "frames": count})
    expected = shipped(PROMPT, s)
    encode = node("MakeAVideoTextEncode")
    positive = node("MakeAVideoPrior").run(shipped.prior, encode.encode(shipped.text, PROMPT)[0], seed,
                                           s.prior_steps, s.prior_cfg)[0]
    negative = encode.encode(shipped.text, s.negative)[0]
    frames, fps, _ = node("MakeAVideoSampler").sample(shipped.decoder, positive, negative, seed, s.steps, s.cfg,
                                                      s.sampler, s.frames, s.fps, 32, 32, 1.0)
    base = shipped(PROMPT, ChainSettings(seed=seed, **{**FEW, "frames": count}, multiplier=1, upscale=0))
    assert torch.allclose(frames, base.frames, atol=1e-6), "D^t differs"
    frames, fps = node("MakeAVideoFrameInterpolator").run(shipped.interpolator, frames, fps, s.multiplier,
                                                          "interpolate", seed, s.interp_steps, positive=positive)
    chunk = default("MakeAVideoUpscaler", "frame_chunk")
    frames = node("MakeAVideoUpscaler").run(shipped.sr_video, frames, seed, s.sr_steps, chunk)[0]
    frames = node("MakeAVideoUpscaler").run(shipped.sr_frame, frames, seed, s.sr_steps, chunk)[0]
    assert fps == expected.fps and frames.shape == expected.frames.shape
    assert torch.allclose(frames, expected.frames, atol=1e-5)
