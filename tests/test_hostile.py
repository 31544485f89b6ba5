"""Hostile and broken checkpoint files: every one is refused with a CheckpointError naming the file and
the problem, nothing in the file runs, nothing is left behind, and nothing big is allocated.

The corpus is written by tests/hostile/make_corpus.py into a temp folder (see that file for the list).
"""
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mav_core.io.checkpoints import CheckpointError
from mav_core.io.loader import load_model
from mav_core.io.motion import apply_motion

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "tests" / "hostile" / "make_corpus.py")
make_corpus = sys.modules.setdefault("make_corpus", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(make_corpus)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    return out, make_corpus.build(out)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def _load(case):
    if case.action == "motion":
        return apply_motion(make_corpus.tiny_model(), case.path)
    return load_model(case.path)


def test_corpus_covers_the_required_kinds(corpus):
    _, cases = corpus
    names = {c.name for c in cases}
    assert len(cases) >= 20
    required = {"truncated", "huge_header_len", "header_not_json", "header_list", "overlap", "past_eof",
                "negative_shape", "float_shape", "unknown_dtype", "dtype_size_mismatch", "zero_size", "seven_bytes",
                "metadata_nonstring", "vae_like", "text_encoder_like", "missing_key", "wrong_shape",
                "unexpected_key", "config_unknown_keys", "config_wrong_type", "pickle_os_system", "pickle_open",
                "pickle_exec", "zip_malicious_data_pkl", "text_ckpt", "diffusers_other_class", "motion_wrong_base"}
    assert required <= names, sorted(required - names)


def test_every_hostile_file_is_refused_with_a_named_reason(corpus, tmp_path, monkeypatch):
    folder, cases = corpus
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))    # any temp file the loaders made would land here
    before = _tree(folder)
    problems = []
    for case in cases:
        try:
            _load(case)
        except CheckpointError as e:
            msg = str(e)
            if case.path.name not in msg:
                problems.append(f"{case.name}: message does not name {case.path.name!r}: {msg}")
            elif not re.search(case.expect, msg):
                problems.append(f"{case.name}: message does not match {case.expect!r}: {msg}")
        except Exception as e:  # noqa: BLE001 - the point is to list every wrong error type at once
            problems.append(f"{case.name}: {type(e).__name__} instead of CheckpointError: {e}")
        else:
            problems.append(f"{case.name}: loaded without an error ({case.what})")
    assert not problems, "\n".join(problems)
    assert not (folder / "PWNED").exists(), "a pickle payload ran"
    assert _tree(folder) == before, "loading changed or left files in the corpus folder"
    assert list(tmp_path.iterdir()) == []


def test_the_pickle_payloads_are_real(tmp_path):
    """An unrestricted unpickle of the corpus payload does create the marker (so the test above can fail)."""
    marker = tmp_path / "PWNED"
    blob = pickle.dumps({"w": make_corpus._payloads(marker)["os_system"]}, protocol=2)
    pickle.loads(blob)
    assert marker.exists()


_MEMORY_PROBE = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
vmdata = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmData:")) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (vmdata + (1 << 30), vmdata + (1 << 30)))   # safety net: +1 GiB
import torch
torch.set_num_threads(1)
from mav_core.io.loader import load_model
result = {{}}
for path in {paths!r}:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_model(path)
        kind, msg = "none", ""
    except Exception as e:
        kind, msg = type(e).__name__, str(e)
    result[path] = [kind, msg, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024]
print(json.dumps(result))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the memory probe")
def test_huge_declarations_are_refused_before_allocation(corpus):
    """Huge header lengths, shapes, configs and schedules: refused with peak RSS growing by < 64 MiB."""
    _, cases = corpus
    big = [c for c in cases if c.big]
    assert len(big) >= 4
    code = _MEMORY_PROBE.format(root=str(ROOT), paths=[str(c.path) for c in big])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in big:
        kind, msg, grown = result[str(case.path)]
        assert kind == "CheckpointError" and re.search(case.expect, msg), (case.name, kind, msg)
        assert grown < 64 * 2 ** 20, f"{case.name}: peak RSS grew by {grown / 2 ** 20:.0f} MiB"


CLI_SAMPLE = ("huge_header_len", "config_huge", "pickle_os_system", "diffusers_other_class", "text_ckpt")


def test_info_cli_reports_hostile_files_without_a_traceback(corpus, tmp_path):
    folder, cases = corpus
    by_name = {c.name: c for c in cases}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for name in CLI_SAMPLE:
        case = by_name[name]
        proc = subprocess.run([sys.executable, "-m", "mav_core", "info", str(case.path)], capture_output=True,
                              text=True, timeout=120, cwd=ROOT, env=env)
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-1000:])
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        assert proc.stderr.startswith("error: ") and case.path.name in proc.stderr, (name, proc.stderr)
        assert re.search(case.expect, proc.stderr), (name, case.expect, proc.stderr)
    assert not (folder / "PWNED").exists()
    assert list(tmp_path.iterdir()) == []


def test_corpus_script_writes_and_lists_the_corpus(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "hostile" / "make_corpus.py"), str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 20
    for line in lines:
        name, filename = line.split()[:2]
        assert (tmp_path / "c" / filename).exists() or any((tmp_path / "c").glob(filename)), line
