"""LoRA on the decoder's UNet (mav_core.io.lora, mav_core.models.lora, the MakeAVideo LoRA node): files
written here in every published layout with the key names the tools write (kohya sd-scripts; diffusers'
attention-processor, LoRACompatibleLinear and PEFT files; kohya names of the original ModelScope layout),
checked against a model whose weights the test merges itself from the same known deltas."""
from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from mav_core.io import unet_configs as UC
from mav_core.io.checkpoints import LoadedModel
from mav_core.io.external import UNET3D_PREDICTION, UNET3D_SCHEDULE
from mav_core.io.lora import LoraFileError, apply_lora, parse_lora, target_names
from mav_core.models.unet import SpaceTimeUNet
from synthetic_weights import randomise

TINY_3D = dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
               up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1, attention_head_dim=8,
               cross_attention_dim=16, norm_num_groups=32)
# layers a UNet3D LoRA trains (attention projections of the spatial and temporal transformers and of
# transformer_in), a ResBlock conv (kohya LoCon: conv LoRA with its kernel in `down`) and a 1x1 projection
ATTENTION = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
             "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
             "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v",
             "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
             "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_q",
             "transformer_in.transformer_blocks.0.attn2.to_out.0")
OTHER = ("down_blocks.0.resnets.0.conv1", "up_blocks.1.attentions.0.proj_in", "down_blocks.0.temp_attentions.0.proj_out")
RANK, ALPHA = 2, 3.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def decoder():
    cfg = UC.config_from_diffusers({"_class_name": "UNet3DConditionModel", **TINY_3D})
    module = SpaceTimeUNet(cfg).eval()
    randomise(module, seed=1)
    return LoadedModel("tiny-unet3d", "decoder", "unet3d-diffusers", module, UNET3D_SCHEDULE, UNET3D_PREDICTION)


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(2)
    return dict(x=torch.randn(1, 4, 3, 16, 16, generator=g), t=torch.tensor([417]),
                context=torch.randn(1, 5, 16, generator=g))


def _output(module, case):
    with torch.no_grad():
        return module(case["x"], case["t"], case["context"])


