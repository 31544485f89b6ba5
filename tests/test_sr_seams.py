"""SR^t_l's frame chunks: how the clip is split, how the shared frames cross-fade, and the chunk seams of the
shipped MAV-Tiny SR^t_l on a held-out real clip, scored like the sampler's window seams
(mav_core.eval.metrics.seam_scores: no chunk-edge transition above the 95th percentile of the clip's other
transitions, in frame difference and in temporal jerk)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mav_core.diffusion.schedule import NoiseSchedule
from mav_core.eval.metrics import frame_differences, seam_scores, temporal_jerk
from mav_core.inference import SamplingOptions, UpscaleOptions, upscale_video
from mav_core.inference.upscale import CHUNK_OVERLAP, chunk_edges, chunk_spans, chunk_weights
from mav_core.io.checkpoints import LoadedModel
from mav_core.models import family
from mav_core.models.unet import SpaceTimeUNet

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "data" / "clips"
SR_FILE = family.WEIGHTS_DIR / "sr_video.safetensors"


@pytest.mark.parametrize("frames", [1, 2, 7, 16, 17, 31, 33, 64, 127])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 8, 16, 32])
def test_chunks_cover_the_clip_within_the_limit_and_share_frames(frames, chunk):
    spans = chunk_spans(frames, chunk)
    assert spans[0][0] == 0 and spans[-1][1] == frames
    lengths = {b - a for a, b in spans}
    assert max(lengths) <= chunk and max(lengths) - min(lengths) <= 0   # no short remainder chunk
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        assert a0 < a1 <= b0 < b1                                       # advancing, no gap
        assert b0 - a1 >= min(CHUNK_OVERLAP, chunk // 2)                # shared frames to cross-fade
    if frames > chunk:   # as few chunks as the limit allows
        assert len(spans) == -(-(frames - min(CHUNK_OVERLAP, chunk // 2)) // (chunk - min(CHUNK_OVERLAP, chunk // 2)))
    total = torch.zeros(frames)
    for i, (a, b) in enumerate(spans):
        w = chunk_weights(spans, i)
        assert w.shape == (b - a,) and (w > 0).all() and (w <= 1).all()
        total[a:b] += w
    if chunk >= 6 or frames <= chunk:   # pairwise overlaps: the weights of the two chunks sum to 1
        assert torch.allclose(total, torch.ones(frames), atol=1e-6)


def test_shared_frames_cross_fade_linearly():
    spans = chunk_spans(31, 16)
    for i in range(1, len(spans)):
        shared = spans[i - 1][1] - spans[i][0]
        incoming = chunk_weights(spans, i)[:shared]
        outgoing = chunk_weights(spans, i - 1)[-shared:]
        ramp = torch.arange(1, shared + 1) / (shared + 1)
        assert torch.allclose(incoming, ramp) and torch.allclose(outgoing, 1 - ramp)
    assert chunk_edges(spans, 31) == sorted({a - 1 for a, _ in spans[1:]} | {b - 1 for _, b in spans[:-1]})


def _tiny_sr(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    cfg = family.sr_config(True)
    cfg.block_out_channels, cfg.norm_num_groups = (8, 8), 8
    return LoadedModel("tiny-sr", "sr_video", "mav", SpaceTimeUNet(cfg).eval(), NoiseSchedule("cosine"), "v")


def test_chunks_that_agree_give_the_unchunked_video():
    """A freshly initialised SR^t_l is per-frame (identity temporal layers); with the same noise on every
    frame each frame's result is the same in whichever chunk it is sampled, so the blended chunks must
    reproduce the single-call video exactly: a misplaced chunk or weights not summing to 1 show."""
    sr = _tiny_sr(0)
    video = torch.rand(1, 3, 23, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    options = SamplingOptions(seed=3, steps=2, noise_share=1.0)
    with torch.no_grad():
        whole = upscale_video(sr, video, options, UpscaleOptions(frame_chunk=64))
        for chunk in (4, 8, 16):
            chunked = upscale_video(sr, video, options, UpscaleOptions(frame_chunk=chunk))
            assert (chunked - whole).abs().max().item() < 1e-4, chunk


def test_shared_frames_are_the_cross_fade_of_both_chunks():
    """Chunks that disagree (independent noise per chunk): each shared frame is the ramp-weighted mix of
    the two chunks' own results (each chunk upscaled alone), every other frame its chunk's result."""
    sr = _tiny_sr(1)
    video = torch.rand(1, 3, 13, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    options = SamplingOptions(seed=5, steps=2)
    chunk = 8
    spans = chunk_spans(13, chunk)
    assert len(spans) == 2
    with torch.no_grad():
        out = upscale_video(sr, video, options, UpscaleOptions(frame_chunk=chunk))
        alone = [upscale_video(sr, video[:, :, a:b], options, UpscaleOptions(frame_chunk=chunk)) for a, b in spans]
    (a0, b0), (a1, b1) = spans
    shared = b0 - a1
    ramp = (torch.arange(1, shared + 1) / (shared + 1))[:, None, None]
    assert torch.allclose(out[:, :, :a1], alone[0][:, :, :a1 - a0], atol=1e-5)
    assert torch.allclose(out[:, :, b0:], alone[1][:, :, shared:], atol=1e-5)
    mixed = (1 - ramp) * alone[0][:, :, a1 - a0:] + ramp * alone[1][:, :, :shared]
    assert torch.allclose(out[:, :, a1:b0], mixed, atol=1e-5)
    assert (alone[0][:, :, a1 - a0:] - alone[1][:, :, :shared]).abs().max() > 1e-2   # the chunks did disagree


@pytest.mark.skipif(not (CLIPS / "manifest.json").exists(), reason="no real clips: run scripts/fetch_clips.py")
@pytest.mark.skipif(not SR_FILE.exists(), reason="no shipped sr_video checkpoint")
def test_shipped_sr_video_chunk_seams_are_within_the_clips_own_spread():
    """The main job's SR^t_l input size (31 frames at 32x32, the Upscaler's 10 steps) from a held-out
    real clip: at frame_chunk 8 and 16 no chunk-edge transition is above the 95th percentile of the
    clip's other transitions, in frame difference and in temporal jerk (the window-seam score)."""
    from mav_core.data.clips import RealClips
    from mav_core.io.loader import load_model
    sr = load_model(SR_FILE, expect_stage="sr_video")
    clip, _ = next(iter(RealClips(CLIPS, num_frames=31, size=family.BASE_SIZE, seed=0, split="heldout", strides=(1,))))
    video = clip.permute(1, 0, 2, 3)[None]
    for chunk in (8, 16):
        with torch.no_grad():
            out = upscale_video(sr, video, SamplingOptions(seed=0, steps=10), UpscaleOptions(True, chunk))
        v = ((out[0].clamp(-1, 1) + 1) * 127.5).permute(1, 0, 2, 3).numpy()    # [F, C, H, W] in 0..255
        seams = chunk_edges(chunk_spans(31, chunk), 31)
        assert len(seams) >= 2
        for name, score in (("frame difference", frame_differences(v)), ("jerk", temporal_jerk(v))):
            s = seam_scores(score, seams)
            print(f"frame_chunk {chunk}, {name}: largest of {len(seams)} chunk-edge transitions "
                  f"{s['max_seam']:.2f}, the clip's other transitions' 95th percentile {s['inner_p95']:.2f}")
            assert s["invisible"], (chunk, name, np.round(score[seams], 2), round(s["inner_p95"], 2))
