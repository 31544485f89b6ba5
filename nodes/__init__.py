"""ComfyUI nodes of the pack: thin adapters from host types to mav_core calls and back (classic V1 API).

Each stage module has its own NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS; modules listed here
whose file is absent (not yet part of this checkout) are skipped, import errors of present ones are not.
"""
import importlib
from pathlib import Path

from . import host

STAGE_MODULES = ("loaders", "text_encode", "image_encode", "prior", "sampler", "interpolator", "upscaler", "video_io", "image_sequence", "motion", "control", "prompt_schedule", "lora", "model_bridge")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _name in STAGE_MODULES:
    if not (Path(__file__).parent / f"{_name}.py").is_file():
        continue
    _module = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

host.register_model_folder()
host.register_memory_provider()
