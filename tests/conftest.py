import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spinning on shared cores

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from pack_import import import_pack  # noqa: E402

@pytest.fixture(scope="session")
def pack():
    nodes = import_pack()
    assert not nodes.host.HAS_COMFY, "these tests are for the comfy-free path"
    return nodes


@pytest.fixture(scope="module")
def video_io(pack):
    """The pack's video I/O nodes module (no ComfyUI); `folders` points its output/temp/input at tmp_path."""
    return pack.video_io


@pytest.fixture
def folders(video_io, tmp_path, monkeypatch):
    dirs = {kind: tmp_path / kind for kind in ("output", "temp", "input")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setattr(video_io, "standin_dirs", dirs)
    return dirs


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a test module (reductions in a fixed order; small models run faster
    so on a shared machine), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_unet_config():
    from mav_core.models.unet import UNetConfig
    return UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True),
                      context_dim=24, norm_num_groups=8, attention_head_dim=16, image_embed_dim=12,
                      image_embed_tokens=2)
