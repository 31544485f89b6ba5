"""Shared helpers for the benchmarks: configs, same-weights model pairs, alternating timing, tables, JSON.

Every benchmark states its thread count (torch.set_num_threads) in its output: on a shared machine,
2 threads can be ~10x slower than 1 when other processes run (OpenMP spinning under oversubscription).
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# diffusers UNet3DConditionModel configs (the reference layout); "small" is the PERF-NOTES step.
CONFIGS = {
    "tiny": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, attention_head_dim=16,
                 cross_attention_dim=64, norm_num_groups=32),
    "small": dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, attention_head_dim=64,
                  cross_attention_dim=256, norm_num_groups=32),
    "mid": dict(block_out_channels=(128, 256, 384, 384), layers_per_block=2, attention_head_dim=64,
                cross_attention_dim=512, norm_num_groups=32),
}


def add_common_args(parser, threads: int = 1):
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads (stated in the output)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (alternated)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant")
    parser.add_argument("--out", default=None, help="JSON output path (default bench/results/<name>.json)")


def machine_info(threads: int, device: str = "cpu") -> dict:
    flags = ""
    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    except OSError:
        pass
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": model,
            "cores": os.cpu_count(), "threads": threads,
            "cpu_flags": [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
                          if f" {f}" in flags],
            "loadavg": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": device,
            "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None}


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (zero-initialised output layers too), so every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def model_pair(name: str, seed: int = 1):
    """(ours, diffusers) UNet3D models with the same random weights, ours loaded through the converter
    from diffusers' own saved files (config.json + safetensors)."""
    import diffusers
    from safetensors.torch import load_file

    from mav_core.io import convert as C, unet_configs as UC
    from mav_core.models.unet import SpaceTimeUNet

    torch.manual_seed(0)
    ref = diffusers.UNet3DConditionModel(**CONFIGS[name]).eval()
    randomise(ref, seed)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d, safe_serialization=True)
        config = json.loads((Path(d) / "config.json").read_text())
        sd = load_file(str(Path(d) / "diffusion_pytorch_model.safetensors"))
    ours = SpaceTimeUNet(UC.config_from_diffusers(config)).eval()
    ours.load_state_dict(C.diffusers_to_ours(sd), strict=True)
    return ours, ref


def inputs(name: str, batch: int = 2, frames: int = 16, size: int = 32, tokens: int = 77, seed: int = 2):
    cfg = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    # a CFG pair as a sampler makes it: the same latents twice, under two contexts
    half = max(1, batch // 2)
    x = torch.randn(half, 4, frames, size, size, generator=g).repeat(batch // half, 1, 1, 1, 1)[:batch]
    ctx = torch.randn(batch, tokens, cfg["cross_attention_dim"], generator=g)
    t = torch.tensor([417.0, 417.0][:batch] + [417.0] * max(0, batch - 2))
    return x, t, ctx


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def time_alternating(fns: dict, repeats: int, warmup: int = 1, sync=None) -> dict:
    """Run each callable `warmup` times, then `repeats` rounds of A, B, C, ... (alternated so machine
    drift hits all). Returns {name: [seconds, ...]}. sync: called before starting and stopping each
    clock (torch.cuda.synchronize on a GPU, whose kernels run asynchronously)."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def summary(ts: list[float]) -> dict:
    med = statistics.median(ts)
    return {"median_s": med, "min_s": min(ts), "max_s": max(ts),
            "spread_pct": 100 * (max(ts) - min(ts)) / med if med else 0.0, "runs": ts}


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line, sep] + ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells])


def write_json(data: dict, name: str, out: str | None = None) -> Path:
    path = Path(out) if out else ROOT / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    os.replace(tmp, path)
    return path


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul in `dtype` (median of `repeats`)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=out)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts)
