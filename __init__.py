"""ComfyUI-MakeAVideo: registers the pack's nodes with ComfyUI.

ComfyUI imports this file by path (the module name is the folder's full path), so only relative
imports are used. Without ComfyUI (e.g. pytest importing the repository root as a package) it
registers nothing and imports nothing; tests import `nodes` themselves.
"""
import importlib.util as _util
import sys as _sys

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./web"


def _inside_comfyui() -> bool:
    return "folder_paths" in _sys.modules or _util.find_spec("comfy") is not None


if __package__ and __package__ in _sys.modules and _inside_comfyui():
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
