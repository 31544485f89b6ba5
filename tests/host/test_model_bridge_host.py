"""MakeAVideo Model Bridge with the real ComfyUI's samplers: the host's SamplerCustomAdvanced on the bridged
MODEL and our sampler (mav_core.inference.sampling.sample_unet; in float64 its own pieces Denoiser ->
CFGDenoiser -> sample) from the same start noise and sigmas, for the host's DDIM and Euler against our DDIM
(eta 0: the same update as Euler in sigma form), on trailing and karras sigmas. In float64 they agree to
<= 1e-4 everywhere (the maths is the same); in float32 the measured differences are reported next to two
baselines measured in the same run (our own float32 error against float64, and how far our sampler moves
when its start noise moves by one part in 10^7), and the cases beyond 1e-4 are strict xfails saying why.
Also: the host's KSampler runs the bridged MODEL with its karras / exponential schedulers, which differ from
normal; the host's LoraLoaderModelOnly patches the bridged MODEL by our key names and unloading restores the
weights; the bridge node runs in a server into the host's KSampler.

The host's code runs in-process in the host's own Python (a child process started in the ComfyUI checkout,
the pack imported as ComfyUI imports a custom node package), on three decoders:
  - a tiny UNet3D (ModelScope / Zeroscope structure, eps, scaled-linear schedule, latent) at the published
    UNet3Ds' own initialisation (PyTorch defaults, temporal output layers at zero: what SpaceTimeUNet does),
    then trained for TRAINING_STEPS Adam steps on small synthetic latents. Why trained: an untrained UNet3D
    is chaotic, a trained one is not. Our sampler's move when its start noise moves by one part in 10^7,
    relative to the sample's std (DDIM, 4 steps, cfg 3, trailing / karras): fully random weights
    (tests/synthetic_weights.randomise) 3.0e-5 / 1.5e-5, the published init untrained 7.7e-4 / 3.5e-4,
    after 100 steps 3.4e-6 / 2.6e-6, after 200 steps 3.7e-6 / 2.5e-6, the trained MAV-Tiny decoder
    4.3e-6 / 2.3e-6. The random UNet3D turned float32 rounding into 3e-4 (host vs ours 1.1e-3 / 3.0e-4);
    the trained one behaves like MAV-Tiny (host vs ours 1.8e-5 / 7.3e-5 after 100 steps, 1.4e-5 / 1.5e-5
    after 200: 200 keeps a margin under 1e-4 on the UNet3D's larger outputs, std 6 against MAV-Tiny's 0.6-0.9);
  - a random MAV-layout pixel decoder (v prediction, cosine schedule as MAV-Tiny's, image embedding and fps
    conditioning; v prediction keeps it bounded: it is not chaotic, 8.8e-6 for the nudge);
  - the shipped, trained MAV-Tiny decoder (random conditioning of its widths)."""
from __future__ import annotations

import json
import textwrap
import time

import pytest

from comfy_server import REPO_ROOT, history_status

TOLERANCE = 1e-4
TRAINING_STEPS = 200   # of the UNet3D (see the module docstring)

