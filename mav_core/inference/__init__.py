"""Inference: one function per stage (generate, interpolate, upscale), the whole chain, frame masks, prompt
travel, sliding windows, placement on the model's device, memory estimates."""
