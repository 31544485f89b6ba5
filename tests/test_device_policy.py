"""Device, dtype and memory policy pieces: SDPA chunking for CUDA's grid limit, the host's free memory,
the MPS attention term, dtype choices of the CLI and the loaders."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mav_core.inference import memory, precision as accel
from mav_core.models import family, layers
from mav_core.inference.pipeline import MakeAVideo


def test_attention_is_chunked_along_its_batch_axis(monkeypatch):
    """Temporal attention's batch is the pixel count (65536 at 256x256, past CUDA's grid limit): chunked
    calls give the same result as one call."""
    torch.manual_seed(0)
    attn = layers.TemporalTransformer(32, 2, 16, 8).eval()
    torch.nn.init.normal_(attn.proj_out.weight, std=0.1)
    x = torch.randn(2 * 4, 32, 6, 5)   # 2 clips of 4 frames, 30 pixels each
    with torch.no_grad():
        whole = attn(x, 4)
        calls = []
        real = F.scaled_dot_product_attention
        monkeypatch.setattr(layers, "SDPA_MAX_BATCH", 7)
        monkeypatch.setattr(layers.F, "scaled_dot_product_attention",
                            lambda q, k, v: calls.append(q.shape[0]) or real(q, k, v))
        chunked = attn(x, 4)
    assert max(calls) <= 7 and sum(calls) % 30 == 0   # every call's 30 pixels, in chunks of at most 7
    assert len(calls) == 5 * sum(calls) // 30
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_free_memory_can_come_from_the_host(decoder_config):
    need = memory.activation_bytes(decoder_config, 1, 4, 32, 32) + memory.runtime_bytes("cpu")
    try:
        memory.set_free_memory_provider(lambda device: need - 1)
        assert memory.available_bytes("cpu") == need - 1
        with pytest.raises(MemoryError, match=r"available \(as the host reports\)"):
            memory.check_fits("d", decoder_config, (1, 4, 32, 32), "cpu")
        memory.set_free_memory_provider(lambda device: need)
        assert memory.check_fits("d", decoder_config, (1, 4, 32, 32), "cpu") == need
    finally:
        memory.set_free_memory_provider(None)


def test_mps_estimate_counts_the_attention_score_matrix(decoder_config):
    """On MPS scaled_dot_product_attention builds the L x L scores: a request that fits on CUDA/CPU may not."""
    cpu = memory.check_fits("d", decoder_config, (2, 16, 32, 32), "cpu", available=10**12) - memory.runtime_bytes("cpu")
    scores = memory.attention_score_bytes(decoder_config, 2, 16, 32, 32)
    assert scores > 0
    assert memory.check_fits("d", decoder_config, (2, 16, 32, 32), "mps", available=10**12) == cpu + scores
    with pytest.raises(MemoryError):
        memory.check_fits("d", decoder_config, (2, 16, 32, 32), "mps", available=cpu)


@pytest.fixture(scope="module")
def decoder_config():
    from mav_core.io.checkpoints import read_header
    import json
    from mav_core.models.unet import UNetConfig
    _, meta = read_header(family.WEIGHTS_DIR / "decoder.safetensors")
    return UNetConfig.from_dict(json.loads(meta["mav_config"]))


def test_cli_dtype_choices():
    assert accel.resolve_dtype("auto", "cpu") == torch.float32
    assert accel.resolve_dtype("auto", "mps") == torch.float16
    assert accel.resolve_dtype("fp16", "cpu") == torch.float16
    assert accel.resolve_dtype("bf16", "cuda") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be"):
        accel.resolve_dtype("fp8", "cpu")


def test_chain_dtype_applies_to_the_diffusion_unets_only():
    mav = MakeAVideo.load(dtype=torch.bfloat16)
    dtypes = {m.stage: next(m.module.parameters()).dtype for m in mav.models()}
    assert dtypes["text"] == dtypes["prior"] == torch.float32
    assert {dtypes[s] for s in ("decoder", "interpolator", "sr_video", "sr_frame")} == {torch.bfloat16}


def test_loader_precision_input(pack):
    """The loaders' precision: a forced dtype is used; auto without the host keeps the core's float32;
    a bad value names the input."""
    loader = pack.NODE_CLASS_MAPPINGS["MakeAVideoDecoderLoader"]()
    fp16 = loader.load("mav-tiny/decoder.safetensors", precision="fp16")[0]
    assert next(fp16.module.parameters()).dtype == torch.float16
    auto = loader.load("mav-tiny/decoder.safetensors")[0]
    assert next(auto.module.parameters()).dtype == torch.float32
    bundle = pack.NODE_CLASS_MAPPINGS["MakeAVideoBundleLoader"]().load("mav-tiny", precision="bf16")
    assert next(bundle[0].module.parameters()).dtype == torch.float32          # the text encoder
    assert next(bundle[2].module.parameters()).dtype == torch.bfloat16         # the decoder
    with pytest.raises(ValueError, match="precision: 'fp8'"):
        loader.load("mav-tiny/decoder.safetensors", precision="fp8")


def test_auto_precision_asks_the_host_for_its_unet_dtype(pack, monkeypatch):
    """Inside ComfyUI, auto is the host's UNet dtype for its compute device (asked, not guessed)."""
    asked = []

    class HostModelManagement:   # the host's answer on a GPU that prefers float16
        @staticmethod
        def unet_dtype(device=None, supported_dtypes=()):
            asked.append((device, tuple(supported_dtypes)))
            return torch.float16

        @staticmethod
        def get_torch_device():
            return torch.device("cpu")

    monkeypatch.setattr(pack.host, "HAS_COMFY", True)
    monkeypatch.setattr(pack.host, "_mm", HostModelManagement)
    assert pack.host.diffusion_dtype("auto") == torch.float16
    assert pack.host.diffusion_dtype("bf16") == torch.bfloat16
    assert asked and torch.float32 in asked[0][1]
