"""Save -> load round trips and clear errors for broken files (issue: core, acceptance 4)."""
import json
import struct

import pytest
import torch

from mav_core.io.checkpoints import CheckpointError, read_header, save_model
from mav_core.io.loader import load_model
from mav_core.diffusion import NoiseSchedule
from mav_core.models.unet import SpaceTimeUNet


@pytest.fixture
def saved(tmp_path, tiny_unet_config):
    model = SpaceTimeUNet(tiny_unet_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "decoder.safetensors"
    save_model(path, model, "decoder", NoiseSchedule("cosine"), "v")
    return model, path


def test_round_trip_preserves_outputs_exactly(saved):
    model, path = saved
    loaded = load_model(path, expect_stage="decoder")
    assert loaded.stage == "decoder" and loaded.family == "mav" and loaded.prediction == "v"
    assert loaded.schedule == NoiseSchedule("cosine")
    assert loaded.config == model.config
    x = torch.randn(1, 3, 4, 16, 16)
    t = torch.tensor([100.0])
    ctx = torch.randn(1, 3, model.config.context_dim)
    emb = torch.randn(1, model.config.image_embed_dim)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx, emb, fps=8.0), loaded.module(x, t, ctx, emb, fps=8.0))


def test_truncated_file_is_named(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors.*(truncated|outside)"):
        load_model(bad)


def test_not_safetensors_is_named(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_bytes(b"this is a text file, not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"notes\.safetensors.*not a safetensors file"):
        load_model(bad)


def test_wrong_stage_is_named(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match=r"is a 'decoder' checkpoint, expected 'prior'"):
        load_model(path, expect_stage="prior")


def test_other_family_is_named(tmp_path):
    """A safetensors file of something else entirely (no metadata, unknown keys)."""
    from safetensors.torch import save_file
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match=r"vae\.safetensors"):
        load_model(path)


def test_config_mismatch_names_first_key(saved, tmp_path):
    model, path = saved
    from mav_core.io.checkpoints import load_state_dict
    sd, meta = load_state_dict(path)
    cfg = json.loads(meta["mav_config"])
    cfg["block_out_channels"] = [16, 48]
    meta["mav_config"] = json.dumps(cfg)
    from safetensors.torch import save_file
    bad = tmp_path / "mismatch.safetensors"
    save_file(sd, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match=r"mismatch\.safetensors: key '[^']+' has shape"):
        load_model(bad)


def test_header_validation_rejects_overlaps_and_huge_headers(tmp_path):
    def write(name, header, data=b"\0" * 64):
        raw = json.dumps(header).encode()
        p = tmp_path / name
        p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        return p

    over = write("overlap.safetensors", {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
                                         "b": {"dtype": "F32", "shape": [8], "data_offsets": [16, 48]}})
    with pytest.raises(CheckpointError, match="overlap"):
        read_header(over)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**15) + b"{}")
    with pytest.raises(CheckpointError, match="header claims"):
        read_header(huge)
    wrong = write("dtype.safetensors", {"a": {"dtype": "X99", "shape": [4], "data_offsets": [0, 16]}})
    with pytest.raises(CheckpointError, match="unsupported dtype"):
        read_header(wrong)


def test_save_is_atomic(tmp_path, tiny_unet_config):
    """A failing save leaves neither a partial file nor a temp file, and keeps an existing file."""
    model = SpaceTimeUNet(tiny_unet_config)
    path = tmp_path / "m.safetensors"
    save_model(path, model, "decoder")
    before = path.read_bytes()

    class Broken(torch.nn.Module):
        config = model.config

        def state_dict(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_model(path, Broken(), "decoder")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
