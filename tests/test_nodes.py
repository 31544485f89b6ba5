"""The pack's nodes without ComfyUI: declared inputs/outputs, execution on untrained MAV-Tiny-layout
checkpoints, and the errors bad inputs give. The node code is the real code; only comfy.utils /
model_management / folder_paths are replaced by nodes/host.py's stand-ins (ComfyUI is absent)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("text", "prior", "decoder", "interpolator", "sr_video", "sr_frame")


def make_untrained_weights(out: Path, seed: int = 0) -> Path:
    """Untrained MAV-Tiny-layout checkpoints (python -m mav_core init), text/prior written here if init could not."""
    from mav_core.models import family
    from mav_core.cli.main import main as cli_main
    assert cli_main(["init", "--out", str(out), "--seed", str(seed)]) == 0
    if not (out / family.STAGE_FILES["text"]).exists() or not (out / family.STAGE_FILES["prior"]).exists():
        from mav_core.io.checkpoints import save_model
        from mav_core.data.world import heldout_prompts, train_prompts
        from mav_core.models.prior import DiffusionPrior, PriorConfig
        from mav_core.models.text import TextImageConfig, TextImageEncoder, split_words
        torch.manual_seed(seed)
        vocab = sorted({w for p in train_prompts() + heldout_prompts() for w in split_words(p)})
        save_model(out / family.STAGE_FILES["text"], TextImageEncoder(TextImageConfig(vocab=vocab)), "text",
                   extra={"mav_untrained": "1"})
        prior = DiffusionPrior(PriorConfig())
        save_model(out / family.STAGE_FILES["prior"], prior, "prior", prior.config.noise_schedule(),
                   prior.config.prediction, extra={"mav_untrained": "1"})
    return out


@pytest.fixture(scope="session")
def models_root(pack, tmp_path_factory):
    root = tmp_path_factory.mktemp("makeavideo_models")
    make_untrained_weights(root / "set-a", seed=0)
    pack.host.extra_model_dirs.insert(0, root)
    yield root
    pack.host.extra_model_dirs.remove(root)


@pytest.fixture(scope="session")
def bundle(pack, models_root):
    return pack.loaders.BundleLoader().load("set-a")


def node(pack, name):
    return pack.NODE_CLASS_MAPPINGS[name]()


def conditioning(pack, bundle, text="a red circle on a black background"):
    return node(pack, "MakeAVideoTextEncode").encode(bundle[0], text)[0]


# --- declarations ---------------------------------------------------------------------------------

def test_plain_import_of_root_registers_nothing():
    spec = importlib.util.spec_from_file_location("root_init_plain", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {} and module.WEB_DIRECTORY == "./web"


def test_every_node_declares_valid_inputs_and_outputs(pack, models_root):
    expected = {"MakeAVideoBundleLoader", "MakeAVideoTextEncoderLoader", "MakeAVideoPriorLoader",
                "MakeAVideoDecoderLoader", "MakeAVideoInterpolatorLoader", "MakeAVideoUpscalerLoader",
                "MakeAVideoTextEncode", "MakeAVideoPrior", "MakeAVideoSampler", "MakeAVideoFrameInterpolator",
                "MakeAVideoUpscaler"}
    assert expected <= set(pack.NODE_CLASS_MAPPINGS) and expected <= set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for name in expected:
        cls = pack.NODE_CLASS_MAPPINGS[name]
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}, name
        params = set(spec["required"]) | set(spec.get("optional", {}))
        fn = getattr(cls(), cls.FUNCTION)
        assert params == set(fn.__code__.co_varnames[1:fn.__code__.co_argcount]), name
        for input_name, decl in {**spec["required"], **spec.get("optional", {})}.items():
            kind = decl[0]
            assert isinstance(kind, (str, list)), (name, input_name)
            opts = decl[1] if len(decl) > 1 else {}
            if kind in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], (name, input_name)
        assert len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)), name
    loader_files = pack.NODE_CLASS_MAPPINGS["MakeAVideoDecoderLoader"].INPUT_TYPES()["required"]["ckpt_name"][0]
    assert "set-a/decoder.safetensors" in loader_files
    assert "set-a" in pack.NODE_CLASS_MAPPINGS["MakeAVideoBundleLoader"].INPUT_TYPES()["required"]["folder"][0]


# --- execution ------------------------------------------------------------------------------------

def test_bundle_loader_returns_each_stage(bundle):
    assert [m.stage for m in bundle] == list(STAGES)


def test_text_encode_gives_host_conditioning(pack, bundle):
    cond = conditioning(pack, bundle)
    assert isinstance(cond, list) and len(cond) == 1
    tokens, extras = cond[0]
    assert tokens.shape == (1, bundle[0].config.max_tokens, bundle[0].config.width)
    assert extras["pooled_output"].shape == (1, bundle[0].config.embed_dim)
    other = conditioning(pack, bundle, "a blue square on a gray background")
    assert not torch.equal(other[0][0], tokens)


def test_prior_adds_image_embedding_and_reports_progress(pack, bundle, monkeypatch):
    bars = []
    real = pack.host.ProgressBar
    monkeypatch.setattr(pack.host, "ProgressBar", lambda total: bars.append(real(total)) or bars[-1])
    cond = conditioning(pack, bundle)
    out = node(pack, "MakeAVideoPrior").run(bundle[1], cond, seed=3, steps=4, cfg=1.0)[0]
    embed = out[0][1]["mav_image_embed"]
    assert embed.shape == (1, bundle[1].config.embed_dim)
    assert torch.allclose(embed.norm(dim=-1), torch.ones(1), atol=1e-4)
    assert "pooled_output" in out[0][1] and out[0][0] is cond[0][0]
    assert bars[-1].value == 4
    again = node(pack, "MakeAVideoPrior").run(bundle[1], cond, seed=3, steps=4, cfg=1.0)[0][0][1]["mav_image_embed"]
    assert torch.equal(embed, again)


def test_sampler_makes_frames_fps_and_previews(pack, bundle, monkeypatch):
    bars = []
    real = pack.host.ProgressBar
    monkeypatch.setattr(pack.host, "ProgressBar", lambda total: bars.append(real(total)) or bars[-1])
    pos = node(pack, "MakeAVideoPrior").run(bundle[1], conditioning(pack, bundle), 0, 2, 1.0)[0]
    neg = conditioning(pack, bundle, "")
    sampler = node(pack, "MakeAVideoSampler")
    frames, fps, latent = sampler.sample(bundle[2], pos, neg, seed=5, steps=2, cfg=2.0, sampler_name="euler_ancestral",
                                         frames=3, fps=6.0, width=16, height=24, denoise=1.0)
    assert frames.shape == (3, 24, 16, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    assert fps == 6.0 and latent is None
    assert bars[-1].value == 2 and bars[-1].previews == 1   # every 4th step and the last
    same = sampler.sample(bundle[2], pos, neg, 5, 2, 2.0, "euler_ancestral", 3, 6.0, 16, 24, 1.0)[0]
    assert torch.equal(frames, same)
    other = sampler.sample(bundle[2], pos, neg, 6, 2, 2.0, "euler_ancestral", 3, 6.0, 16, 24, 1.0)[0]
    assert not torch.equal(frames, other)
    # video variation: init frames set the size; a small denoise stays near them
    varied = sampler.sample(bundle[2], pos, neg, 7, 4, 1.0, "ddim", 99, 6.0, 8, 8, 0.05, init_frames=frames)[0]
    assert varied.shape == frames.shape
    assert (varied - frames).abs().mean() < (other - frames).abs().mean()


def test_sampler_sliding_windows(pack, bundle, monkeypatch):
    """context_window: a long clip in overlapping windows (every window is one network call per step); a
    window covering the clip is the plain sampler; bad window settings name the input."""
    pos = node(pack, "MakeAVideoPrior").run(bundle[1], conditioning(pack, bundle), 0, 2, 1.0)[0]
    neg = conditioning(pack, bundle, "")
    sampler = node(pack, "MakeAVideoSampler")
    args = (bundle[2], pos, neg, 5, 2, 1.0, "ddim", 10, 6.0, 16, 16, 1.0)
    calls = []
    hook = bundle[2].module.register_forward_hook(lambda *a: calls.append(1))
    try:
        windowed = sampler.sample(*args, context_window=4, context_overlap=1)[0]
    finally:
        hook.remove()
    assert windowed.shape == (10, 16, 16, 3) and torch.isfinite(windowed).all()
    assert len(calls) > 2                    # several windows per step, not one call for the whole clip
    whole = sampler.sample(*args)[0]
    assert torch.equal(sampler.sample(*args, context_window=10)[0], whole)
    assert not torch.equal(windowed, whole)
    with pytest.raises(ValueError, match="context_overlap"):
        sampler.sample(*args, context_window=4, context_overlap=4)
    with pytest.raises(ValueError, match="context_window"):
        sampler.sample(*args, context_window=1)


def test_interpolator_modes_and_fps(pack, bundle):
    frames = torch.rand(3, 16, 16, 3)
    interp = node(pack, "MakeAVideoFrameInterpolator")
    out, fps = interp.run(bundle[3], frames, fps=4.0, multiplier=2, mode="interpolate", seed=1, steps=2)
    assert out.shape == (5, 16, 16, 3) and fps == 8.0
    assert torch.allclose(out[::2], frames, atol=1e-6), "interpolation keeps the input frames"
    out, fps = interp.run(bundle[3], frames[:1], fps=4.0, multiplier=2, mode="extrapolate", seed=1, steps=2,
                          positive=conditioning(pack, bundle), extra_frames=3)
    assert out.shape == (4, 16, 16, 3) and fps == 4.0
    assert torch.allclose(out[0], frames[0], atol=1e-6)


def test_interpolator_node_with_a_regression_checkpoint(pack, bundle):
    """A regression ↑F: one deterministic pass (seed and steps do not matter, progress completes in one
    update per window); extrapolation is refused naming the input."""
    import dataclasses
    reg = dataclasses.replace(bundle[3], metadata={**bundle[3].metadata, "mav_interp_estimate": "regression",
                                                   "mav_interp_residual_scale": "4.0"})
    frames = torch.rand(3, 16, 16, 3)
    interp = node(pack, "MakeAVideoFrameInterpolator")
    a, fps = interp.run(reg, frames, fps=4.0, multiplier=2, mode="interpolate", seed=1, steps=2)
    b, _ = interp.run(reg, frames, fps=4.0, multiplier=2, mode="interpolate", seed=9, steps=30)
    assert a.shape == (5, 16, 16, 3) and fps == 8.0 and torch.equal(a, b)
    assert torch.allclose(a[::2], frames, atol=1e-6)
    with pytest.raises(ValueError, match="^mode: 'extrapolate' needs the diffusion"):
        interp.run(reg, frames[:1], fps=4.0, multiplier=2, mode="extrapolate", seed=1, steps=2, extra_frames=3)


@pytest.mark.parametrize("index,size", [(4, 32), (5, 64)])
def test_upscalers_double_the_size(pack, bundle, index, size):
    frames = torch.rand(4, size // 2, size // 2, 3)
    out = node(pack, "MakeAVideoUpscaler").run(bundle[index], frames, seed=2, steps=2, frame_chunk=3)[0]
    assert out.shape == (4, size, size, 3)


def test_sr_frame_uses_the_same_noise_for_every_frame(pack, bundle):
    """SR_h with identical input frames gives identical output frames (shared noise, no temporal layers)."""
    frames = torch.rand(1, 8, 8, 3).expand(3, -1, -1, -1).contiguous()
    out = node(pack, "MakeAVideoUpscaler").run(bundle[5], frames, seed=2, steps=2, frame_chunk=3)[0]
    assert torch.allclose(out[0], out[1], atol=1e-5) and torch.allclose(out[0], out[2], atol=1e-5)


# --- errors ---------------------------------------------------------------------------------------

def test_wrong_checkpoint_in_a_loader_names_file_and_stage(pack, models_root):
    loader = node(pack, "MakeAVideoPriorLoader")
    with pytest.raises(ValueError, match=r"ckpt_name: .*sr_video\.safetensors.*'sr_video'.*expected 'prior'"):
        loader.load("set-a/sr_video.safetensors")
    with pytest.raises(FileNotFoundError, match="ckpt_name: no checkpoint 'nope.safetensors'"):
        loader.load("nope.safetensors")


def test_loader_validation_reads_the_header_before_the_run(pack, models_root, tmp_path):
    """VALIDATE_INPUTS (the host's 400 path) refuses a wrong-stage, broken or unlisted file by its header."""
    loaders = {name: pack.NODE_CLASS_MAPPINGS[name] for name in
               ("MakeAVideoDecoderLoader", "MakeAVideoPriorLoader", "MakeAVideoUpscalerLoader")}
    assert loaders["MakeAVideoDecoderLoader"].VALIDATE_INPUTS("set-a/decoder.safetensors") is True
    assert loaders["MakeAVideoUpscalerLoader"].VALIDATE_INPUTS("set-a/sr_frame.safetensors") is True
    assert loaders["MakeAVideoDecoderLoader"].VALIDATE_INPUTS(None) is True   # linked: checked at run time
    problem = loaders["MakeAVideoDecoderLoader"].VALIDATE_INPUTS("set-a/sr_frame.safetensors")
    assert problem.startswith("ckpt_name: set-a/sr_frame.safetensors is a 'sr_frame' checkpoint, expected 'decoder'")
    problem = loaders["MakeAVideoPriorLoader"].VALIDATE_INPUTS("set-a/nope.safetensors")
    assert problem.startswith("ckpt_name: no checkpoint 'set-a/nope.safetensors'")
    broken = models_root / "set-a" / "broken_tmp.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    try:
        problem = loaders["MakeAVideoDecoderLoader"].VALIDATE_INPUTS("set-a/broken_tmp.safetensors")
        assert problem.startswith("ckpt_name: ") and "broken_tmp.safetensors" in problem
    finally:
        broken.unlink()


@pytest.mark.parametrize("inputs, expected", [
    ({"cfg": float("nan")}, "cfg: nan is not a finite number"),
    ({"cfg": float("inf")}, "cfg: inf is not a finite number"),
    ({"cfg": 31.0}, "cfg: 31.0 is bigger than the maximum 30.0"),
    ({"width": 34}, "width: 34 is not a multiple of 4"),
    ({"height": 30}, "height: 30 is not a multiple of 4"),
    ({"height": 4}, "height: 4 is smaller than the minimum 8"),
    ({"cfg": "high"}, "cfg: 'high' is not a number"),
    ({}, True),
    ({"cfg": None, "width": None}, True),
])
def test_sampler_validation_catches_what_min_max_lets_through(pack, inputs, expected):
    values = {"cfg": 4.0, "width": 32, "height": 32, **inputs}
    assert pack.NODE_CLASS_MAPPINGS["MakeAVideoSampler"].VALIDATE_INPUTS(**values) == expected


def test_wrong_model_type_into_a_slot(pack, bundle):
    cond = conditioning(pack, bundle)
    with pytest.raises(ValueError, match="decoder: got a 'interpolator' model.*expected 'decoder'"):
        node(pack, "MakeAVideoSampler").sample(bundle[3], cond, cond, 0, 1, 1.0, "ddim", 2, 4.0, 8, 8, 1.0)
    with pytest.raises(ValueError, match="upscaler: got a 'decoder' model"):
        node(pack, "MakeAVideoUpscaler").run(bundle[2], torch.rand(2, 8, 8, 3), 0, 1, 4)
    with pytest.raises(ValueError, match="frame_chunk: must be an integer >= 3"):
        node(pack, "MakeAVideoUpscaler").run(bundle[4], torch.rand(4, 8, 8, 3), 0, 1, 2)
    with pytest.raises(ValueError, match="interpolator: no model connected"):
        node(pack, "MakeAVideoFrameInterpolator").run(None, torch.rand(2, 8, 8, 3), 4.0, 2, "interpolate", 0, 1)


def test_interpolator_needs_two_frames(pack, bundle):
    with pytest.raises(ValueError, match="images: interpolation needs at least 2 frames, got 1"):
        node(pack, "MakeAVideoFrameInterpolator").run(bundle[3], torch.rand(1, 8, 8, 3), 4.0, 2, "interpolate", 0, 1)


def test_size_not_divisible(pack, bundle):
    cond = conditioning(pack, bundle)
    with pytest.raises(ValueError, match="height: 30 must be a multiple of 4"):
        node(pack, "MakeAVideoSampler").sample(bundle[2], cond, cond, 0, 1, 1.0, "ddim", 2, 4.0, 32, 30, 1.0)
    with pytest.raises(ValueError, match="init_frames: width 10 must be a multiple of 4"):
        node(pack, "MakeAVideoSampler").sample(bundle[2], cond, cond, 0, 1, 1.0, "ddim", 2, 4.0, 32, 32, 0.5,
                                               init_frames=torch.rand(2, 12, 10, 3))
    with pytest.raises(ValueError, match="images: (height|width) 10 must be a multiple of 4"):
        node(pack, "MakeAVideoFrameInterpolator").run(bundle[3], torch.rand(2, 10, 10, 3), 4.0, 2, "interpolate", 0, 1)


def test_conditioning_width_mismatch_names_the_input(pack, bundle):
    host_like = [[torch.zeros(1, 77, 1024), {"pooled_output": torch.zeros(1, 1024)}]]
    cond = conditioning(pack, bundle)
    with pytest.raises(ValueError, match="negative: conditioning tokens have width 1024.*expects context width 128"):
        node(pack, "MakeAVideoSampler").sample(bundle[2], cond, host_like, 0, 1, 1.0, "ddim", 2, 4.0, 8, 8, 1.0)
    with pytest.raises(ValueError, match="conditioning: tokens of shape"):
        node(pack, "MakeAVideoPrior").run(bundle[1], host_like, 0, 1, 1.0)


def test_denoise_without_init_frames_is_refused(pack, bundle):
    cond = conditioning(pack, bundle)
    with pytest.raises(ValueError, match="denoise: 0.5 < 1 needs init_frames"):
        node(pack, "MakeAVideoSampler").sample(bundle[2], cond, cond, 0, 1, 1.0, "ddim", 2, 4.0, 8, 8, 0.5)


def test_loaders_notice_a_replaced_file(pack, models_root, tmp_path):
    loader = pack.NODE_CLASS_MAPPINGS["MakeAVideoDecoderLoader"]
    target = models_root / "swap" / "decoder.safetensors"
    target.parent.mkdir(exist_ok=True)
    shutil.copy(models_root / "set-a" / "decoder.safetensors", target)
    before = loader.IS_CHANGED("swap/decoder.safetensors")
    bundle_before = pack.NODE_CLASS_MAPPINGS["MakeAVideoBundleLoader"].IS_CHANGED("swap")
    shutil.copy(models_root / "set-a" / "interpolator.safetensors", target)
    assert loader.IS_CHANGED("swap/decoder.safetensors") != before
    assert pack.NODE_CLASS_MAPPINGS["MakeAVideoBundleLoader"].IS_CHANGED("swap") != bundle_before


def test_bundle_without_optional_stages(pack, models_root):
    partial = models_root / "partial"
    partial.mkdir(exist_ok=True)
    for stage in ("text", "prior", "decoder"):
        shutil.copy(models_root / "set-a" / f"{stage}.safetensors", partial)
    out = pack.loaders.BundleLoader().load("partial")
    assert out[3:] == (None, None, None)
    with pytest.raises(ValueError, match="interpolator: no model connected"):
        node(pack, "MakeAVideoFrameInterpolator").run(out[3], torch.rand(2, 8, 8, 3), 4.0, 2, "interpolate", 0, 1)


# --- API client overrides (no server needed) -----------------------------------------------------

def test_client_overrides_find_nodes_by_class_and_title():
    import sys
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    from comfy_client import apply_overrides
    wf = json.loads((ROOT / "workflows" / "text_to_video_api.json").read_text())
    out = apply_overrides(wf, ["prompt=a green cross", "negative=blurry", "Upscaler SR_h (frames).frame_chunk=4"],
                          seed=9, frames=12)
    texts = {n["_meta"]["title"]: n["inputs"]["text"] for n in out.values() if n["class_type"] == "MakeAVideoTextEncode"}
    assert texts == {"Prompt": "a green cross", "Negative Prompt": "blurry"}
    seeds = [n["inputs"]["seed"] for n in out.values() if "seed" in n["inputs"]]
    assert seeds and set(seeds) == {9}
    assert [n["inputs"]["frames"] for n in out.values() if n["class_type"] == "MakeAVideoSampler"] == [12]
    chunks = {n["_meta"]["title"]: n["inputs"]["frame_chunk"] for n in out.values() if n["class_type"] == "MakeAVideoUpscaler"}
    assert chunks["Upscaler SR_h (frames)"] == 4 and chunks["Upscaler SR^t_l (video)"] == 16
    assert wf != out and "a green cross" not in json.dumps(wf), "the input workflow is left unchanged"
    with pytest.raises(ValueError, match="no node with id, class_type or title 'Nope'"):
        apply_overrides(wf, ["Nope.steps=3"])


def test_latent_decoder_fills_latent_and_takes_host_conditioning(pack):
    """A latent-space decoder (UNet3D layout: 4 channels, 1024-wide context as ModelScope) gets the host's
    CLIPTextEncode-style CONDITIONING and returns LATENT frames [F, 4, H/8, W/8] for the host's VAE Decode."""
    from mav_core.io.checkpoints import LoadedModel
    from mav_core.diffusion.schedule import NoiseSchedule
    from mav_core.models.unet import SpaceTimeUNet, UNetConfig
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                     attention_levels=(False, True), context_dim=1024, norm_num_groups=8, attention_head_dim=16)
    model = LoadedModel("modelscope-like.safetensors", "decoder", "unet3d-diffusers", SpaceTimeUNet(cfg).eval(),
                        NoiseSchedule("linear"), "eps")
    clip_like = [[torch.randn(1, 77, 1024), {"pooled_output": torch.randn(1, 1024)}]]
    frames, fps, latent = node(pack, "MakeAVideoSampler").sample(model, clip_like, clip_like, 0, 1, 1.0, "ddim", 3, 8.0,
                                                                  48, 32, 1.0)
    assert frames is None and fps == 8.0
    assert latent["samples"].shape == (3, 4, 4, 6)
    with pytest.raises(ValueError, match="width: 44 must be a multiple of 8"):
        node(pack, "MakeAVideoSampler").sample(model, clip_like, clip_like, 0, 1, 1.0, "ddim", 3, 8.0, 44, 32, 1.0)
    with pytest.raises(ValueError, match="images: no frames .*LATENT"):
        pack.common.require_frames(frames, "images")