SCRIPT = textwrap.dedent(r"""
    import copy, dataclasses, importlib.util, json, math, sys
    sys.argv = ["main.py", "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    torch.set_num_threads(1)
    import comfy.model_management, comfy.samplers, comfy.sd, comfy.utils
    from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced
    import nodes as host_nodes

    spec = importlib.util.spec_from_file_location("mav_pack", REPO + "/__init__.py", submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec); sys.modules["mav_pack"] = pack; spec.loader.exec_module(pack)
    from mav_pack.nodes import model_bridge
    from mav_pack.mav_core.diffusion.denoiser import Denoiser
    from mav_pack.mav_core.diffusion.loss import diffusion_loss
    from mav_pack.mav_core.diffusion.guidance import CFGDenoiser
    from mav_pack.mav_core.diffusion.noise import seeded_noise
    from mav_pack.mav_core.diffusion.samplers import sample as core_sample
    from mav_pack.mav_core.diffusion.samplers import sampling_sigmas
    from mav_pack.mav_core.diffusion.schedule import NoiseSchedule
    from mav_pack.mav_core.inference.options import SamplingOptions
    from mav_pack.mav_core.inference.sampling import sample_unet
    from mav_pack.mav_core.io import unet_configs as UC
    from mav_pack.mav_core.io.checkpoints import LoadedModel
    from mav_pack.mav_core.io.loader import load_model
    from mav_pack.mav_core.models import fused
    from mav_pack.mav_core.models.unet import SpaceTimeUNet, UNetConfig
    assert pack.nodes.host.HAS_COMFY and model_bridge.HAS_COMFY
    sys.path.insert(0, REPO + "/tests")
    from synthetic_weights import randomise

    def briefly_trained(net, schedule, width, steps):
        # `steps` Adam steps (lr 1e-3, batch 16) of eps-prediction on 3-frame 2x2 latents of std ~0.9 (as the SD VAE's
        # scaled latents), their mean a fixed linear function of the text tokens: a denoiser, as trained checkpoints are
        g = torch.Generator().manual_seed(0)
        proj = torch.randn(width, net.config.in_channels, generator=g) / 4
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for _ in range(steps):
            ctx = torch.randn(16, 5, width, generator=g)
            x0 = (ctx.mean(1) @ proj)[:, :, None, None, None] + 0.8 * torch.randn(16, net.config.in_channels, 3, 2, 2, generator=g)
            loss = diffusion_loss(net, x0, schedule, "eps", generator=g, context=ctx, fps=torch.full((16,), 6.0))
            opt.zero_grad(); loss.backward(); opt.step()
        return net.eval()

    def decoders():
        cfg = UC.config_from_diffusers({"_class_name": "UNet3DConditionModel", "block_out_channels": [32, 64],
            "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"], "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
            "layers_per_block": 1, "attention_head_dim": 8, "cross_attention_dim": 16, "norm_num_groups": 32})
        schedule = NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
        torch.manual_seed(1)   # the published UNet3Ds' own initialisation (ours mirrors it), then briefly trained
        unet3d = briefly_trained(SpaceTimeUNet(cfg), schedule, 16, TRAINING_STEPS)
        yield "unet3d-eps", LoadedModel("unet3d", "decoder", "unet3d-diffusers", unet3d, schedule, "eps"), 16, 0
        pixel = SpaceTimeUNet(UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True),
                                         context_dim=24, norm_num_groups=8, attention_head_dim=16, image_embed_dim=12,
                                         image_embed_tokens=2)).eval()
        randomise(pixel, 2)
        yield "pixel-v", LoadedModel("pixel", "decoder", "mav", pixel, NoiseSchedule("cosine"), "v"), 24, 12
        shipped = load_model(REPO + "/mav_core/weights/mav-tiny/decoder.safetensors", dtype=torch.float32)
        yield "mav-tiny-v", shipped, shipped.config.context_dim, shipped.config.image_embed_dim

    class GivenNoise:
        def __init__(self, noise): self.noise, self.seed = noise, 0
        def generate_noise(self, latent): return self.noise.clone()

    def as64(d):
        return {k: v.double() for k, v in d.items()}

    def frames_of(video):   # our [1, C, F, h, w] -> the bridge's LATENT layout, frames in the batch [F, C, h, w]
        return video[0].transpose(0, 1)

    def video_of(frames):   # the bridge's [F, C, h, w] -> our [1, C, F, h, w]
        return frames.transpose(0, 1)[None]

    report = {}
    reference_kernels = fused.inference
    for name, decoder, width, embed_dim in decoders():
        g = torch.Generator().manual_seed(3)
        ctx, uctx = torch.randn(1, 5, width, generator=g), torch.randn(1, 5, width, generator=g)
        embed = torch.randn(1, embed_dim, generator=g) if embed_dim else None
        fps = 6.0
        cond = {"context": ctx, "fps": torch.tensor([fps])}
        uncond = {"context": uctx, "fps": cond["fps"]}
        positive, negative = [[ctx, {}]], [[uctx, {}]]
        if embed is not None:
            cond["image_embed"], uncond["image_embed"] = embed, torch.zeros_like(embed)
            positive[0][1]["mav_image_embed"] = embed
        model, latent = model_bridge.ModelBridge().bridge(decoder, 3, 16, 16, 1, fps)
        shape = tuple(video_of(latent["samples"]).shape)
        scale = model.get_model_object("latent_format").scale_factor
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(3.0)
        # float64: the same decoder in double precision (our layers' reference path: the hand-fused kernels are
        # float32/half only) through our sampler's own pieces and through the host, to see the maths alone
        decoder64 = dataclasses.replace(decoder, module=copy.deepcopy(decoder.module).double())
        model64, latent64 = model_bridge.ModelBridge().bridge(decoder64, 3, 16, 16, 1, fps)
        latent64 = {"samples": latent64["samples"].double()}
        guider64 = comfy.samplers.CFGGuider(model64)
        guider64.set_conds([[ctx.double(), {k: v.double() for k, v in positive[0][1].items()}]], [[uctx.double(), {}]])
        guider64.set_cfg(3.0)
        for spacing in ("trailing", "karras"):
            ours = sample_unet(decoder, shape, cond, uncond, SamplingOptions(seed=7, steps=4, cfg=3.0, sampler="ddim", schedule=spacing))
            sigmas = sampling_sigmas(decoder.schedule, 4, 1.0, spacing)
            noise = seeded_noise(shape, 7)
            # baseline: how far our own sampler moves when its start noise moves by one part in 10^7
            guided = CFGDenoiser(Denoiser(decoder.module, decoder.schedule, decoder.prediction), cond, uncond, 3.0)
            nudged = core_sample("ddim", guided, noise * (1 + 1e-7) * float(sigmas[0]), sigmas)
            fused.inference = lambda: False
            guided64 = CFGDenoiser(Denoiser(decoder64.module, decoder.schedule, decoder.prediction), as64(cond), as64(uncond), 3.0)
            ours64 = core_sample("ddim", guided64, noise.double() * float(sigmas[0]), sigmas)
            for host_sampler in ("ddim", "euler"):
                out64, _ = SamplerCustomAdvanced().sample(GivenNoise(frames_of(noise).double()), guider64,
                                                          comfy.samplers.sampler_object(host_sampler), sigmas.double(), latent64)
                fused.inference = reference_kernels
                out, _ = SamplerCustomAdvanced().sample(GivenNoise(frames_of(noise)), guider, comfy.samplers.sampler_object(host_sampler),
                                                        sigmas, latent)
                out, out64 = {"samples": video_of(out["samples"])}, {"samples": video_of(out64["samples"])}
                fused.inference = lambda: False
                report[f"{name}/{spacing}/{host_sampler}"] = {
                    "fp32_max_abs_diff": float((out["samples"].float() * scale - ours).abs().max()),
                    "fp64_max_abs_diff": float((out64["samples"] * scale - ours64).abs().max()),
                    "fp32_ours_vs_nudged_noise": float((nudged - ours).abs().max()),
                    "fp32_vs_fp64": float((ours - ours64).abs().max()),
                    "host_fp32_vs_ours_fp64": float((out["samples"].double() * scale - ours64).abs().max()),
                    "ours_std": float(ours.std()), "ours_max": float(ours.abs().max()), "sigma0": float(sigmas[0])}
            fused.inference = reference_kernels
        # the host's KSampler and its schedulers on the bridged MODEL
        runs = {}
        for scheduler in ("normal", "karras", "exponential"):
            (out,) = host_nodes.common_ksampler(model, 5, 4, 3.0, "euler", scheduler, positive, negative, latent)
            runs[scheduler] = out["samples"]
        report[f"{name}/ksampler"] = {
            "finite": all(bool(torch.isfinite(v).all()) for v in runs.values()),
            "karras_vs_normal": float((runs["karras"] - runs["normal"]).abs().max()),
            "exponential_vs_normal": float((runs["exponential"] - runs["normal"]).abs().max())}
        # the host's LoraLoaderModelOnly on the bridged MODEL: a kohya file in our names
        params = dict(decoder.module.named_parameters())
        target = next(k for k in params if k.endswith("attn2.to_q.weight"))
        w = params[target].detach().clone()
        up, down = torch.randn(w.shape[0], 2, generator=g), torch.randn(2, w.shape[1], generator=g)
        kohya = "lora_unet_" + target[:-len(".weight")].replace(".", "_")
        lora = {kohya + ".lora_up.weight": up, kohya + ".lora_down.weight": down, kohya + ".alpha": torch.tensor(2.0)}
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 0.5, 0.0)
        comfy.model_management.load_models_gpu([patched])
        merged = dict(patched.model.diffusion_model.named_parameters())[target].detach().clone()
        report[f"{name}/decoder_untouched_while_patched"] = bool(torch.equal(dict(decoder.module.named_parameters())[target].detach(), w))
        report[f"{name}/host_lora"] = {"max_abs_diff": float((merged - (w + 0.5 * up @ down)).abs().max()),
                                       "patches": len(patched.patches)}
        comfy.model_management.unload_all_models()
        report[f"{name}/weights_restored"] = bool(torch.equal(dict(decoder.module.named_parameters())[target].detach(), w))
    print("REPORT " + json.dumps(report))
""")


