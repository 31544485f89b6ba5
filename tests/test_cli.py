"""The CLI from a user's point of view: init, info, generate (issue: core, acceptance 5)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mav_core", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("untrained")
    r = run("init", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_info_prints_family_config_and_parameters(untrained):
    r = run("info", str(untrained / "decoder.safetensors"))
    assert r.returncode == 0, r.stderr
    assert "family:     mav" in r.stdout and "stage:      decoder" in r.stdout
    assert "block_out_channels" in r.stdout and "untrained" in r.stdout
    n = int(r.stdout.split("parameters:")[1].split()[0].replace(",", ""))
    assert n > 100_000


def test_info_on_a_broken_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 3)
    r = run("info", str(bad))
    assert r.returncode == 2 and "x.safetensors" in r.stderr and "too short" in r.stderr


def test_generate_with_untrained_weights_warns_and_writes_video(untrained, tmp_path):
    out = tmp_path / "clip.webp"
    r = run("generate", "a red circle on a blue background", "-o", str(out), "--weights", str(untrained),
            "--frames", "4", "--steps", "2", "--interp-steps", "1", "--sr-steps", "1", "--prior-steps", "2")
    assert r.returncode == 0, r.stderr
    assert "UNTRAINED" in r.stderr
    from mav_core.io.video import read_video
    frames, fps = read_video(out)
    assert frames.shape == (7, 128, 128, 3)  # (4 - 1) * 2 + 1 frames, 32 -> 64 -> 128
    assert abs(fps - 8.0) < 0.5


def test_generate_with_the_regression_interpolator(untrained, tmp_path):
    """--interpolator regression: the one-pass ↑F file of the weights folder runs in the chain (the
    in-between frames are then deterministic); a folder without that file is a clear error."""
    import shutil
    from mav_core.models import family
    args = ["a red circle on a blue background", "--frames", "3", "--steps", "2", "--sr-steps", "1",
            "--prior-steps", "2", "--upscale", "0", "--interpolator", "regression"]
    r = run("generate", *args, "-o", str(tmp_path / "a.webp"), "--weights", str(untrained))
    assert r.returncode != 0 and family.REGRESSION_INTERPOLATOR_FILE in r.stderr
    folder = tmp_path / "weights"
    shutil.copytree(untrained, folder)
    shutil.copy(family.WEIGHTS_DIR / family.REGRESSION_INTERPOLATOR_FILE, folder)
    outs = []
    for steps in ("1", "7"):
        out = tmp_path / f"clip{steps}.webp"
        r = run("generate", *args, "--interp-steps", steps, "-o", str(out), "--weights", str(folder),
                "--quality", "100")
        assert r.returncode == 0, r.stderr
        from mav_core.io.video import read_video
        frames, _ = read_video(out)
        assert frames.shape == (5, 32, 32, 3)
        outs.append(frames)
    assert (outs[0] == outs[1]).all()      # the regression ↑F ignores the step count


def test_generate_loop_noise_and_freeinit_options(tmp_path):
    """--loop, --noise-share and --freeinit-iterations reach the decoder: a shared start noise (1.0) gives frames
    that differ less from one another than independent noise; out-of-range values are refused naming the option."""
    from mav_core.io.video import read_video
    base = ["generate", "a red circle on a dark blue background", "--frames", "6", "--steps", "3", "--prior-steps", "2",
            "--multiplier", "1", "--upscale", "0", "--quality", "100", "--seed", "5"]
    spread = {}
    for name, extra in (("independent", []), ("shared", ["--noise-share", "1.0"]),
                        ("loop", ["--loop", "--freeinit-iterations", "1"])):
        out = tmp_path / f"{name}.webp"
        r = run(*base, *extra, "-o", str(out))
        assert r.returncode == 0, r.stderr
        frames, _ = read_video(out)
        assert frames.shape == (6, 32, 32, 3)
        spread[name] = (frames - frames.mean(0)).abs().mean().item()
    assert spread["shared"] < spread["independent"], spread
    for bad, option in ((["--noise-share", "2"], "--noise-share"), (["--loop", "--frames", "1"], "--loop"),
                        (["--freeinit-iterations", "99"], "--freeinit-iterations")):
        r = run(*base, *bad, "-o", str(tmp_path / "bad.webp"))
        assert r.returncode == 2 and option in r.stderr, (bad, r.stderr)
        assert not (tmp_path / "bad.webp").exists()
