"""The committed `zeroscope_upscale` and `modelscope_ksampler` workflows run to a video in a real ComfyUI, and
the Sampler's `latent` input takes what the host's nodes make of video latents.

  zeroscope_upscale:   CLIPLoader -> CLIPTextEncode -> Zeroscope 576w decoder -> our Sampler -> VAE Decode ->
                       ImageScale -> VAE Encode -> Zeroscope XL decoder -> our Sampler (latent, denoise 0.65) ->
                       VAE Decode -> CreateVideo -> SaveVideo
  modelscope_ksampler: our decoder loader -> Model Bridge -> the host's KSampler (euler, karras) -> VAE Decode
                       -> CreateVideo -> SaveVideo (the bridge's LATENT holds the frames in the batch,
                       [F, 4, h, w], as the host's SVD: what its SD VAE Decode takes)
Also: EmptyLatentImage (batch = frames) and VAE Encode of IMAGE frames into the KSampler on the bridged MODEL;
a 5-D LATENT is refused naming latent_image; the host's Upscale Latent By 2x on our [F, 4, h, w] LATENT is
accepted by the XL Sampler and its Upscale Latent to twice the size of the KSampler's output by a second KSampler
(video-to-video at denoise 0.5); denoise 1 from a latent gives the text-to-video frames of the same seed.
In the host's own Python (in process): the bridged MODEL regroups the host's [k * N * F] batches into clips
however the host batches them (cond and uncond together or one at a time, two clips in one latent, the frame
count from the bridge's batch_size or from `num_video_frames` in the conditioning) and refuses a batch that
does not divide.

Files are synthesised at test time: tiny random UNet3Ds (tests/host/test_modelscope_host.py's `tiny_unet3d`) in
the ORIGINAL ModelScope key layout and in the diffusers folder layout (config.json + unet weights, two of them:
576w and XL), all with the 1024-wide cross-attention of the real ModelScope / Zeroscope checkpoints; a complete
random OpenCLIP ViT-H text tower (HF CLIPTextModel layout, 24 x 1024, 354M parameters, 708 MB in fp16), which
the host's CLIPLoader detects as CLIP-H by its layer 22 and encodes with its SD2 CLIP (penultimate layer, 1024
wide tokens), as for the real checkpoints; a random TAESD (the host's tiny SD VAE, scale 0.18215). The host
builds its CLIP from fixed configs and leaves tensors missing from a file uninitialised, so only a complete
tower gives defined tokens. Measured on the 2-core AMD EPYC test machine (shared): making the tower 10.2 s,
writing it 2.4 s, the host's load_clip 3.1 s, one prompt encoded 17.5 s on the CPU; the whole module (server
start, files, six tests; the encoder loads once and the prompts' encodings are cached across the graphs) ran in
98.3 s, 88.4 s and 56.9 s in three runs on the shared machine, against 38.8 s with the 123.6M-parameter CLIP-L.
"""
from __future__ import annotations

import json
import textwrap
import time

import pytest

from comfy_server import REPO_ROOT, history_events, history_status
from test_modelscope_host import VAE_FILE, node_id, run_to_video, serve_host_models, taesd_state_dict, tiny_unet3d

WORKFLOWS = REPO_ROOT / "workflows"
MODELSCOPE_FILE = "modelscope-tiny/text2video_pytorch_model.safetensors"
ZEROSCOPE_576W_FILE = "zeroscope-576w-tiny/unet/diffusion_pytorch_model.safetensors"
ZEROSCOPE_XL_FILE = "zeroscope-xl-tiny/unet/diffusion_pytorch_model.safetensors"
FRAMES, WIDTH, HEIGHT = 3, 128, 64   # the tiny UNet3D halves 3 times: latent sides multiples of 8
CLIP_FILE = "clip_h_random.safetensors"
CLIP_H_WIDTH = 1024