@pytest.fixture(scope="module")
def report(comfy_host_paths):
    script = f"REPO = {json.dumps(str(REPO_ROOT))}\nTRAINING_STEPS = {TRAINING_STEPS}\n" + SCRIPT
    return comfy_host_paths.run_report(script, timeout=900)


DECODERS = ("unet3d-eps", "pixel-v", "mav-tiny-v")
CASES = [f"{d}/{s}/{h}" for d in DECODERS for s in ("trailing", "karras") for h in ("ddim", "euler")]
# fp32 cases where the two samplers' float32 rounding alone already differs by more than 1e-4 (docs/lora.md,
# the MODEL bridge): measured, kept visible as strict xfails. On the cosine schedule's trailing sigmas the host's
# Euler step x + d (s1 - s0) from s0 = 2.03e4 (the table's top entry, t = 999) to s1 = 1.75 loses ~ulp(2e4)
# in float32. A smaller top sigma declared to both samplers was measured and not taken: replacing t = 999's
# 2.03e4 by 5000 / 1283 / 700 brings host vs ours to 8.0e-4 / 1.8e-4 / 1.1e-4 (pixel) and 1.9e-4 / 3.4e-5 /
# 2.3e-5 (MAV-Tiny) but changes MAV-Tiny's own 25-step videos by up to 3 / 16 / 30 levels of 255.
CANCELS = "the host's Euler step x + d (s1 - s0) cancels in float32 from s0 = 2.03e4 (cosine, trailing)"
FP32_BEYOND_1E4 = {case: CANCELS for case in ("pixel-v/trailing/ddim", "pixel-v/trailing/euler",
                                              "mav-tiny-v/trailing/ddim", "mav-tiny-v/trailing/euler")}


