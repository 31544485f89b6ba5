"""Fixtures for integration tests against a real ComfyUI (see tests/host/comfy_server.py).

Set COMFYUI_ROOT to a ComfyUI checkout that has a .venv (COMFYUI_PYTHON overrides the python).
Without it every test here is skipped with the reason. One server runs per test session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_server import ComfyServer, HostPaths, HostUnavailable  # noqa: E402


@pytest.fixture(scope="session")
def comfy_host_paths() -> HostPaths:
    try:
        return HostPaths.from_env()
    except HostUnavailable as reason:
        pytest.skip(f"no ComfyUI test host: {reason}")


@pytest.fixture(scope="session")
def comfy_server(comfy_host_paths: HostPaths, tmp_path_factory: pytest.TempPathFactory):
    """A running ComfyUI with the pack symlinked into its custom_nodes; stopped after the session."""
    server = ComfyServer(host=comfy_host_paths, work_dir=tmp_path_factory.mktemp("comfy_host"))
    with server.running(f"ComfyUI {comfy_host_paths.version()} at {comfy_host_paths.root}"):
        yield server
