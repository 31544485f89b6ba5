"""MakeAVideo Prior: adds an image embedding sampled from the text encoding to each CONDITIONING entry."""
from __future__ import annotations

from ..mav_core.inference import SamplingOptions, run_prior
from . import host
from .common import (CATEGORY, IMAGE_EMBED_KEY, PRIOR, SEED, StepProgress, inputs_named, require_finite,
                     require_model, widget_problem)


class Prior:
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("CONDITIONING",)
    DESCRIPTION = ("Samples the image embedding the decoder is conditioned on from the text conditioning "
                   f"(stored as '{IMAGE_EMBED_KEY}' in each entry's dict).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"prior": (PRIOR,), "conditioning": ("CONDITIONING",), "seed": SEED,
                             "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
                             "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1})}}

    @classmethod
    def VALIDATE_INPUTS(cls, cfg):
        """Refused before the run (HTTP 400): a NaN/inf cfg, which the host's own min/max check lets through."""
        return widget_problem("cfg", cfg, cls.INPUT_TYPES()["required"]["cfg"][1]) or True

    def run(self, prior, conditioning, seed, steps, cfg):
        model = require_model(prior, "prior", ("prior",))
        pc = model.config
        if not conditioning:
            raise ValueError("conditioning: empty CONDITIONING")
        progress = StepProgress(steps * len(conditioning), preview=False)
        options = SamplingOptions(seed=seed, steps=steps, cfg=cfg)
        with inputs_named():
            options.validate()
        out = []
        with host.models_on_device(model):
            for tokens, extras in conditioning:
                pooled = extras.get("pooled_output")
                if pooled is None:
                    raise ValueError("conditioning: has no 'pooled_output' (connect MakeAVideo Text Encode)")
                if tokens.dim() != 3 or tokens.shape[1:] != (pc.max_tokens, pc.text_width):
                    raise ValueError(f"conditioning: tokens of shape {tuple(tokens.shape)} do not fit the prior "
                                     f"({model.path} expects [B, {pc.max_tokens}, {pc.text_width}])")
                if pooled.shape[-1] != pc.embed_dim:
                    raise ValueError(f"conditioning: pooled_output width {pooled.shape[-1]}, "
                                     f"the prior expects {pc.embed_dim}")
                require_finite(tokens, "conditioning")
                require_finite(pooled, "conditioning")
                embed = run_prior(model, tokens, pooled, options, callback=progress)
                out.append([tokens, {**extras, IMAGE_EMBED_KEY: embed.to(host.intermediate_device()).float()}])
        return (out,)


NODE_CLASS_MAPPINGS = {"MakeAVideoPrior": Prior}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoPrior": "MakeAVideo Prior"}