@pytest.mark.parametrize("case", CASES)
def test_host_sampler_on_the_bridged_model_equals_ours_in_fp64(report, case):
    """The maths: in float64 the host's DDIM / Euler on the bridged MODEL give our sampler's frames."""
    r = report[case]
    assert r["ours_std"] > 0.05, "our sample is flat: nothing was compared"
    assert r["fp64_max_abs_diff"] <= TOLERANCE, r


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=FP32_BEYOND_1E4[c], strict=True))
                                  if c in FP32_BEYOND_1E4 else c for c in CASES])
def test_host_sampler_on_the_bridged_model_equals_ours_in_fp32(report, case):
    assert report[case]["fp32_max_abs_diff"] <= TOLERANCE, report[case]


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("unet3d")])
def test_host_fp32_result_is_as_exact_as_ours(report, case):
    """The host's float32 result on the UNet3D is within our own float32 error (vs float64) plus the model's
    float32 sensitivity (our sampler's move when its start noise moves by one part in 10^7) of the float64
    answer: as exact as ours."""
    r = report[case]
    assert r["host_fp32_vs_ours_fp64"] <= r["fp32_vs_fp64"] + r["fp32_ours_vs_nudged_noise"], r


@pytest.mark.parametrize("decoder", DECODERS)
def test_host_ksampler_schedulers_run_and_differ(report, decoder):
    case = report[f"{decoder}/ksampler"]
    assert case["finite"]
    assert case["karras_vs_normal"] > 1e-3 and case["exponential_vs_normal"] > 1e-3, case


