"""MakeAVideo Image Encode (host-free): IMAGE -> CONDITIONING with the family's image embedding, with the
shipped MAV-Tiny text/image encoder, and the Frame Interpolator conditioned on it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mav_core.data.world import Scene, caption, render_scenes
from mav_core.inference import frames_to_video
from mav_core.models import family

ROOT = Path(__file__).resolve().parents[1]
KEY = "mav_image_embed"


@pytest.fixture(scope="module")
def text_encoder(pack):
    return pack.loaders.TextEncoderLoader().load("mav-tiny/text.safetensors")[0]


@pytest.fixture(scope="module")
def interpolator(pack):
    return pack.loaders.InterpolatorLoader().load("mav-tiny/interpolator.safetensors")[0]


def _image(colour="red", shape="circle", background="black", x=0.5, y=0.5) -> torch.Tensor:
    """A rendered scene as an IMAGE batch [1, H, W, 3] in 0..1."""
    scene = Scene(shape=shape, colour=colour, size="large", background=background, x=x, y=y)
    return torch.from_numpy(render_scenes([scene], family.BASE_SIZE)).float() / 255, scene


def _encode(pack, text_encoder, images, conditioning=None):
    return pack.NODE_CLASS_MAPPINGS["MakeAVideoImageEncode"]().encode(text_encoder, images, conditioning)[0]


def test_registered_with_its_display_name(pack):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["MakeAVideoImageEncode"] == "MakeAVideo Image Encode"
    spec = pack.NODE_CLASS_MAPPINGS["MakeAVideoImageEncode"].INPUT_TYPES()
    assert spec["required"]["images"] == ("IMAGE",) and spec["optional"]["conditioning"] == ("CONDITIONING",)


def test_embedding_is_the_encoders_and_matches_the_images_caption(pack, text_encoder):
    """Without a conditioning input: the empty prompt's tokens plus the unit image embedding, equal to the
    family's image encoder on that image; it sits nearer its own caption's text embedding than any other
    colour's or shape's (the joint space the prior samples from)."""
    images, scene = _image("red", "circle", "black")
    cond = _encode(pack, text_encoder, images)
    assert len(cond) == 1
    tokens, extras = cond[0]
    empty = pack.NODE_CLASS_MAPPINGS["MakeAVideoTextEncode"]().encode(text_encoder, "")[0]
    assert torch.equal(tokens, empty[0][0]) and torch.equal(extras["pooled_output"], empty[0][1]["pooled_output"])
    embed = extras[KEY]
    assert embed.shape == (1, text_encoder.module.config.embed_dim) and embed.dtype == torch.float32
    assert torch.allclose(embed.norm(dim=-1), torch.ones(1), atol=1e-4)
    with torch.no_grad():
        direct = text_encoder.module.encode_image(frames_to_video(images)[:, :, 0]).float()
    assert torch.allclose(embed, direct, atol=1e-4)
    others = [caption(Scene(shape=s, colour=c, size="large", background="black"))
              for c, s in (("red", "circle"), ("blue", "circle"), ("green", "circle"), ("red", "square"), ("red", "triangle"))]
    with torch.no_grad():
        _, pooled = text_encoder.module.encode_text(others)
    sims = (embed @ pooled.float().t())[0]
    assert int(sims.argmax()) == 0, (others, sims)


def test_several_images_give_the_unit_mean_and_conditioning_keeps_its_text(pack, text_encoder):
    a, _ = _image("red", "circle", "black", x=0.3)
    b, _ = _image("red", "circle", "black", x=0.7)
    ea, eb = _encode(pack, text_encoder, a)[0][1][KEY], _encode(pack, text_encoder, b)[0][1][KEY]
    both = _encode(pack, text_encoder, torch.cat([a, b]))[0][1][KEY]
    mean = torch.nn.functional.normalize(ea + eb, dim=-1)
    assert torch.allclose(both, mean, atol=1e-4)
    assert (ea - eb).abs().max() > 1e-3   # the two images differ
    prompt = pack.NODE_CLASS_MAPPINGS["MakeAVideoTextEncode"]().encode(text_encoder, "a red circle on a black background")[0]
    prompt = prompt + [[prompt[0][0] * 0.5, {"pooled_output": prompt[0][1]["pooled_output"], "strength": 0.3}]]
    out = _encode(pack, text_encoder, a, prompt)
    assert len(out) == 2
    for (tokens, extras), (t0, e0) in zip(out, prompt):
        assert tokens is t0 and extras["pooled_output"] is e0["pooled_output"]
        assert torch.equal(extras[KEY], ea) and KEY not in e0   # the input conditioning is not modified
    assert out[1][1]["strength"] == 0.3


def test_frame_interpolator_is_conditioned_on_the_embedding(pack, text_encoder, interpolator):
    """Image animation as in the shipped workflow: the same image, seed and steps, with and without the
    Image Encode positive give different animations that both start at the input image."""
    images, _ = _image("green", "square", "gray")
    run = pack.NODE_CLASS_MAPPINGS["MakeAVideoFrameInterpolator"]().run
    plain, _ = run(interpolator, images, fps=4.0, multiplier=2, mode="extrapolate", seed=0, steps=3, extra_frames=3)
    cond = _encode(pack, text_encoder, images)
    guided, _ = run(interpolator, images, fps=4.0, multiplier=2, mode="extrapolate", seed=0, steps=3,
                    positive=cond, extra_frames=3)
    assert plain.shape == guided.shape == (4, family.BASE_SIZE, family.BASE_SIZE, 3)
    assert torch.allclose(guided[0], images[0], atol=1e-6)
    assert (guided[1:] - plain[1:]).abs().max() > 1e-3


def test_bad_inputs_name_the_input(pack, text_encoder, interpolator):
    images, _ = _image()
    node = pack.NODE_CLASS_MAPPINGS["MakeAVideoImageEncode"]()
    with pytest.raises(ValueError, match=r"^text_encoder: got a 'interpolator' model"):
        node.encode(interpolator, images)
    with pytest.raises(ValueError, match=r"^images: expected an IMAGE batch"):
        node.encode(text_encoder, torch.rand(32, 32, 3))
    with pytest.raises(ValueError, match=r"^images: expected at least one image"):
        node.encode(text_encoder, torch.rand(0, 32, 32, 3))
    with pytest.raises(ValueError, match=r"^images: .*finite"):
        node.encode(text_encoder, torch.full((1, 8, 8, 3), float("nan")))
    with pytest.raises(ValueError, match=r"^conditioning: "):
        node.encode(text_encoder, images, [])
    with pytest.raises(ValueError, match=r"^conditioning: "):
        node.encode(text_encoder, images, [["tokens", {}]])


def test_image_animation_workflow_feeds_the_decoder_the_image_and_its_caption():
    api = json.loads((ROOT / "workflows" / "image_animation_api.json").read_text())
    encode = next(k for k, n in api.items() if n["class_type"] == "MakeAVideoImageEncode")
    sampler = next(n for n in api.values() if n["class_type"] == "MakeAVideoSampler")
    assert sampler["inputs"]["positive"] == [encode, 0] and api[encode]["inputs"]["prompt_from_image"] is True
    assert sampler["inputs"]["start_images"] == api[encode]["inputs"]["images"]   # the image it animates
    assert api[sampler["inputs"]["decoder"][0]]["inputs"]["ckpt_name"] == f"{family.WEIGHTS_DIR.name}/decoder.safetensors"


@pytest.mark.parametrize("stem", ["image_interpolation"])
def test_workflows_feed_the_interpolator_the_image_embedding(stem):
    api = json.loads((ROOT / "workflows" / f"{stem}_api.json").read_text())
    encode = [k for k, n in api.items() if n["class_type"] == "MakeAVideoImageEncode"]
    assert len(encode) == 1
    interp = next(n for n in api.values() if n["class_type"] == "MakeAVideoFrameInterpolator")
    assert interp["inputs"]["positive"] == [encode[0], 0]
    assert api[encode[0]]["inputs"]["images"] == interp["inputs"]["images"]   # the images it animates
    loader = api[api[encode[0]]["inputs"]["text_encoder"][0]]
    assert loader["class_type"] == "MakeAVideoTextEncoderLoader"
    assert loader["inputs"]["ckpt_name"] == f"{family.WEIGHTS_DIR.name}/text.safetensors"


def test_animation_scores_see_colour_shape_and_motion():
    """The eval's per-animation scores on rendered stand-ins: the input's object sliding right keeps colour and
    shape in every new frame and moves by the slide; another colour, then another shape, is not kept."""
    from mav_core.eval.apps import _animation_scores
    start = Scene(shape="square", colour="yellow", size="large", background="gray", x=0.35, y=0.5)
    img = render_scenes([start], family.BASE_SIZE)
    slide = render_scenes([Scene(**{**start.__dict__, "x": 0.35 + 0.02 * i}) for i in range(6)], family.BASE_SIZE)
    kept = _animation_scores(slide, img)
    assert kept["colour"] == kept["shape"] == kept["both"] == 1.0 and kept["psnr"] == float("inf")
    assert abs(kept["move"] - 0.1 * family.BASE_SIZE) < 1.0
    recoloured = np.concatenate([img, render_scenes([Scene(**{**start.__dict__, "colour": "blue"})] * 5, family.BASE_SIZE)])
    scores = _animation_scores(recoloured, img)
    assert scores["colour"] == 0.0 and scores["both"] == 0.0 and scores["shape"] == 1.0
    reshaped = np.concatenate([img, render_scenes([Scene(**{**start.__dict__, "shape": "circle"})] * 5, family.BASE_SIZE)])
    scores = _animation_scores(reshaped, img)
    assert scores["shape"] == 0.0 and scores["colour"] == 1.0


def test_eval_animation_reports_both_settings():
    from mav_core.eval.apps import eval_animation
    from mav_core.inference.pipeline import MakeAVideo
    report = eval_animation(MakeAVideo.load(interpolator="diffusion"), n=1, frames=3)
    for setting in ("decoder_with_image_encode", "decoder_without_image_encode", "with_embed", "without_embed"):
        assert report[f"{setting}_first_frame_psnr_db"] == float("inf")   # the input is the first frame
        for k in ("colour_kept_share", "shape_kept_share", "colour_and_shape_kept_share", "moving_share"):
            assert 0.0 <= report[f"{setting}_{k}"] <= 1.0
