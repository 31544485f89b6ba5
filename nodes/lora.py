"""MakeAVideo LoRA: a LoRA file from the host's `loras` folder merged into a copy of a decoder at a strength."""
from __future__ import annotations

import os

from ..mav_core.io.checkpoints import CheckpointError
from ..mav_core.io.lora import LAYOUTS, MAX_STRENGTH, apply_lora
from . import host
from .common import CATEGORY, DECODER, inputs_named, require_model, widget_problem

STRENGTH = ("FLOAT", {"default": 1.0, "min": -MAX_STRENGTH, "max": MAX_STRENGTH, "step": 0.01,
                      "tooltip": "how much of the LoRA: 0 = the decoder as it is, 1 = as trained, negative "
                                 "values subtract it"})


class ApplyLora:
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "apply"
    RETURN_TYPES = (DECODER,)
    RETURN_NAMES = ("decoder",)
    DESCRIPTION = ("Merges a LoRA file (from models/loras, the folder the host's LoraLoader lists) into a copy of "
                   "the decoder's UNet at `strength`; the input decoder is left as it is and only the weights the "
                   f"LoRA touches are copied. Layouts: {', '.join(LAYOUTS)} (see docs/lora.md); a file with "
                   "keys that name no weight of this decoder is refused, naming the keys. Chain several of these "
                   "nodes to stack LoRAs.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "decoder": (DECODER,),
            "lora_name": (host.lora_files(), {"tooltip": f"a LoRA file from models/{host.LORA_FOLDER}"}),
            "strength": STRENGTH,
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, strength=None, **_):
        return widget_problem("strength", strength, STRENGTH[1]) or True

    @classmethod
    def IS_CHANGED(cls, lora_name, strength, **_):
        """Re-apply when the file is replaced under the same name."""
        try:
            st = os.stat(host.lora_path(lora_name))
            return f"{lora_name}:{st.st_mtime_ns}:{st.st_size}:{strength}"
        except (OSError, ValueError):
            return f"{lora_name}:missing:{strength}"

    def apply(self, decoder, lora_name, strength):
        model = require_model(decoder, "decoder", ("decoder",))
        path = host.lora_path(lora_name, "lora_name")
        try:
            with inputs_named(strength="strength"):
                return (apply_lora(model, path, strength),)
        except CheckpointError as e:
            raise ValueError(f"lora_name: {e}") from None


NODE_CLASS_MAPPINGS = {"MakeAVideoLora": ApplyLora}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoLora": "MakeAVideo LoRA"}
