"""MakeAVideo Image Encode: IMAGE -> CONDITIONING carrying the image embedding the decoders and ↑F take,
from the family's image encoder (the image tower of the text encoder file), as the paper conditions image
animation on the input image's own embedding."""
from __future__ import annotations

import torch

from ..mav_core.inference import encode_prompt, frames_to_video
from ..mav_core.inference.text import encode_images, nearest_captions
from . import host
from .common import CATEGORY, IMAGE_EMBED_KEY, TEXT, require_frames, require_model


class ImageEncode:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "caption")
    DESCRIPTION = ("Encodes images with the family's image encoder into the image embedding the decoder and the "
                   "Frame Interpolator are conditioned on (one image: its embedding; several: the normalised mean "
                   "of theirs). Added to each entry of `conditioning`, or, without it, to the empty prompt's "
                   "encoding -- or, with prompt_from_image, to the encoding of the family caption nearest the "
                   "image (zero-shot, returned as `caption`): the decoder reads shapes from text far better than "
                   "from the embedding. Image animation: this into the Sampler's positive with the image as its "
                   "start_images, or into the Frame Interpolator's positive (extrapolate) as in the paper.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text_encoder": (TEXT,), "images": ("IMAGE",)},
                "optional": {"conditioning": ("CONDITIONING",),
                             "prompt_from_image": ("BOOLEAN", {"default": False, "tooltip":
                                                   "without a conditioning input: the prompt is the family caption "
                                                   "nearest the image instead of the empty prompt (MAV family)"})}}

    def encode(self, text_encoder, images, conditioning=None, prompt_from_image=False):
        model = require_model(text_encoder, "text_encoder", ("text",))
        frames = require_frames(images, "images")
        if frames.shape[0] == 0 or min(frames.shape[1:3]) < 1:
            raise ValueError(f"images: expected at least one image, got a batch of shape {tuple(frames.shape)}")
        if conditioning is not None and (not isinstance(conditioning, list) or not conditioning):
            raise ValueError("conditioning: expected a non-empty CONDITIONING list (connect a Text Encode node) "
                             "or leave it unconnected")
        out = host.intermediate_device()
        with host.models_on_device(model):
            embed = encode_images(model, frames_to_video(frames))
            caption = ""
            if conditioning is None and prompt_from_image:
                try:
                    caption = nearest_captions(model, embed)[0]
                except ValueError as e:
                    raise ValueError(f"prompt_from_image: {e}") from None
            if conditioning is None:
                tokens, pooled = encode_prompt(model, [caption])
                conditioning = [[tokens.to(out, torch.float32), {"pooled_output": pooled.to(out, torch.float32)}]]
            embed = embed.to(out, torch.float32)
        result = []
        for entry in conditioning:
            try:
                tokens, extras = entry[0], dict(entry[1])
            except (TypeError, IndexError, KeyError, ValueError):
                raise ValueError("conditioning: not a CONDITIONING list of [tensor, dict] entries") from None
            if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
                raise ValueError("conditioning: not a CONDITIONING list of [tensor, dict] entries")
            result.append([tokens, {**extras, IMAGE_EMBED_KEY: embed.expand(tokens.shape[0], -1)}])
        return (result, caption)


NODE_CLASS_MAPPINGS = {"MakeAVideoImageEncode": ImageEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoImageEncode": "MakeAVideo Image Encode"}
