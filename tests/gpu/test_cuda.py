"""On a real CUDA GPU: the node chain in fp16 and bf16 against float32 on the CPU, no host sync inside the
sampling loop (torch.cuda's sync debug mode), temporal attention past the CUDA grid limit, the memory
reading with PyTorch's cache, and seeded noise equal to the CPU's."""
from __future__ import annotations

import warnings

import pytest
import torch

from mav_core.inference import memory
from mav_core.diffusion import seeded_noise
from mav_core.models.layers import TemporalTransformer
from pack_import import import_pack

CUDA = torch.device("cuda")
BOUNDS = {"fp16": 0.03, "bf16": 0.2}   # max |GPU half - CPU float32| of 0..1 frames after the chain below


@pytest.fixture(scope="module")
def pack():
    return import_pack()


def _chain(pack, precision: str, device, steps: int = 6):
    nodes = pack.NODE_CLASS_MAPPINGS
    pack.host.torch_device = lambda: device
    b = nodes["MakeAVideoBundleLoader"]().load("mav-tiny", precision=precision)
    pos = nodes["MakeAVideoTextEncode"]().encode(b[0], "a red circle on a black background")[0]
    neg = nodes["MakeAVideoTextEncode"]().encode(b[0], "")[0]
    pos = nodes["MakeAVideoPrior"]().run(b[1], pos, 0, steps, 1.0)[0]
    frames, fps, _ = nodes["MakeAVideoSampler"]().sample(b[2], pos, neg, 0, steps, 4.0, "ddim", 8, 4.0, 32, 32, 1.0)
    frames, fps = nodes["MakeAVideoFrameInterpolator"]().run(b[3], frames, fps, 2, "interpolate", 0, steps)
    (frames,) = nodes["MakeAVideoUpscaler"]().run(b[4], frames, 0, steps, 16)
    return frames


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_node_chain_on_cuda_in_half_precision(pack, precision):
    reference = _chain(pack, "fp32", torch.device("cpu"))
    out = _chain(pack, precision, CUDA)
    assert out.device.type == "cpu" and torch.isfinite(out).all()
    diff = (out - reference).abs()
    print(f"{torch.cuda.get_device_name(0)} {precision}: max {diff.max():.4f} mean {diff.mean():.5f} vs CPU fp32")
    assert diff.max() <= BOUNDS[precision]


def test_no_host_sync_inside_the_sampling_loop(pack, monkeypatch):
    monkeypatch.setattr(pack.host, "torch_device", lambda: CUDA)
    monkeypatch.setattr(pack.host, "previews_enabled", lambda: False)
    nodes = pack.NODE_CLASS_MAPPINGS
    b = nodes["MakeAVideoBundleLoader"]().load("mav-tiny", precision="fp16")
    pos = nodes["MakeAVideoTextEncode"]().encode(b[0], "a red circle")[0]

    def count_syncs(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                nodes["MakeAVideoSampler"]().sample(b[2], pos, pos, 0, steps, 4.0, "ddim", 8, 4.0, 32, 32, 1.0)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    short, long = count_syncs(8), count_syncs(32)
    assert long - short <= (32 - 8) // 8, f"syncs: 8 steps {short}, 32 steps {long}"


def test_temporal_attention_beyond_the_grid_limit():
    """256x256 pixels = 65,536 attention batches: chunked, so CUDA's fused kernels accept it."""
    torch.manual_seed(0)
    attn = TemporalTransformer(64, 1, 64, 32).to(CUDA, torch.float16).eval()
    torch.nn.init.normal_(attn.proj_out.weight, std=0.05)
    x = torch.randn(8, 64, 256, 256, device=CUDA, dtype=torch.float16)
    with torch.no_grad():
        out = attn(x, 8)
        ref = attn.float()(x.float(), 8)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05


def test_available_memory_counts_the_allocator_cache():
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=CUDA)
    del block   # freed into PyTorch's cache: still "used" for the driver
    free_driver, _ = torch.cuda.mem_get_info()
    assert memory.available_bytes(CUDA) >= free_driver + 200 * 2**20
    torch.cuda.empty_cache()


def test_seeded_noise_is_the_same_on_the_gpu():
    assert torch.equal(seeded_noise((2, 3, 4, 8, 8), 7), seeded_noise((2, 3, 4, 8, 8), 7, device=CUDA).cpu())
