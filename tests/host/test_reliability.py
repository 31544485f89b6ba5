"""Reliability in a real ComfyUI: a burst of valid and invalid prompts queued back to back, and
Cancel at random sampler steps.

Burst (`test_burst_of_valid_and_invalid_prompts`): MAV_RELIABILITY_PROMPTS prompts (default 50) posted
without waiting, in a shuffled (seeded) order. Valid ones are the shipped text-to-video workflow on
small settings (1 step per stage, 4 frames at 32x32, upscalers left out) with seeds that repeat; each
must finish with the frames its seed determines (same seed -> identical decoded frames, different
seeds -> different), its sampler really re-run (not served from the host's cache). Invalid ones must be
refused with HTTP 400 naming node id and input in `node_errors`, or -- where only the run can tell
(NaN cfg, a size the model's down-sampling does not divide, a checkpoint of the wrong stage) -- fail in
/history with an execution_error of that node whose message names the input. Afterwards the server
still answers /system_stats and its resident memory (VmRSS), measured after a warm-up prompt and after
the burst, each time following POST /free (the host's documented way to drop models and cached node
outputs), has grown by at most 10 %.

Cancel (`test_cancel_at_a_random_step`, MAV_RELIABILITY_CANCELS trials, default 20): a 200-step sampler
run is watched over the websocket and POST /interrupt is sent once progress reaches a step drawn by
random.Random(trial). "Stops within one step" is checked as: the last progress value the run ever sends
is at most one above the last value the client had seen when /interrupt returned. Justification: the
host sets the flag before /interrupt answers, and every step's callback checks it before sending that
step's progress (our StepProgress checks first, the host's progress hook checks again right before its
send), so after the flag is set at most one further value can appear -- either a step whose message was
already sent but not yet read when /interrupt returned (websocket latency; steps here take far longer
than a localhost frame), or one whose check passed a moment before the flag was set. Then /history must
read error with an execution_interrupted event at the sampler, the output and temp folders must be
exactly as before (no partial or temp files), and the next prompt must run to completion.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from comfy_server import REPO_ROOT, history_events, history_status

sys.path.insert(0, str(REPO_ROOT / "tests"))
from test_nodes import make_untrained_weights  # noqa: E402
from hostile.make_corpus import module_file  # noqa: E402

PROMPTS = int(os.environ.get("MAV_RELIABILITY_PROMPTS", "50"))
CANCELS = int(os.environ.get("MAV_RELIABILITY_CANCELS", "20"))
CANCEL_STEPS = 200
CANCEL_LAST_TARGET = int(os.environ.get("MAV_RELIABILITY_CANCEL_MAX_STEP", "30"))
"""Interrupt targets are drawn from 1..this (of CANCEL_STEPS); higher draws only make the trials longer."""
ORDER_SEED = 20261125
FOLDER = "reliability"            # models/makeavideo/reliability: untrained MAV-Tiny-layout files
HOSTILE_PRIOR = "hostile_prior.safetensors"   # in FOLDER: a prior whose config declares 10**9 layers
SIZE, FRAMES = 32, 4
VALID_SHARE = 0.5
DISTINCT_SEEDS = 6
WARM_UP_SEED = 999_999
MEMORY_GROWTH_LIMIT = 0.10
TEXT_TO_VIDEO = REPO_ROOT / "workflows" / "text_to_video_api.json"


@pytest.fixture(scope="module")
def rel_host(comfy_server, tmp_path_factory):
    """The server with untrained weights in its makeavideo folder under FOLDER (kept apart from other tests')."""
    folder = comfy_server.models_dir / FOLDER
    if not (folder / "decoder.safetensors").is_file():
        made = make_untrained_weights(tmp_path_factory.mktemp("reliability_weights") / FOLDER, seed=0)
        shutil.copytree(made, folder, dirs_exist_ok=True)
    if not (folder / HOSTILE_PRIOR).is_file():
        module_file(folder / HOSTILE_PRIOR, "DiffusionPrior", {"layers": 10 ** 9})
    return comfy_server


# -- graphs ---------------------------------------------------------------------------------------

def text_to_video(seed: int, prefix: str) -> dict:
    """The shipped text-to-video workflow: FOLDER's weights, 1 step per stage, FRAMES frames, no upscalers
    (Create Video takes the interpolator's frames), `seed` for prior, sampler and interpolator."""
    api = json.loads(TEXT_TO_VIDEO.read_text())
    api["1"]["inputs"]["folder"] = FOLDER
    for node in api.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = 1
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    api["5"]["inputs"].update(frames=FRAMES, width=SIZE, height=SIZE)
    del api["7"], api["8"]
    api["9"]["inputs"]["images"] = ["6", 0]
    api["10"]["inputs"]["filename_prefix"] = prefix
    return api


def long_sampling(seed: int, steps: int, prefix: str) -> dict:
    """Bundle -> text encodes -> Sampler (`steps` steps, FRAMES frames at 32x32, cfg 1: one UNet call a step)
    -> our Video Save (mp4)."""
    return {
        "1": {"class_type": "MakeAVideoBundleLoader", "inputs": {"folder": FOLDER}},
        "2": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": "a red circle"}},
        "3": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": ""}},
        "4": {"class_type": "MakeAVideoSampler", "inputs": {
            "decoder": ["1", 2], "positive": ["2", 0], "negative": ["3", 0], "seed": seed, "steps": steps,
            "cfg": 1.0, "sampler_name": "ddim", "frames": FRAMES, "fps": 6.0, "width": SIZE, "height": SIZE,
            "denoise": 1.0}},
        "5": {"class_type": "MakeAVideoVideoSave", "inputs": {
            "frames": ["4", 0], "fps": ["4", 1], "filename_prefix": prefix, "format": "mp4", "quality": 85,
            "loop_count": 0, "pingpong": False}},
    }


# -- invalid prompts ------------------------------------------------------------------------------

DELETE = object()


@dataclass(frozen=True)
class Invalid:
    """A change to the valid graph that the host must refuse with HTTP 400; `node`/`input` are what the
    error must name."""

    label: str
    node: str
    input: str
    value: Any = DELETE
    added_node: dict | None = None
    """A node added as `node`; its first output is linked into `linked_into` = (node id, input) when given
    (an output node such as Video Save is just added)."""
    linked_into: tuple[str, str] | None = None
    removed_nodes: tuple[str, ...] = ()
    """Nodes taken out first (an invalid output node is refused with HTTP 400 only when it is the prompt's
    only output: with another valid output the host runs that one and lists the error in node_errors)."""

    def apply(self, api: dict) -> dict:
        for node in self.removed_nodes:
            del api[node]
        if self.added_node is not None:
            api[self.node] = json.loads(json.dumps(self.added_node))
            if self.linked_into is not None:
                into_node, into_input = self.linked_into
                api[into_node]["inputs"][into_input] = [self.node, 0]
            return api
        inputs = api[self.node]["inputs"]
        if self.value is DELETE:
            del inputs[self.input]
        else:
            inputs[self.input] = self.value
        return api


INVALID = [
    Invalid("frames 0", "5", "frames", 0),
    Invalid("sampler steps -1", "5", "steps", -1),
    Invalid("prior steps -1", "4", "steps", -1),
    Invalid("interpolator multiplier 0", "6", "multiplier", 0),
    Invalid("width above max", "5", "width", 8192),
    Invalid("cfg huge", "5", "cfg", 1e300),
    Invalid("cfg infinite", "5", "cfg", math.inf),
    Invalid("fps 0", "5", "fps", 0.0),
    Invalid("denoise 2", "5", "denoise", 2.0),
    Invalid("string in INT frames", "5", "frames", "sixteen"),
    Invalid("string in INT seed", "4", "seed", "lucky"),
    Invalid("string in FLOAT cfg", "5", "cfg", "high"),
    Invalid("missing negative", "5", "negative"),
    Invalid("missing prompt text", "2", "text"),
    Invalid("link to a non-existent node", "5", "positive", ["99", 0]),
    Invalid("link of three items", "5", "positive", ["4", 0, 1]),
    Invalid("upscaler into the decoder slot", "5", "decoder", ["1", 4]),
    Invalid("text encoder into the prior slot", "4", "prior", ["1", 0]),
    Invalid("unknown checkpoint folder", "1", "folder", "no-such-checkpoint"),
    Invalid("unknown sampler", "5", "sampler_name", "heun"),
    Invalid("cfg NaN", "5", "cfg", math.nan),
    Invalid("width not a multiple of the model's 4", "5", "width", 34),
    Invalid("height not a multiple of the model's 4", "5", "height", 30),
    Invalid("decoder loader given an upscaler checkpoint", "11", "ckpt_name",
            added_node={"class_type": "MakeAVideoDecoderLoader", "inputs": {"ckpt_name": f"{FOLDER}/sr_frame.safetensors"}},
            linked_into=("5", "decoder")),
    Invalid("cfg NaN on the prior", "4", "cfg", math.nan),
    Invalid("gif at 120 fps", "12", "fps",
            added_node={"class_type": "MakeAVideoVideoSave", "inputs": {
                "frames": ["6", 0], "fps": 120.0, "filename_prefix": "reliability/gif120", "format": "gif",
                "quality": 85, "loop_count": 0, "pingpong": False}}, removed_nodes=("9", "10")),
    Invalid("hostile prior file in the prior loader", "13", "ckpt_name",
            added_node={"class_type": "MakeAVideoPriorLoader", "inputs": {"ckpt_name": f"{FOLDER}/{HOSTILE_PRIOR}"}},
            linked_into=("4", "prior")),
]


def check_refusal(case: Invalid, status: int, body: Any) -> str:
    """HTTP 400 whose node_errors name the node and the input; returns the host's error type(s)."""
    assert status == 400, f"{case.label}: expected HTTP 400, got {status}: {body}"
    node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
    assert case.node in node_errors, f"{case.label}: node {case.node} not in node_errors: {json.dumps(body)[:1500]}"
    errors = node_errors[case.node]["errors"]
    named = {e.get("extra_info", {}).get("input_name") for e in errors}
    if case.label == "link to a non-existent node":
        # The host fails on the dangling id inside its validation and files the exception under the node
        # that holds the link, but with the input name of the downstream node that reached it; the only
        # names it gives are the node id and the missing id.
        assert any("99" in e.get("details", "") for e in errors), errors
    else:
        assert case.input in named, f"{case.label}: input {case.input!r} not named in {errors}"
        for e in errors:
            if e.get("type") == "custom_validation_failed":
                # the host files a VALIDATE_INPUTS refusal under every input that function takes; our
                # message (after " - ") names the one at fault
                assert f" - {case.input}: " in e.get("details", ""), f"{case.label}: {e}"
    return ", ".join(sorted({e.get("type", "?") for e in errors})) + f" (input_name {', '.join(map(str, named))})"


# -- helpers --------------------------------------------------------------------------------------

def frames_digest(path: Path) -> str:
    from mav_core.io.video import read_video
    frames, fps = read_video(path)
    assert tuple(frames.shape) == (2 * FRAMES - 1, SIZE, SIZE, 3), (path, tuple(frames.shape))
    return hashlib.sha256(frames.numpy().tobytes()).hexdigest()


def settled_rss(host, after_free: bool) -> int:
    """Server RSS once the queue is empty (and after POST /free has been handled): the lowest of a few
    readings a moment apart."""
    host.wait_idle(120)
    if after_free:
        assert host.free() == 200
    time.sleep(2.0)
    readings = []
    for _ in range(5):
        readings.append(host.rss_bytes())
        time.sleep(0.3)
    return min(readings)


def server_cpu_s(host) -> float:
    """User + system CPU seconds the server process has used (its cost on a quiet machine)."""
    fields = Path(f"/proc/{host.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def folder_listing(*folders: Path) -> set[str]:
    return {str(p) for folder in folders for p in folder.rglob("*")}


# -- tests ----------------------------------------------------------------------------------------

def burst_plan(count: int) -> list[tuple[str, Any]]:
    """[("valid", seed) | ("invalid", Invalid)] in a seeded shuffled order; seeds repeat, and two valid
    prompts in a row never share a seed (so the host's cache, which keeps only the last prompt's
    outputs, cannot serve a repeat)."""
    n_valid = max(2 * 2, min(round(count * VALID_SHARE), count - len(INVALID)))   # every invalid case at least once
    n_invalid = count - n_valid
    invalid = [INVALID[i % len(INVALID)] for i in range(n_invalid)]
    slots = ["valid"] * n_valid + invalid
    random.Random(ORDER_SEED).shuffle(slots)
    seeds = iter(100 + i % DISTINCT_SEEDS for i in range(n_valid))
    return [("valid", next(seeds)) if s == "valid" else ("invalid", s) for s in slots]


def test_burst_of_valid_and_invalid_prompts(rel_host):
    host = rel_host
    started = time.monotonic()
    warm = host.run_prompt(text_to_video(WARM_UP_SEED, "reliability/warm_up"), timeout=600)
    assert history_status(warm) == "success", warm.get("status")
    rss_start = settled_rss(host, after_free=True)

    plan = burst_plan(PROMPTS)
    queued: list[tuple[str, Any, str]] = []          # (kind, seed | case, prompt_id)
    outcomes: dict[str, str] = {}
    cpu_before = server_cpu_s(host)
    for index, (kind, what) in enumerate(plan):
        if kind == "valid":
            status, body = host.post_prompt(text_to_video(what, f"reliability/p{index:02d}_seed{what}"))
            assert status == 200, f"valid prompt {index} (seed {what}) refused: {body}"
            queued.append((kind, what, body["prompt_id"]))
            continue
        case: Invalid = what
        status, body = host.post_prompt(case.apply(text_to_video(7, f"reliability/p{index:02d}_bad")))
        outcomes[case.label] = f"HTTP 400 {case.node}.{case.input}: {check_refusal(case, status, body)}"
    posted_s = time.monotonic() - started

    digests: dict[int, set[str]] = {}
    for kind, what, prompt_id in queued:
        history = host.wait_history(prompt_id, timeout=600)
        assert history_status(history) == "success", f"seed {what}: {history.get('status')}"
        cached = history_events(history).get("execution_cached", {}).get("nodes", [])
        assert "5" not in cached, f"seed {what}: the sampler was served from the cache"
        files = host.output_files(history)
        assert len(files) == 1 and files[0].suffix == ".mp4", files
        digests.setdefault(what, set()).add(frames_digest(files[0]))
    burst_s = time.monotonic() - started
    burst_cpu_s = server_cpu_s(host) - cpu_before

    assert all(len(d) == 1 for d in digests.values()), f"a seed gave different frames: {digests}"
    assert len({next(iter(d)) for d in digests.values()}) == len(digests), "two seeds gave identical frames"
    assert host.process.poll() is None and host.system_stats()["system"]
    rss_end_loaded = settled_rss(host, after_free=False)
    rss_end = settled_rss(host, after_free=True)
    valid = sum(kind == "valid" for kind, _ in plan)
    print(f"\nburst: {len(plan)} prompts ({valid} valid over {len(digests)} seeds, {len(plan) - valid} "
          f"refused with HTTP 400); posted in {posted_s:.1f} s, all done in {burst_s:.1f} s; "
          f"server RSS after warm-up + /free {rss_start / 2**20:.0f} MiB, after the burst "
          f"{rss_end_loaded / 2**20:.0f} MiB, + /free {rss_end / 2**20:.0f} MiB "
          f"({100 * (rss_end / rss_start - 1):+.1f} %)")
    for label, outcome in outcomes.items():
        print(f"  {label}: {outcome}")
    if len(plan) >= len(INVALID) + 4:
        assert set(outcomes) == {case.label for case in INVALID}, "an invalid case was not posted"
    assert rss_end <= rss_start * (1 + MEMORY_GROWTH_LIMIT), \
        f"server memory grew from {rss_start / 2**20:.0f} MiB to {rss_end / 2**20:.0f} MiB"


def _progress(events, prompt_id: str, node: str) -> int:
    values = [e["value"] for e in events.events_of("progress") if e.get("prompt_id") == prompt_id
              and e.get("node") == node]
    return max(values, default=0)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll_s: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


@pytest.mark.parametrize("trial", range(CANCELS))
def test_cancel_at_a_random_step(rel_host, trial):
    host = rel_host
    target = random.Random(ORDER_SEED + trial).randint(1, CANCEL_LAST_TARGET)
    sampler = "4"
    before = folder_listing(host.output_dir, host.temp_dir)
    cpu_before = server_cpu_s(host)
    with host.websocket() as events:
        prompt_id = host.queue_prompt(long_sampling(trial, CANCEL_STEPS, f"cancel/t{trial:02d}"),
                                      client_id=events.client_id)
        _wait_for(lambda: _progress(events, prompt_id, sampler) >= 1, 600, "the sampler's first step")
        first_step_at = time.monotonic()
        _wait_for(lambda: _progress(events, prompt_id, sampler) >= target, 600, f"step {target}")
        reached = _progress(events, prompt_id, sampler)
        step_ms = f"{(time.monotonic() - first_step_at) * 1000 / (reached - 1):.0f} ms" if reached > 1 else "n/a"
        assert host.interrupt(prompt_id) == 200
        interrupted_at = time.monotonic()
        seen_at_interrupt = _progress(events, prompt_id, sampler)
        # the websocket's execution_interrupted comes after every progress message of the run
        _wait_for(lambda: any(e.get("prompt_id") == prompt_id for e in events.events_of("execution_interrupted")),
                  120, "execution_interrupted over the websocket")
        stopped_s = time.monotonic() - interrupted_at
        history = host.wait_history(prompt_id, timeout=120)
        last_step = _progress(events, prompt_id, sampler)
        messages = len(events.events_of("progress"))
    print(f"\ncancel {trial}: target step {target}, /interrupt returned at step {seen_at_interrupt}, "
          f"last step {last_step}/{CANCEL_STEPS}, execution_interrupted {stopped_s * 1000:.0f} ms after /interrupt "
          f"(a step took {step_ms}; {messages} progress messages; server CPU {server_cpu_s(host) - cpu_before:.1f} s)")
    assert history_status(history) == "error", history.get("status")
    interrupted = history_events(history).get("execution_interrupted")
    assert interrupted and interrupted["node_id"] == sampler, history.get("status")
    assert target <= seen_at_interrupt < CANCEL_STEPS
    assert last_step <= seen_at_interrupt + 1, \
        f"sampling went on to step {last_step} after /interrupt returned at step {seen_at_interrupt}"
    assert folder_listing(host.output_dir, host.temp_dir) == before, "files left behind by the cancelled run"

    follow = host.run_prompt(long_sampling(trial, 1, f"cancel/after_t{trial:02d}"), timeout=300)
    assert history_status(follow) == "success", follow.get("status")
    written = host.output_files(follow)
    assert len(written) == 1 and written[0].stat().st_size > 0
    new_files = {p for p in folder_listing(host.output_dir, host.temp_dir) - before if Path(p).is_file()}
    assert new_files == {str(written[0])}