@pytest.mark.parametrize("decoder", DECODERS)
def test_host_lora_loader_patches_the_bridged_model_by_our_names(report, decoder):
    case = report[f"{decoder}/host_lora"]
    assert case["patches"] == 1 and case["max_abs_diff"] <= 1e-5, case
    assert report[f"{decoder}/decoder_untouched_while_patched"], "the host's LoRA patch reached the decoder itself"
    assert report[f"{decoder}/weights_restored"], "unloading did not restore the decoder's own weights"


# --- the node in a running server ---------------------------------------------------------------------

def _bridge_graph(seed: int, prefix: str) -> dict:
    """Bundle Loader (mav-tiny) -> Model Bridge -> the host's KSampler (euler, karras) -> SaveLatent."""
    return {
        "1": {"class_type": "MakeAVideoBundleLoader", "inputs": {"folder": "mav-tiny"}},
        "2": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": "a red circle on a black background"}},
        "3": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": ""}},
        "4": {"class_type": "MakeAVideoPrior", "inputs": {"prior": ["1", 1], "conditioning": ["2", 0], "seed": 0, "steps": 2, "cfg": 1.0}},
        "5": {"class_type": "MakeAVideoModelBridge", "inputs": {"decoder": ["1", 2], "frames": 4, "width": 32, "height": 32,
                                                                "batch_size": 1, "fps": 4.0}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "seed": seed, "steps": 3, "cfg": 4.0, "sampler_name": "euler",
                                                   "scheduler": "karras", "positive": ["4", 0], "negative": ["3", 0],
                                                   "latent_image": ["5", 1], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
    }


def _run_and_log(server, api) -> str:
    mark = len(server.log_text())
    history = server.run_prompt(api, timeout=300)
    assert history_status(history) == "success", (history.get("status"), server.log_tail(40))
    return server.log_text()[mark:]


def test_bridge_node_into_the_hosts_ksampler_in_a_server(comfy_server):
    """The bridged MODEL samples in the host's KSampler, and the host's model management owns it: loaded
    for the run, kept loaded for the next one, unloaded by /free (loaded again after)."""
    from safetensors.torch import load_file
    assert comfy_server.pack_import_errors() == [], comfy_server.log_tail(80)
    assert comfy_server.free(unload_models=True, free_memory=False) == 200
    time.sleep(1.0)   # the host's prompt worker handles /free asynchronously
    assert "Requested to load MakeAVideoModel" in _run_and_log(comfy_server, _bridge_graph(1, "latents/bridge_a"))
    files = sorted(comfy_server.output_dir.glob("latents/bridge_a*.latent"))
    assert files, list(comfy_server.output_dir.rglob("*"))
    samples = load_file(str(files[-1]))["latent_tensor"]
    assert tuple(samples.shape) == (4, 3, 32, 32)   # frames in the batch
    assert bool(samples.isfinite().all()) and samples.std() > 0.05
    assert "Requested to load MakeAVideoModel" not in _run_and_log(comfy_server, _bridge_graph(2, "latents/bridge_b")), \
        "the loaded MODEL was not kept between prompts"
    assert comfy_server.free(unload_models=True, free_memory=False) == 200
    time.sleep(1.0)
    assert "Requested to load MakeAVideoModel" in _run_and_log(comfy_server, _bridge_graph(3, "latents/bridge_c")), \
        "/free did not unload the bridged MODEL"
