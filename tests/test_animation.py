"""Image animation with D^t: known frames put into every denoised estimate (diffusion.KnownFrames), the
family caption nearest an image (describe_images), the Sampler's start_images and Image Encode's
prompt_from_image, with the shipped MAV-Tiny decoder and text encoder."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mav_core.data.world import Scene, caption, render_scenes
from mav_core.diffusion import KnownFrames
from mav_core.errors import InputError
from mav_core.inference import Guides, SamplingOptions, VideoShape, encode_prompt, frames_to_video, generate_video
from mav_core.inference.frame_masks import extrapolation_mask
from mav_core.inference.text import describe_images, encode_images, family_captions
from mav_core.io.loader import load_model
from mav_core.models import family

START = Scene(shape="square", colour="yellow", size="large", background="gray", x=0.4, y=0.45)
CORNER = Scene(shape="square", colour="yellow", size="large", background="gray", x=0.3, y=0.7)


@pytest.fixture(scope="module")
def models():
    return (load_model(family.WEIGHTS_DIR / "decoder.safetensors"),
            load_model(family.WEIGHTS_DIR / "text.safetensors"))


def _image(scene: Scene = START) -> torch.Tensor:
    """IMAGE [1, H, W, 3] in 0..1."""
    return torch.from_numpy(render_scenes([scene], family.BASE_SIZE)).float() / 255


def _conditioning(text, image_video):
    tokens, _ = encode_prompt(text, describe_images(text, image_video))
    empty, _ = encode_prompt(text, [""])
    embed = encode_images(text, image_video)
    return {"context": tokens, "image_embed": embed}, {"context": empty, "image_embed": torch.zeros_like(embed)}


def test_known_frames_replace_only_the_masked_frames():
    known = torch.randn(2, 3, 4, 5, 5)
    estimate = torch.randn(2, 3, 4, 5, 5)
    pinned = KnownFrames(lambda x, sigma: estimate, known, torch.tensor([True, False, True, False]), guidance=0)
    out = pinned(torch.zeros(2, 3, 4, 5, 5), torch.ones(2))
    assert torch.equal(out[:, :, [0, 2]], known[:, :, [0, 2]])
    assert torch.equal(out[:, :, [1, 3]], estimate[:, :, [1, 3]])
    per_clip = KnownFrames(lambda x, sigma: estimate, known, torch.tensor([[True, False, False, False],
                                                                          [False, False, False, True]]),
                          guidance=0)(None, None)
    assert torch.equal(per_clip[0, :, 0], known[0, :, 0]) and torch.equal(per_clip[0, :, 3], estimate[0, :, 3])
    assert torch.equal(per_clip[1, :, 3], known[1, :, 3]) and torch.equal(per_clip[1, :, 0], estimate[1, :, 0])
    with pytest.raises(ValueError, match="known_mask must be"):
        KnownFrames(lambda x, s: x, known, torch.ones(3, dtype=torch.bool))
    # reconstruction guidance: the gradient of the known frame's error moves the unknown frame too
    mixing = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    def model(x, sigma):   # noqa: E306  a "temporal layer": each frame's estimate mixes both frames
        return torch.einsum("gf,bcfhw->bcghw", mixing, x)
    target = torch.zeros(1, 1, 2, 1, 1)
    x = torch.ones(1, 1, 2, 1, 1)
    guided = KnownFrames(model, target, torch.tensor([True, False]), guidance=0.1)(x, torch.ones(1))
    # error = (0.5 x0 + 0.5 x1)^2 -> d/dx = 2 * 1 * (0.5, 0.5) = (1, 1) at x = 1: frame 1 is 1.0 - 0.1 * 1
    assert guided[0, 0, 0].item() == 0.0 and abs(guided[0, 0, 1].item() - 0.9) < 1e-6


def test_decoder_animates_the_start_image(models):
    """The first frame is the image exactly; the object of the next frame stays within 4 px of the image's
    (an off-centre object, which D^t alone draws near the centre: the same seed without the known frame puts
    it more than twice as far), and keeps its colour (shapes: measured by `eval --apps`)."""
    from mav_core.data.detect import detect
    from mav_core.eval.metrics import to_uint8
    from mav_core.inference import video_to_frames
    decoder, text = models
    image = frames_to_video(_image(CORNER))          # [1, 3, 1, H, W] in -1..1
    cond, uncond = _conditioning(text, image)
    frames = 6
    known = image.new_zeros(1, 3, frames, *image.shape[-2:])
    known[:, :, :1] = image
    shape = VideoShape(frames, *image.shape[-2:], 8.0)
    options = SamplingOptions(seed=3, steps=20, cfg=4.0)
    out = generate_video(decoder, cond, uncond, shape, options, Guides(known=known, known_mask=extrapolation_mask(frames, 1)))
    free = generate_video(decoder, cond, uncond, shape, options)
    assert torch.equal(out[:, :, 0], image[:, :, 0])
    ref = detect(to_uint8(video_to_frames(image))[0])
    dets = [detect(f) for f in to_uint8(video_to_frames(out))[1:]]
    loose = detect(to_uint8(video_to_frames(free))[1])
    step = np.hypot(*np.subtract(dets[0].centroid, ref.centroid))
    assert step < 4.0 and step < 0.5 * np.hypot(*np.subtract(loose.centroid, ref.centroid)), \
        "the known frame did not steer its neighbour"
    assert all(d.colour == ref.colour for d in dets)


def test_known_frames_are_checked(models):
    decoder, text = models
    image = frames_to_video(_image())
    cond, uncond = _conditioning(text, image)
    shape = VideoShape(2, *image.shape[-2:], 8.0)
    with pytest.raises(InputError, match="^known.*all 2 frames are known"):
        generate_video(decoder, cond, uncond, shape, SamplingOptions(steps=1),
                       Guides(known=image.repeat(1, 1, 2, 1, 1), known_mask=torch.ones(2, dtype=torch.bool)))
    with pytest.raises(InputError, match=r"^known.*frames of shape \(1, 3, 2, 16, 16\)"):
        generate_video(decoder, cond, uncond, shape, SamplingOptions(steps=1),
                       Guides(known=torch.zeros(1, 3, 2, 16, 16), known_mask=extrapolation_mask(2, 1)))


def test_describe_images_names_the_scene(models):
    """A train-split scene's caption is found exactly among the family's 144 captions."""
    _, text = models
    assert len(family_captions(text)) == 144 and caption(START) in family_captions(text)
    scenes = [START, Scene(shape="circle", colour="red", size="large", background="black")]
    video = torch.cat([frames_to_video(_image(s)) for s in scenes])
    assert describe_images(text, video) == [caption(s) for s in scenes]
    with pytest.raises(ValueError, match="needs the MAV family"):
        describe_images(dataclasses.replace(text, family="open_clip"), video)


def test_sampler_start_images_node(pack, models):
    decoder, text = models
    nodes = pack.NODE_CLASS_MAPPINGS
    image = _image()
    positive, caption_text = nodes["MakeAVideoImageEncode"]().encode(text, image, prompt_from_image=True)
    assert caption_text == caption(START)
    spelled = nodes["MakeAVideoTextEncode"]().encode(text, caption_text)[0]
    assert torch.equal(positive[0][0], spelled[0][0])
    negative = nodes["MakeAVideoTextEncode"]().encode(text, "")[0]
    sampler = nodes["MakeAVideoSampler"]()
    args = dict(seed=1, steps=3, cfg=4.0, sampler_name="ddim", frames=5, fps=8.0, width=64, height=64, denoise=1.0)
    frames, fps, latent = sampler.sample(decoder, positive, negative, start_images=image, **args)
    assert frames.shape == (5, *image.shape[1:3], 3) and latent is None   # size from the start image
    assert torch.allclose(frames[0], image[0], atol=1e-6)
    with pytest.raises(ValueError, match="^start_images: 5 frames given and frames=5"):
        sampler.sample(decoder, positive, negative, start_images=image.repeat(5, 1, 1, 1), **args)
    plain, empty_caption = nodes["MakeAVideoImageEncode"]().encode(text, image)
    assert empty_caption == "" and torch.equal(plain[0][0], negative[0][0])


def test_reconstruction_guidance_runs_inside_inference_mode(models):
    """A host samples under torch.inference_mode: the guidance still takes its gradient and gives the same
    video as outside it; weights made inside inference mode turn it off with a warning, not an error."""
    decoder, text = models
    image = frames_to_video(_image(CORNER))
    cond, uncond = _conditioning(text, image)
    known = image.new_zeros(1, 3, 3, *image.shape[-2:])
    known[:, :, :1] = image
    args = (VideoShape(3, *image.shape[-2:], 8.0), SamplingOptions(seed=5, steps=2, cfg=4.0),
            Guides(known=known, known_mask=extrapolation_mask(3, 1)))
    outside = generate_video(decoder, cond, uncond, *args)
    with torch.inference_mode():
        inside = generate_video(decoder, cond, uncond, *args)
        made_inside = load_model(family.WEIGHTS_DIR / "decoder.safetensors")
        with torch.no_grad():
            for p in made_inside.module.parameters():
                p.data = p.data.clone()            # inference tensors now
        with pytest.warns(RuntimeWarning, match="reconstruction guidance is off"):
            plain = generate_video(made_inside, cond, uncond, *args)
    # inside is the guided video (kernels may differ in the last digits), not the unguided one
    assert (inside - outside).abs().max() < 0.1 * (plain - outside).abs().max()
    assert torch.equal(plain[:, :, 0], image[:, :, 0])
