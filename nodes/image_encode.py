"""MakeAVideo Image Encode: IMAGE -> CONDITIONING carrying the image embedding the decoders and ↑F take,
from the family's image encoder (the image tower of the text encoder file), as the paper conditions image
animation on the input image's own embedding."""
from __future__ import annotations

import torch

from ..mav_core.inference import encode_prompt, frames_to_video
from ..mav_core.inference.text import encode_images
from . import host
from .common import CATEGORY, IMAGE_EMBED_KEY, TEXT, require_frames, require_model


class ImageEncode:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    DESCRIPTION = ("Encodes images with the family's image encoder into the image embedding the decoder and the "
                   "Frame Interpolator are conditioned on (one image: its embedding; several: the normalised mean "
                   "of theirs). Added to each entry of `conditioning`, or, without it, to the empty prompt's "
                   "encoding. Connect it to the Frame Interpolator's positive to animate an image as in the paper.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text_encoder": (TEXT,), "images": ("IMAGE",)},
                "optional": {"conditioning": ("CONDITIONING",)}}

    def encode(self, text_encoder, images, conditioning=None):
        model = require_model(text_encoder, "text_encoder", ("text",))
        frames = require_frames(images, "images")
        if frames.shape[0] == 0 or min(frames.shape[1:3]) < 1:
            raise ValueError(f"images: expected at least one image, got a batch of shape {tuple(frames.shape)}")
        if conditioning is not None and (not isinstance(conditioning, list) or not conditioning):
            raise ValueError("conditioning: expected a non-empty CONDITIONING list (connect a Text Encode node) "
                             "or leave it unconnected")
        out = host.intermediate_device()
        with host.models_on_device(model):
            embed = encode_images(model, frames_to_video(frames)).to(out, torch.float32)
            if conditioning is None:
                tokens, pooled = encode_prompt(model, [""])
                conditioning = [[tokens.to(out, torch.float32), {"pooled_output": pooled.to(out, torch.float32)}]]
        result = []
        for entry in conditioning:
            try:
                tokens, extras = entry[0], dict(entry[1])
            except (TypeError, IndexError, KeyError, ValueError):
                raise ValueError("conditioning: not a CONDITIONING list of [tensor, dict] entries") from None
            if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
                raise ValueError("conditioning: not a CONDITIONING list of [tensor, dict] entries")
            result.append([tokens, {**extras, IMAGE_EMBED_KEY: embed.expand(tokens.shape[0], -1)}])
        return (result,)


NODE_CLASS_MAPPINGS = {"MakeAVideoImageEncode": ImageEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoImageEncode": "MakeAVideo Image Encode"}
