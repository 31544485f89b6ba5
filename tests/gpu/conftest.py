"""tests/gpu: run only where CUDA is present (a lent GPU machine: scripts/gpu_check.sh); skipped otherwise."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: pack_import, device_sim

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]


def pytest_report_header(config):
    if torch.cuda.is_available():
        return f"CUDA device: {torch.cuda.get_device_name(0)} (capability {torch.cuda.get_device_capability(0)})"
    return "tests/gpu: no CUDA device, every test here is left out"
