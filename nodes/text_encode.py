"""MakeAVideo Text Encode: prompt -> CONDITIONING [[tokens [1, L, W], {"pooled_output": [1, E]}]]."""
from __future__ import annotations

import logging

import torch

from ..mav_core.inference import encode_prompt, prompt_warnings
from . import host
from .common import CATEGORY, TEXT, require_model

log = logging.getLogger(__name__)


class TextEncode:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    DESCRIPTION = ("Encodes a prompt with the MAV text encoder: token features plus the pooled embedding. Words the "
                   "encoder does not know, words past its token limit and backgrounds the family never saw are "
                   "named in a warning in the server log.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text_encoder": (TEXT,),
                             "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": ""})}}

    def encode(self, text_encoder, text):
        model = require_model(text_encoder, "text_encoder", ("text",))
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        for warning in prompt_warnings(model, text):
            log.warning("MakeAVideo Text Encode: text: %s", warning)
        with host.models_on_device(model):
            tokens, pooled = encode_prompt(model, [text])
        out = host.intermediate_device()
        return ([[tokens.to(out, torch.float32), {"pooled_output": pooled.to(out, torch.float32)}]],)


NODE_CLASS_MAPPINGS = {"MakeAVideoTextEncode": TextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoTextEncode": "MakeAVideo Text Encode"}