def clip_h_state_dict(seed: int = 0) -> dict:
    """A random OpenCLIP ViT-H text tower in the HF CLIPTextModel layout (layer 22 present: the host's CLIP-H),
    fp16, made in fp16 tensor by tensor (no float32 copy of the whole tower)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    width, hidden, layers, vocab, positions = CLIP_H_WIDTH, 4096, 24, 49408, 77

    def normal(shape, std):
        return torch.randn(shape, generator=g).mul_(std).half()

    def ones(n):
        return torch.ones(n, dtype=torch.float16)

    def zeros(n):
        return torch.zeros(n, dtype=torch.float16)

    sd = {"text_model.embeddings.token_embedding.weight": normal((vocab, width), 0.02),
          "text_model.embeddings.position_embedding.weight": normal((positions, width), 0.01),
          "text_model.final_layer_norm.weight": ones(width), "text_model.final_layer_norm.bias": zeros(width),
          "text_projection.weight": normal((width, width), width ** -0.5)}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"] = ones(width), zeros(width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}self_attn.{proj}.weight"] = normal((width, width), width ** -0.5)
            sd[f"{p}self_attn.{proj}.bias"] = zeros(width)
        sd[f"{p}mlp.fc1.weight"], sd[f"{p}mlp.fc1.bias"] = normal((hidden, width), width ** -0.5), zeros(hidden)
        sd[f"{p}mlp.fc2.weight"], sd[f"{p}mlp.fc2.bias"] = normal((width, hidden), hidden ** -0.5), zeros(width)
    return sd


def write_models(root) -> None:
    from mav_core.io import convert as C, unet_configs as UC
    from mav_core.io.checkpoints import atomic_save_file
    models = root / "models"
    atomic_save_file(clip_h_state_dict(), models / "text_encoders" / CLIP_FILE)
    atomic_save_file(taesd_state_dict(), models / "vae" / VAE_FILE)
    ours = models / "makeavideo"
    _, sd = tiny_unet3d(CLIP_H_WIDTH, 11)
    modelscope = C.ours_to_modelscope(sd)
    assert "input_blocks.1.0.temopral_conv.conv1.0.weight" in modelscope   # the published key names
    atomic_save_file(modelscope, ours / MODELSCOPE_FILE)
    for name, seed in ((ZEROSCOPE_576W_FILE, 12), (ZEROSCOPE_XL_FILE, 13)):
        cfg, sd = tiny_unet3d(CLIP_H_WIDTH, seed)
        diffusers = C.ours_to_diffusers(sd)
        assert "down_blocks.0.temp_attentions.0.proj_in.weight" in diffusers
        atomic_save_file(diffusers, ours / name)
        (ours / name).with_name("config.json").write_text(json.dumps(UC.unet3d_config_to_diffusers(cfg)))


@pytest.fixture(scope="module")
def server(comfy_host_paths, tmp_path_factory):
    yield from serve_host_models(comfy_host_paths, tmp_path_factory.mktemp("latent_workflows_host"), write_models)


def _load(name: str, prefix: str) -> dict:
    """A committed API workflow with the synthesised files swapped in and a small, 2-step run."""
    api = json.loads((WORKFLOWS / name).read_text())
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            inputs["clip_name"] = CLIP_FILE
        elif kind == "VAELoader":
            inputs["vae_name"] = VAE_FILE
        elif kind == "MakeAVideoDecoderLoader":
            inputs["ckpt_name"] = {"zeroscope_v2_576w": ZEROSCOPE_576W_FILE, "zeroscope_v2_XL": ZEROSCOPE_XL_FILE,
                                   "modelscope": MODELSCOPE_FILE}[inputs["ckpt_name"].split("/")[0]]
        elif kind in ("MakeAVideoSampler", "KSampler"):
            inputs["steps"] = min(inputs["steps"], 2)
            if kind == "MakeAVideoSampler":
                inputs.update(frames=FRAMES, width=WIDTH, height=HEIGHT)
        elif kind == "MakeAVideoModelBridge":
            inputs.update(frames=FRAMES, width=WIDTH, height=HEIGHT)
        elif kind == "ImageScale":
            inputs.update(width=2 * WIDTH, height=2 * HEIGHT)
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = prefix
    return api


def _samplers(api: dict) -> list[str]:
    return sorted((k for k, v in api.items() if v["class_type"] == "MakeAVideoSampler"), key=int)


def _upscale_latent_2x(api: dict, source: list, into: str, node: str = "LatentUpscaleBy") -> str:
    """Add the host's Upscale Latent By (scale_by 2) or Upscale Latent (to twice the size) between `source` and
    the Sampler `into`'s latent input."""
    new = str(max(map(int, api)) + 1)
    inputs = ({"scale_by": 2.0} if node == "LatentUpscaleBy"
              else {"width": 2 * WIDTH, "height": 2 * HEIGHT, "crop": "disabled"})
    api[new] = {"class_type": node, "inputs": {"samples": source, "upscale_method": "nearest-exact", **inputs}}
    api[into]["inputs"]["latent"] = [new, 0]
    return new


