"""Data-parallel training (train.loop under torchrun, gloo on the CPU): two processes train a real stage
exactly like one process on the whole batch, a run killed mid-way resumes to the weights of an
uninterrupted one, and the pieces that make it so (Shard, StreamBatches, Mixed, shard_diffusion_loss).

Run as a script, this file is the worker the tests start (with or without torchrun):
    python tests/test_ddp.py OUT KILL_AT STAGE [stage arguments]
KILL_AT >= 0: rank 1 (rank 0 of a single process) SIGKILLs itself when it reaches that step."""
from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mav_core.data.world import CaptionedImages, WorldClips  # noqa: E402
from mav_core.diffusion.loss import diffusion_loss  # noqa: E402
from mav_core.models import family  # noqa: E402
from mav_core.train.common import Mixed, StreamBatches, shard_diffusion_loss  # noqa: E402
from mav_core.train.loop import Shard  # noqa: E402

# sr_frame: the cheapest recipe (no upstream checkpoints), no parameter whose gradient is exactly zero
SR_ARGS = ["--steps", "4", "--batch-size", "4", "--crop", "16", "--save-every", "2", "--ema", "0.9",
           "--threads", "1", "--lr", "1e-3"]
TEXT_ARGS = ["--steps", "3", "--batch-size", "8", "--image-size", "16", "--width", "32", "--layers", "1",
             "--embed-dim", "16", "--image-channels", "16,32", "--recolour-prob", "0.5", "--partial-prob", "0.3",
             "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out: Path, stage: str, args: list[str], processes: int = 1, kill_at: int = -1):
    """Train `stage` in a subprocess (torchrun with `processes` > 1); returns the CompletedProcess."""
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port", str(_free_port())]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([*launch, __file__, str(out), str(kill_at), stage, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _ok(res):
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _state(out: Path, stage: str) -> dict:
    return torch.load(out / f"{stage}.state.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def sr_runs(tmp_path_factory):
    """sr_frame trained by one process and, uninterrupted, by two."""
    root = tmp_path_factory.mktemp("ddp")
    _ok(_train(root / "one", "sr_frame", SR_ARGS))
    _ok(_train(root / "two", "sr_frame", SR_ARGS, processes=2))
    return root


def test_two_processes_train_like_one_process_on_the_whole_batch(sr_runs):
    one, two = _state(sr_runs / "one", "sr_frame"), _state(sr_runs / "two", "sr_frame")
    assert one["step"] == two["step"] == 4 and len(two["history"]) == 4
    assert max(abs(a - b) for a, b in zip(one["history"], two["history"])) <= 1e-6
    assert _max_diff(one["model"], two["model"]) <= 1e-6
    assert _max_diff(one["ema"], two["ema"]) <= 1e-6
    assert (sr_runs / "two" / "sr_frame.safetensors").is_file()


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(sr_runs, tmp_path):
    out = tmp_path / "killed"
    res = _train(out, "sr_frame", SR_ARGS, processes=2, kill_at=3)
    assert res.returncode != 0 and "SIGKILL" in res.stderr, res.stdout[-3000:] + res.stderr[-3000:]
    assert _state(out, "sr_frame")["step"] == 2     # the state saved after step 2 survives the kill
    _ok(_train(out, "sr_frame", SR_ARGS, processes=2))   # --resume is the default
    resumed, uninterrupted = _state(out, "sr_frame"), _state(sr_runs / "two", "sr_frame")
    assert resumed["step"] == 4 and len(resumed["history"]) == 4
    assert _max_diff(resumed["model"], uninterrupted["model"]) <= 1e-6
    assert _max_diff(resumed["ema"], uninterrupted["ema"]) <= 1e-6
    assert _max_diff(resumed["model"], _state(sr_runs / "one", "sr_frame")["model"]) <= 1e-6


def test_a_killed_single_process_run_resumes_to_the_same_weights(sr_runs, tmp_path):
    out = tmp_path / "killed"
    assert _train(out, "sr_frame", SR_ARGS, kill_at=3).returncode != 0
    assert _state(out, "sr_frame")["step"] == 2
    _ok(_train(out, "sr_frame", SR_ARGS))
    assert _max_diff(_state(out, "sr_frame")["model"], _state(sr_runs / "one", "sr_frame")["model"]) == 0.0


def test_the_text_stage_sees_the_whole_batch_in_its_contrastive_loss(tmp_path):
    """Each rank encodes its examples; the InfoNCE runs over the gathered embeddings of the whole batch and
    its gradient flows back to every rank's examples: losses and the optimizer's running mean of the
    gradients agree with one process. (The weights agree to 1e-4 only: a few gradients are float noise
    around an exact zero, e.g. the attention keys' bias, which softmax ignores, and Adam turns noise
    into steps of up to lr.)"""
    _ok(_train(tmp_path / "one", "text", TEXT_ARGS))
    _ok(_train(tmp_path / "two", "text", TEXT_ARGS, processes=2))
    one, two = _state(tmp_path / "one", "text"), _state(tmp_path / "two", "text")
    assert max(abs(a - b) for a, b in zip(one["history"], two["history"])) <= 1e-6
    moments = [{k: v["exp_avg"] for k, v in run["optimizer"]["state"].items()} for run in (one, two)]
    assert _max_diff(*moments) <= 1e-6
    assert _max_diff(one["model"], two["model"]) <= 1e-4


def test_the_batch_size_must_divide_among_the_processes(tmp_path):
    with pytest.raises(ValueError, match="--batch-size 6 .* 4 training processes"):
        Shard(6, 1, 4)
    res = _train(tmp_path, "sr_frame", ["--steps", "1", "--batch-size", "3", "--crop", "16"], processes=2)
    assert res.returncode != 0 and "--batch-size 3 must be a positive multiple of the 2" in res.stderr
    assert not (tmp_path / "sr_frame.state.pt").exists()


# --------------------------------------------------------------------------- the pieces, in one process


def test_shards_cut_examples_and_their_rows_and_gather_back():
    x = torch.arange(12).reshape(6, 2)          # batch of 3 examples, 2 rows each
    assert Shard(3).take(x) is x
    parts = [Shard(4, r, 2) for r in range(2)]
    y = torch.arange(8)                         # 4 examples, 2 rows each
    assert [p.take(y).tolist() for p in parts] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [p.take(list("abcd")) for p in parts] == [["a", "c"], ["b", "d"]]
    assert [list(p.indices()) for p in parts] == [[0, 2], [1, 3]]
    assert parts[0].weight(3, 12) == 0.5 and Shard(4).weight(7, 7) == 1.0
    assert Shard(4).gather(y) is y
    with pytest.raises(ValueError):
        parts[0].take(torch.arange(5))


def test_stream_batches_are_the_stream_cut_every_wth_item_and_skip_ahead():
    ds = WorldClips(num_frames=2, size=16, seed=3)
    items = [next(it) for it in [iter(ds)] for _ in range(12)]
    whole = StreamBatches(ds, 4)
    for k in range(3):
        clips, fps = whole(k, Shard(4))
        assert torch.equal(clips, torch.stack([c for c, _ in items[4 * k:4 * k + 4]]))
        assert fps.tolist() == [f for _, f in items[4 * k:4 * k + 4]]
    for r in range(2):
        part = StreamBatches(ds, 4)
        clips, _ = part(2, Shard(4, r, 2))          # a resumed run starts at batch 2
        assert torch.equal(clips, torch.stack([items[8 + r][0], items[10 + r][0]]))
    with pytest.raises(ValueError, match="increasing"):
        part(1, Shard(4, 1, 2))


def test_mixed_batches_skip_ahead_like_a_run_from_the_start():
    def streams(seed):
        return Mixed((StreamBatches(CaptionedImages(size=8, seed=1), 2), 0.5),
                     (StreamBatches(CaptionedImages(size=8, seed=2), 2), 0.5), seed=seed)
    start, late = streams(5), streams(5)
    seen = [start(step, Shard(2))[0] for step in range(6)]
    assert torch.equal(late(4, Shard(2))[0], seen[4])           # a resumed run starts at step 4
    assert torch.equal(late(5, Shard(2, 1, 2))[0], seen[5][1:])


def test_shard_diffusion_loss_is_diffusion_loss_and_its_shards_average_to_it():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 1)
    x0 = torch.randn(8, 3, 4, 4)                 # 4 examples of 2 frames each
    mask = (torch.arange(8) % 3 != 0).float().reshape(8, 1, 1, 1)

    def network(x, t):
        return net(x)

    def on_shard(shard, **kw):
        gen = torch.Generator().manual_seed(1)
        return shard_diffusion_loss(network, shard.take(x0), family.SCHEDULE, "v", gen, shard, **kw)
    for kw in ({}, {"loss_mask": mask}, {"min_snr_gamma": 5.0}):
        whole = diffusion_loss(network, x0, family.SCHEDULE, "v", generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(on_shard(Shard(4), **kw), whole)
        parts = [on_shard(Shard(4, r, 2), **kw) for r in range(2)]
        assert torch.allclose((parts[0] + parts[1]) / 2, whole, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- the worker


def _worker(out: str, kill_at: int, stage: str, args: list[str]) -> int:
    from mav_core.cli.main import main
    from mav_core.train import loop
    if kill_at >= 0:
        real = loop.train_loop

        def train_loop(stage_name, model, params, loss_fn, *rest, **kw):
            def dying(step, gen, shard):
                if step == kill_at and shard.rank == shard.world - 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                return loss_fn(step, gen, shard)
            return real(stage_name, model, params, dying, *rest, **kw)
        for name in ("sr", "text"):
            importlib.import_module(f"mav_core.train.{name}").train_loop = train_loop
    return main(["train", stage, "--out", out, "--clips", str(Path(out) / "no-clips"), *args])


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]))
