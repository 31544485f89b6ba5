"""ComfyUI-MakeAVideo: registers the pack's nodes with ComfyUI.

ComfyUI imports this file by path, so only relative imports are used. Imported any other way (no
parent package, e.g. collected by pytest from the repository root) it registers nothing.
"""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./web"

import sys as _sys

if __package__ and __package__ in _sys.modules:  # imported as a package (ComfyUI registers it first)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