def _assert_not_flat(video):
    print(f"decoded pixels: mean {video.mean():.3f}, std {video.std():.3f}")
    assert video.std() > 0.01, "the decoded frames are flat: the latent did not reach the VAE"


def test_zeroscope_upscale_workflow_makes_a_video(server):
    assert server.pack_import_errors() == [], server.log_tail(80)
    api = _load("zeroscope_upscale_api.json", "latent/zeroscope_upscale")
    first, xl = _samplers(api)
    assert api[xl]["inputs"]["denoise"] == 0.65 and api[xl]["inputs"]["latent"][0] == node_id(api, "VAEEncode")
    started = time.monotonic()
    history, video, fps = run_to_video(server, api)
    print(f"zeroscope_upscale: {FRAMES} frames {WIDTH}x{HEIGHT} -> {2 * WIDTH}x{2 * HEIGHT}, 2 + 2 steps, "
          f"in {time.monotonic() - started:.1f} s")
    assert tuple(video.shape) == (FRAMES, 2 * HEIGHT, 2 * WIDTH, 3)   # frames and size from the encoded latent
    assert fps == pytest.approx(api[xl]["inputs"]["fps"], rel=1e-3)
    _assert_not_flat(video)
    assert "clip missing" not in server.log_text() and "Missing VAE keys" not in server.log_text()


def test_modelscope_ksampler_workflow_makes_a_video(server):
    """Model Bridge -> KSampler -> the host's VAE Decode directly: the bridge's LATENT is [F, 4, h, w]."""
    api = _load("modelscope_ksampler_api.json", "latent/modelscope_ksampler")
    ksampler = api[node_id(api, "KSampler")]["inputs"]
    assert ksampler["scheduler"] == "karras" and ksampler["model"][0] == node_id(api, "MakeAVideoModelBridge")
    assert api[node_id(api, "VAEDecode")]["inputs"]["samples"] == [node_id(api, "KSampler"), 0]
    assert _samplers(api) == []
    started = time.monotonic()
    history, video, fps = run_to_video(server, api)
    print(f"modelscope_ksampler: {FRAMES} frames {WIDTH}x{HEIGHT}, 2 KSampler steps, in "
          f"{time.monotonic() - started:.1f} s")
    assert tuple(video.shape) == (FRAMES, HEIGHT, WIDTH, 3)
    assert fps == pytest.approx(api[node_id(api, "CreateVideo")]["inputs"]["fps"], rel=1e-3)
    _assert_not_flat(video)


def _with_node(api: dict, class_type: str, inputs: dict) -> str:
    new = str(max(map(int, api)) + 1)
    api[new] = {"class_type": class_type, "inputs": inputs}
    return new


