"""Import the pack's `nodes` package without ComfyUI, once per test session, for every test that needs it."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_makeavideo_pack"


def import_pack():
    """The pack's `nodes` package, imported through the repository root as a package (relative imports);
    without ComfyUI the root itself registers nothing."""
    if PACK_NAME in sys.modules:
        return importlib.import_module(f"{PACK_NAME}.nodes")
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {}, "without ComfyUI the root registers nothing"
    return importlib.import_module(f"{PACK_NAME}.nodes")