def known_deltas(module, layers, seed=5) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (up [out, r, (1, 1)], down [r, in, *kernel])}, random, large enough to change the output."""
    params = dict(module.named_parameters())
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in layers:
        w = params[name + ".weight"]
        up = torch.randn(w.shape[0], RANK, *([1] * (w.dim() - 2)), generator=g) * 0.3
        down = torch.randn(RANK, *w.shape[1:], generator=g) * 0.3
        out[name] = (up, down)
    return out


def merged_by_hand(module, deltas, scale: float, strength: float) -> SpaceTimeUNet:
    """The reference: a full copy of the model with W + strength * scale * up @ down written in (float64)."""
    ref = SpaceTimeUNet(module.config).eval()
    ref.load_state_dict(module.state_dict())
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, (up, down) in deltas.items():
            w = params[name + ".weight"]
            d = (up.double().flatten(1) @ down.double().flatten(1)).reshape(w.shape)
            w.copy_((w.double() + strength * scale * d).float())
    return ref


# --- the layouts, with the key names the tools write ------------------------------------------------

def kohya(deltas, alpha=ALPHA):
    """sd-scripts networks/lora.py: lora_unet_ + module path with '.' -> '_'; lora_down / lora_up / alpha."""
    sd = {}
    for name, (up, down) in deltas.items():
        k = "lora_unet_" + name.replace(".", "_")
        sd |= {f"{k}.lora_down.weight": down, f"{k}.lora_up.weight": up, f"{k}.alpha": torch.tensor(alpha)}
    return sd


def diffusers_attn(deltas):
    """diffusers save_attn_procs (LoRAAttnProcessor): <attention>.processor.to_q_lora.down.weight ..."""
    sd = {}
    for name, (up, down) in deltas.items():
        attn, proj = name.rsplit(".to_", 1)
        proj = "to_" + proj.removesuffix(".0")
        sd |= {f"{attn}.processor.{proj}_lora.down.weight": down, f"{attn}.processor.{proj}_lora.up.weight": up}
    return sd


def diffusers_linear(deltas):
    """diffusers LoraLoaderMixin.save_lora_weights before PEFT: unet.<module>.lora.down.weight / .lora.up.weight."""
    sd = {}
    for name, (up, down) in deltas.items():
        sd |= {f"unet.{name}.lora.down.weight": down, f"unet.{name}.lora.up.weight": up}
    return sd


def peft(deltas):
    """diffusers with PEFT: unet.<module>.lora_A.weight / .lora_B.weight (alpha = rank: scale 1)."""
    sd = {}
    for name, (up, down) in deltas.items():
        sd |= {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    return sd


LAYOUT_WRITERS = {"kohya": (kohya, ALPHA / RANK, ATTENTION + OTHER),
                  "diffusers-attn": (diffusers_attn, 1.0, ATTENTION),
                  "diffusers": (diffusers_linear, 1.0, ATTENTION + OTHER),
                  "peft": (peft, 1.0, ATTENTION + OTHER)}


def _write(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUT_WRITERS))
@pytest.mark.parametrize("strength", [1.0, 0.7, -1.5])
def test_lora_reproduces_the_merged_weights_output(decoder, case, tmp_path, layout, strength):
    writer, scale, layers = LAYOUT_WRITERS[layout]
    deltas = known_deltas(decoder.module, layers)
    path = _write(writer(deltas), tmp_path / f"{layout}.safetensors")
    before = {k: v.clone() for k, v in decoder.module.state_dict().items()}
    patched = apply_lora(decoder, path, strength)
    expected = _output(merged_by_hand(decoder.module, deltas, scale, strength), case)
    got = _output(patched.module, case)
    assert (got - expected).abs().max().item() <= 1e-5
    # the LoRA changes the output, and the input decoder is left as it was
    base = _output(decoder.module, case)
    assert (got - base).abs().max().item() > 1e-2
    assert all(torch.equal(v, before[k]) for k, v in decoder.module.state_dict().items())
    # untouched weights are shared with the input, touched ones are new tensors
    ours = dict(patched.module.named_parameters())
    for key, p in decoder.module.named_parameters():
        touched = key.removesuffix(".weight") in deltas and key.endswith(".weight")
        assert (ours[key].data_ptr() == p.data_ptr()) != touched, key


@pytest.mark.parametrize("layout", sorted(LAYOUT_WRITERS))
def test_strength_zero_is_the_decoder_bit_exact(decoder, case, tmp_path, layout):
    writer, _, layers = LAYOUT_WRITERS[layout]
    path = _write(writer(known_deltas(decoder.module, layers)), tmp_path / "l.safetensors")
    assert torch.equal(_output(apply_lora(decoder, path, 0.0).module, case), _output(decoder.module, case))


def test_modelscope_layout_kohya_names(decoder, case, tmp_path):
    """kohya names of the original ModelScope layout (input_blocks / middle_block / output_blocks, the
    temporal transformer at .2, transformer_in at input_blocks.0.1) reach the same weights."""
    deltas = known_deltas(decoder.module, ATTENTION)
    renamed = {"down_blocks.0.attentions.0.": "input_blocks.1.1.", "down_blocks.0.temp_attentions.0.": "input_blocks.1.2.",
               "up_blocks.1.attentions.1.": "output_blocks.3.1.", "mid_block.attentions.0.": "middle_block.1.",
               "transformer_in.": "input_blocks.0.1."}
    names = target_names(decoder.module)
    assert all(names[ms + "proj_in"] == ours + "proj_in.weight" for ours, ms in renamed.items())
    foreign = {}
    for name, pair in deltas.items():
        prefix = next(p for p in renamed if name.startswith(p))
        foreign[renamed[prefix] + name[len(prefix):]] = pair
    path = _write(kohya(foreign), tmp_path / "ms.safetensors")
    expected = _output(merged_by_hand(decoder.module, deltas, ALPHA / RANK, 1.0), case)
    assert (_output(apply_lora(decoder, path, 1.0).module, case) - expected).abs().max().item() <= 1e-5


def test_diffusers_own_converters_read_the_same(decoder, case, tmp_path):
    """diffusers' own key converters (old attention-processor -> PEFT, PEFT -> kohya) give files that
    apply to the same weights as ours."""
    su = pytest.importorskip("diffusers.utils.state_dict_utils")
    deltas = known_deltas(decoder.module, ATTENTION)
    as_peft = su.convert_unet_state_dict_to_peft(diffusers_attn(deltas))
    as_kohya = su.convert_state_dict_to_kohya(peft(deltas))
    assert any(k.startswith("lora_unet_") for k in as_kohya) and any(".lora_A." in k for k in as_peft)
    expected = _output(merged_by_hand(decoder.module, deltas, 1.0, 1.0), case)
    for name, sd in (("peft", as_peft), ("kohya", as_kohya)):
        got = _output(apply_lora(decoder, _write(sd, tmp_path / f"{name}.safetensors"), 1.0).module, case)
        assert (got - expected).abs().max().item() <= 1e-5, name


def test_unknown_keys_fail_naming_them(decoder, tmp_path):
    sd = kohya(known_deltas(decoder.module, ATTENTION[:2]))
    strangers = {"lora_unet_down_blocks_0_attentions_0_no_such_layer.lora_down.weight": torch.zeros(2, 32),
                 "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2),
                 "some.other.tensor": torch.zeros(3)}
    path = _write(sd | strangers, tmp_path / "mixed.safetensors")
    with pytest.raises(LoraFileError) as e:
        apply_lora(decoder, path, 1.0)
    for key in strangers:
        assert key in str(e.value)
    assert "mixed.safetensors" in str(e.value) and "text-encoder" in str(e.value)


def test_incomplete_or_misfit_entries_fail_naming_them(decoder):
    deltas = known_deltas(decoder.module, ATTENTION[:3])
    sd = kohya(deltas)
    lonely = "lora_unet_" + ATTENTION[0].replace(".", "_") + ".lora_up.weight"
    del sd[lonely]
    misfit = "lora_unet_" + ATTENTION[1].replace(".", "_") + ".lora_down.weight"
    sd[misfit] = torch.zeros(RANK, 7)
    with pytest.raises(LoraFileError) as e:
        parse_lora(sd, decoder.module, "f")
    msg = str(e.value)
    assert lonely.replace(".lora_up.weight", ".lora_down.weight") in msg and "up matrix missing" in msg
    assert misfit in msg and "does not fit" in msg


def test_pickled_diffusers_file_and_strength_bounds(decoder, case, tmp_path):
    """pytorch_lora_weights.bin (torch.save) is read weights-only; strength outside [-100, 100] is refused."""
    deltas = known_deltas(decoder.module, ATTENTION)
    path = tmp_path / "pytorch_lora_weights.bin"
    torch.save(diffusers_attn(deltas), path)
    expected = _output(merged_by_hand(decoder.module, deltas, 1.0, 1.0), case)
    assert (_output(apply_lora(decoder, path, 1.0).module, case) - expected).abs().max().item() <= 1e-5
    for bad in (101.0, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            apply_lora(decoder, path, bad)


def test_stacked_loras_add_up(decoder, case, tmp_path):
    a, b = known_deltas(decoder.module, ATTENTION, seed=5), known_deltas(decoder.module, ATTENTION[:3], seed=6)
    pa, pb = _write(peft(a), tmp_path / "a.safetensors"), _write(kohya(b, alpha=RANK), tmp_path / "b.safetensors")
    both = apply_lora(apply_lora(decoder, pa, 0.5), pb, 2.0)
    ref = merged_by_hand(merged_by_hand(decoder.module, a, 1.0, 0.5), b, 1.0, 2.0)
    assert (_output(both.module, case) - _output(ref, case)).abs().max().item() <= 1e-5
    assert [e["file"] for e in json.loads(both.metadata["mav_loras"])] == ["a.safetensors", "b.safetensors"]


# --- the node -------------------------------------------------------------------------------------

def test_node_lists_the_loras_folder_and_applies(pack, decoder, case, tmp_path, monkeypatch):
    monkeypatch.setattr(pack.host, "extra_lora_dirs", [tmp_path])
    deltas = known_deltas(decoder.module, ATTENTION)
    _write(kohya(deltas), tmp_path / "style.safetensors")
    (tmp_path / "notes.txt").write_text("not a LoRA")
    node = pack.NODE_CLASS_MAPPINGS["MakeAVideoLora"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["MakeAVideoLora"] == "MakeAVideo LoRA"
    assert node.INPUT_TYPES()["required"]["lora_name"][0] == ["style.safetensors"]
    (out,) = node().apply(decoder, "style.safetensors", 0.8)
    expected = _output(merged_by_hand(decoder.module, deltas, ALPHA / RANK, 0.8), case)
    assert (_output(out.module, case) - expected).abs().max().item() <= 1e-5
    assert node.VALIDATE_INPUTS(strength=150.0).startswith("strength")
    with pytest.raises(FileNotFoundError, match="lora_name"):
        node().apply(decoder, "missing.safetensors", 1.0)
    _write({"lora_unet_nowhere.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"lora_name: .*lora_unet_nowhere\.lora_down\.weight"):
        node().apply(decoder, "bad.safetensors", 1.0)


def test_shared_copy_shares_tensors_but_not_parameters(decoder, case):
    """What the MODEL bridge hands the host: same output, no new memory, and a parameter replaced or
    moved on the copy (the host's weight patching) leaves the decoder as it was."""
    from mav_core.models.lora import shared_copy
    copy = shared_copy(decoder.module)
    assert torch.equal(_output(copy, case), _output(decoder.module, case))
    ours, theirs = dict(copy.named_parameters()), dict(decoder.module.named_parameters())
    assert all(ours[k].data_ptr() == p.data_ptr() and ours[k] is not p for k, p in theirs.items())
    key = ATTENTION[0] + ".weight"
    before = theirs[key].detach().clone()
    module, _, attr = key.rpartition(".")
    setattr(copy.get_submodule(module), attr, torch.nn.Parameter(torch.zeros_like(before)))
    assert torch.equal(dict(decoder.module.named_parameters())[key], before)


def test_model_bridge_needs_the_host(pack, decoder):
    node = pack.NODE_CLASS_MAPPINGS["MakeAVideoModelBridge"]
    assert node.RETURN_TYPES == ("MODEL", "LATENT")
    with pytest.raises(RuntimeError, match="decoder: .*needs ComfyUI"):
        node().bridge(decoder, 4, 32, 32, 1, 4.0)


def test_model_bridge_latent_size_is_checked_naming_the_input(pack, decoder):
    bridge = importlib.import_module(pack.__name__ + ".model_bridge")
    assert tuple(bridge.empty_latent(decoder, 3, 32, 16)["samples"].shape) == (3, 4, 2, 4)   # frames in the batch
    with pytest.raises(ValueError, match=r"height: 24 must be a multiple of 16"):
        bridge.empty_latent(decoder, 3, 32, 24)


def test_peft_adapter_config_in_the_header_sets_the_scale(decoder, case, tmp_path):
    """diffusers' save_lora_weights writes the PEFT adapter config (lora_alpha, alpha_pattern) into the
    safetensors header; the scale alpha / rank comes from it (rsLoRA: alpha / sqrt(rank))."""
    deltas = known_deltas(decoder.module, ATTENTION)
    pattern_layer = ATTENTION[1]
    config = {"r": RANK, "lora_alpha": 8, "alpha_pattern": {"attn2.to_k": 1}}
    layers = {f"{name}.lora_{ab}.weight": t for name, (up, down) in deltas.items() for ab, t in (("A", down), ("B", up))}
    try:
        from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    except ImportError:
        StableDiffusionLoraLoaderMixin = None
    if StableDiffusionLoraLoaderMixin is not None:
        StableDiffusionLoraLoaderMixin.save_lora_weights(tmp_path, unet_lora_layers=layers,
                                                         unet_lora_adapter_metadata=config)
        path = tmp_path / "pytorch_lora_weights.safetensors"
    else:
        path = tmp_path / "l.safetensors"
        save_file({f"unet.{k}": v.contiguous() for k, v in layers.items()}, str(path),
                  metadata={"lora_adapter_metadata": json.dumps({f"unet.{k}": v for k, v in config.items()})})
    others = {k: v for k, v in deltas.items() if k != pattern_layer}
    ref = merged_by_hand(merged_by_hand(decoder.module, others, 8 / RANK, 1.0), {pattern_layer: deltas[pattern_layer]},
                         1 / RANK, 1.0)
    assert (_output(apply_lora(decoder, path, 1.0).module, case) - _output(ref, case)).abs().max().item() <= 1e-5
    # rsLoRA, and a malformed config named as such
    from mav_core.io.lora import adapter_alphas
    alpha_for = adapter_alphas({"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.use_rslora": True})})
    assert alpha_for("x.to_q", 4) / 4 == pytest.approx(8 / math.sqrt(4))
    with pytest.raises(LoraFileError, match="lora_adapter_metadata"):
        adapter_alphas({"lora_adapter_metadata": json.dumps({"unet.lora_alpha": "eight"})}, "f")