def test_empty_latent_image_with_batch_frames_into_the_ksampler(server):
    """The host's EmptyLatentImage with batch = frames stands in for the bridge's LATENT: one clip of that many
    frames, decoded by VAE Decode."""
    frames = FRAMES + 2
    api = _load("modelscope_ksampler_api.json", "latent/empty_latent_image")
    empty = _with_node(api, "EmptyLatentImage", {"width": WIDTH, "height": HEIGHT, "batch_size": frames})
    api[node_id(api, "KSampler")]["inputs"]["latent_image"] = [empty, 0]
    _, video, _ = run_to_video(server, api)
    assert tuple(video.shape) == (frames, HEIGHT, WIDTH, 3)
    _assert_not_flat(video)


def test_vae_encode_of_image_frames_into_the_ksampler(server):
    """Video-to-video through the host's nodes: the decoded frames of a first KSampler -> VAE Encode -> a second
    KSampler on the bridged MODEL at denoise 0.6 -> VAE Decode."""
    api = _load("modelscope_ksampler_api.json", "latent/vae_encode")
    first, decode = node_id(api, "KSampler"), node_id(api, "VAEDecode")
    encode = _with_node(api, "VAEEncode", {"pixels": [decode, 0], "vae": api[decode]["inputs"]["vae"]})
    second = _with_node(api, "KSampler", {**api[first]["inputs"], "latent_image": [encode, 0], "denoise": 0.6})
    decode2 = _with_node(api, "VAEDecode", {"samples": [second, 0], "vae": api[decode]["inputs"]["vae"]})
    api[node_id(api, "CreateVideo")]["inputs"]["images"] = [decode2, 0]
    _, video, _ = run_to_video(server, api)
    assert tuple(video.shape) == (FRAMES, HEIGHT, WIDTH, 3)
    _assert_not_flat(video)


def test_a_5d_latent_into_the_bridged_model_is_refused_naming_latent_image(server):
    """A video latent [1, C, F, h, w] (the host's EmptyHunyuanLatentVideo) is not the bridge's layout: the KSampler
    fails saying what the bridged MODEL takes."""
    api = _load("modelscope_ksampler_api.json", "latent/five_d")
    empty = _with_node(api, "EmptyHunyuanLatentVideo", {"width": WIDTH, "height": HEIGHT, "length": 5, "batch_size": 1})
    api[node_id(api, "KSampler")]["inputs"]["latent_image"] = [empty, 0]
    history = server.run_prompt(api, timeout=300)
    assert history_status(history) == "error"
    error = history_events(history)["execution_error"]
    assert error["node_type"] == "KSampler", error
    assert "latent_image" in error["exception_message"] and "frames in the batch" in error["exception_message"], error


def test_upscale_latent_2x_of_our_frame_latents_into_the_xl_sampler(server):
    """Our [F, 4, h, w] LATENT through the host's Upscale Latent By 2x (in place of VAE Decode -> ImageScale ->
    VAE Encode) is taken by the XL Sampler: frames and the doubled size come from it."""
    api = _load("zeroscope_upscale_api.json", "latent/upscale_latent_4d")
    first, xl = _samplers(api)
    for kind in ("ImageScale", "VAEEncode"):
        del api[node_id(api, kind)]
    del api[min((k for k, v in api.items() if v["class_type"] == "VAEDecode"), key=int)]
    _upscale_latent_2x(api, [first, 2], xl)
    _, video, _ = run_to_video(server, api)
    assert tuple(video.shape) == (FRAMES, 2 * HEIGHT, 2 * WIDTH, 3)
    _assert_not_flat(video)


