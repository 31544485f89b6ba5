"""ComfyUI nodes of the pack: thin adapters from host types to mav_core calls and back (classic V1 API)."""
from . import host, interpolator, loaders, prior, sampler, text_encode, upscaler, video_io

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loaders, text_encode, prior, sampler, interpolator, upscaler, video_io):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

host.register_model_folder()