def test_upscale_latent_to_twice_the_size_of_the_bridges_latent_into_a_second_ksampler(server):
    """The host's Upscale Latent to twice the size on the KSampler's [F, 4, h, w] LATENT (frame by frame) is taken
    by a second KSampler on the bridged MODEL, re-sampling at denoise 0.5."""
    api = _load("modelscope_ksampler_api.json", "latent/upscale_latent_bridge")
    first, decode = node_id(api, "KSampler"), node_id(api, "VAEDecode")
    upscale = _with_node(api, "LatentUpscale", {"samples": [first, 0], "upscale_method": "nearest-exact",
                                                "width": 2 * WIDTH, "height": 2 * HEIGHT, "crop": "disabled"})
    second = _with_node(api, "KSampler", {**api[first]["inputs"], "latent_image": [upscale, 0], "denoise": 0.5})
    api[decode]["inputs"]["samples"] = [second, 0]
    _, video, _ = run_to_video(server, api)
    assert tuple(video.shape) == (FRAMES, 2 * HEIGHT, 2 * WIDTH, 3)
    _assert_not_flat(video)


def test_denoise_one_from_a_latent_is_text_to_video_of_the_same_seed(server):
    """The XL Sampler at denoise 1 with the upscaled latent, and without a latent at the latent's size: the same
    video (the latent sets the size only)."""
    api = _load("zeroscope_upscale_api.json", "latent/denoise_one")
    first, xl = _samplers(api)
    api[xl]["inputs"].update(denoise=1.0, seed=5)
    _, from_latent, _ = run_to_video(server, api)
    plain = json.loads(json.dumps(api))
    del plain[xl]["inputs"]["latent"]
    plain[xl]["inputs"].update(frames=FRAMES, width=2 * WIDTH, height=2 * HEIGHT)
    plain[node_id(plain, "SaveVideo")]["inputs"]["filename_prefix"] = "latent/denoise_one_plain"
    _, text_to_video, _ = run_to_video(server, plain)
    assert (from_latent == text_to_video).all()


# --- the host's batching, in the host's own Python ----------------------------------------------------

REGROUP_SCRIPT = textwrap.dedent(r"""
    import importlib.util, json, sys
    sys.argv = ["main.py", "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    torch.set_num_threads(1)
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced

    spec = importlib.util.spec_from_file_location("mav_pack", REPO + "/__init__.py", submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec); sys.modules["mav_pack"] = pack; spec.loader.exec_module(pack)
    from mav_pack.nodes.model_bridge import ModelBridge
    from mav_pack.mav_core.diffusion.noise import seeded_noise
    from mav_pack.mav_core.diffusion.samplers import sampling_sigmas
    from mav_pack.mav_core.io.loader import load_model
    from mav_pack.mav_core.models import fused

    # float64 (our layers' reference path), so that batch-size-dependent float32 rounding, which the cosine
    # schedule's top sigma (2e4) magnifies to ~1e-4, does not hide what the regrouping does
    fused.inference = lambda: False
    decoder = load_model(REPO + "/mav_core/weights/mav-tiny/decoder.safetensors", dtype=torch.float32)
    decoder.module.double()
    F, SIDE = 3, 16
    g = torch.Generator().manual_seed(3)
    ctx = torch.randn(1, 5, decoder.config.context_dim, generator=g).double()
    uctx = torch.randn(1, 5, decoder.config.context_dim, generator=g).double()
    embed = torch.randn(1, decoder.config.image_embed_dim, generator=g).double()
    sigmas = sampling_sigmas(decoder.schedule, 3, 1.0, "karras").double()
    noise = seeded_noise((2 * F, decoder.config.in_channels, SIDE, SIDE), 7).double()
    model1, latent1 = ModelBridge().bridge(decoder, F, SIDE, SIDE, 1, 6.0)   # a clip is the whole batch
    model2, latent2 = ModelBridge().bridge(decoder, F, SIDE, SIDE, 2, 6.0)   # clips of F frames
    report = {"latent1": list(latent1["samples"].shape), "latent2": list(latent2["samples"].shape)}
    seen = []

    def recording(model):
        m = model.clone()
        def wrapper(apply_model, args):
            seen.append([len(args["cond_or_uncond"]), int(args["input"].shape[0])])
            return apply_model(args["input"], args["timestep"], **args["c"])
        m.set_model_unet_function_wrapper(wrapper)
        return m

    def run(model, start, extra=None, together=True):
        # a negative with a zero image embedding (what a missing one means) has the positive's keys: the host batches
        # cond and uncond together; without one (as our Text Encode makes a negative) it runs them one at a time
        seen.clear()
        extra = extra or {}
        negative = {"mav_image_embed": torch.zeros_like(embed), **extra} if together else dict(extra)
        guider = comfy.samplers.CFGGuider(recording(model))
        guider.set_conds([[ctx, {"mav_image_embed": embed, **extra}]], [[uctx, negative]])
        guider.set_cfg(3.0)
        class Given:
            seed = 0
            def generate_noise(self, latent): return start.clone()
        out, _ = SamplerCustomAdvanced().sample(Given(), guider, comfy.samplers.sampler_object("euler"), sigmas,
                                                {"samples": torch.zeros_like(start)})
        return out["samples"], [list(x) for x in {tuple(x) for x in seen}]

    def diff(a, b):
        return float((a - b).abs().max())

    one_a, report["batched_forms_one_clip"] = run(model1, noise[:F])
    one_b, _ = run(model1, noise[F:])
    both = torch.cat([one_a, one_b])
    two, report["batched_forms_two_clips"] = run(model2, noise)
    report["two_clips_vs_one_by_one"] = diff(two, both)
    given, _ = run(model1, noise, {"num_video_frames": F})
    report["num_video_frames_vs_one_by_one"] = diff(given, both)
    six, _ = run(model1, noise)
    report["one_clip_of_six_vs_two_of_three"] = diff(six, both)
    apart, report["batched_forms_apart"] = run(model2, noise, together=False)
    report["apart_vs_together"] = diff(apart, two)
    report["clip_std"] = float(both.std())
    for name, model, start in (("not_dividing", model2, noise[:F + 1]),
                               ("five_d", model1, noise[:F].transpose(0, 1).unsqueeze(0))):
        try:
            run(model, start)
            report[name] = "ran"
        except ValueError as e:
            report[name] = str(e)
    print("REPORT " + json.dumps(report))
""")


@pytest.fixture(scope="module")
def regroup(comfy_host_paths):
    script = f"REPO = {json.dumps(str(REPO_ROOT))}\n" + REGROUP_SCRIPT
    return comfy_host_paths.run_report(script, timeout=600)


def test_the_bridge_latent_holds_the_frames_in_the_batch(regroup):
    assert regroup["latent1"][0] == 3 and regroup["latent2"][0] == 6 and len(regroup["latent1"]) == 4, regroup


def test_regrouping_is_the_same_however_the_host_batches(regroup):
    """Two clips in one latent (the bridge's batch_size, or num_video_frames in the conditioning) give each clip
    as sampled alone; cond and uncond batched together or run one at a time give the same frames."""
    assert regroup["batched_forms_one_clip"] == [[2, 6]], regroup            # cond + uncond, 3 frames each
    assert regroup["batched_forms_two_clips"] == [[2, 12]], regroup          # cond + uncond, 2 clips of 3
    assert sorted(regroup["batched_forms_apart"]) == [[1, 6]], regroup       # one at a time
    assert regroup["clip_std"] > 0.05
    assert regroup["two_clips_vs_one_by_one"] <= 1e-9, regroup   # float64
    assert regroup["num_video_frames_vs_one_by_one"] <= 1e-9, regroup
    assert regroup["apart_vs_together"] <= 1e-9, regroup
    # without a frame count the 6 frames are one clip: its temporal layers see them all
    assert regroup["one_clip_of_six_vs_two_of_three"] > 1e-3, regroup


def test_a_batch_that_does_not_divide_is_refused(regroup):
    assert "latent_image: a batch of 4 frame latents does not divide into clips of 3 frames" in regroup["not_dividing"]
    assert "latent_image: the bridged MODEL takes frame latents" in regroup["five_d"], regroup
