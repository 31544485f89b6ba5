"""Achieved FLOP/s of our UNet step against this machine's measured matmul ceiling, in the same dtype.

    python bench/flops.py --config small --threads 1

FLOPs: torch.utils.flop_counter.FlopCounterMode on diffusers' copy of the same network (same weights),
plus attention by formula 4*B*H*Lq*Lk*D per scaled_dot_product_attention call (the CPU flash kernel
counts 0). The ceiling is a large square matmul
timed in the same run, alternating with the step. A profile of one step splits the time into GEMM/conv,
attention, and memory-bound work (the explanation when the step is far below the ceiling).
Writes bench/results/flops.json.
"""
from __future__ import annotations

import argparse
import collections
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common import CONFIGS, add_common_args, inputs, machine_info, model_pair, summary, table, write_json

COMPUTE_OPS = ("addmm", "mm", "bmm", "baddbmm", "matmul", "convolution", "conv", "linear")


def count_flops(model, x, t, ctx, diffusers_style: bool = False) -> dict:
    """Total FLOPs of one forward: counter FLOPs + attention FLOPs by formula (minus what the counter saw)."""
    calls = []
    original = F.scaled_dot_product_attention

    def recording(q, k, v, *a, **kw):
        *batch, lq, d = q.shape
        lk = k.shape[-2]
        n = 1
        for s in batch:
            n *= s
        calls.append(4 * n * lq * lk * d)
        return original(q, k, v, *a, **kw)

    F.scaled_dot_product_attention = recording
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if diffusers_style:
                model(x, t, encoder_hidden_states=ctx)
            else:
                model(x, t, ctx)
    finally:
        F.scaled_dot_product_attention = original
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    counted_attention = sum(v for k, v in by_op.items() if "scaled_dot_product" in k)
    total = counter.get_total_flops() - counted_attention + sum(calls)
    return {"total": total, "attention_formula": sum(calls), "attention_counted_by_counter": counted_attention,
            "by_op": by_op, "sdpa_calls": len(calls)}


def category(name: str) -> str:
    n = name.replace("aten::", "")
    if "scaled_dot_product" in n:
        return "attention (flash)"
    if any(n == op or n.startswith(op + "_") or n.endswith(op) for op in COMPUTE_OPS) or "convolution" in n:
        return "GEMM / conv"
    return "memory-bound (norms, activations, copies, adds)"


def profile_split(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    split = collections.Counter()
    top = []
    for e in prof.key_averages():
        split[category(e.key)] += e.self_cpu_time_total / 1e6
        top.append((e.self_cpu_time_total / 1e6, e.key, e.count))
    top.sort(reverse=True)
    total = sum(split.values())
    return {"seconds": dict(split), "share": {k: v / total for k, v in split.items()},
            "top_ops": [{"op": k, "self_s": s, "calls": c} for s, k, c in top[:12]]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--config", default="small", choices=sorted(CONFIGS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    ours, ref = model_pair(args.config)
    x, t, ctx = inputs(args.config, batch=args.batch, frames=args.frames, size=args.size)
    # the step's FLOPs are counted on diffusers' copy of the same network (standard ops only); our count is
    # reported beside it: the counter misses in-place ops of our fast paths (baddbmm_), so it reads lower
    flops = count_flops(ref, x, t, ctx, diffusers_style=True)
    flops["ours_counted"] = count_flops(ours, x, t, ctx)["total"]
    del ref
    print(f"torch {info['torch']}, {args.threads} thread(s); config {args.config}, input {list(x.shape)}: "
          f"{flops['total'] / 1e9:.1f} GFLOP per step (attention by formula {flops['attention_formula'] / 1e9:.1f})")
    n = args.matmul_size
    rows, profiles = [], {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = ours if dtype == torch.float32 else copy.deepcopy(ours).to(dtype)
        xv, cv = x.to(dtype), ctx.to(dtype)
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out = torch.empty(n, n, dtype=dtype)

        def step():
            model(xv, t, cv)

        def matmul():
            torch.matmul(a, b, out=out)

        with torch.no_grad():
            for _ in range(args.warmup):
                step()
                matmul()
            ts, tm = [], []
            for _ in range(args.repeats):           # alternate: step, 3 matmuls, step, ...
                t0 = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t0)
                for _ in range(3):
                    t0 = time.perf_counter()
                    matmul()
                    tm.append(time.perf_counter() - t0)
            s_step, s_mm = summary(ts), summary(tm)
            ceiling = 2 * n**3 / s_mm["median_s"]
            achieved = flops["total"] / s_step["median_s"]
            rows.append({"dtype": dtype_name, "step_s": s_step["median_s"], "step_spread_%": s_step["spread_pct"],
                         "achieved_GFLOP/s": achieved / 1e9, "matmul_ceiling_GFLOP/s": ceiling / 1e9,
                         "ceiling_spread_%": s_mm["spread_pct"], "fraction_of_ceiling": achieved / ceiling})
            print(table([rows[-1]], list(rows[-1])), flush=True)
            if not args.no_profile:
                profiles[dtype_name] = profile_split(step)
                print({k: f"{v:.0%}" for k, v in profiles[dtype_name]["share"].items()})
    bf16_ceiling = next(r["matmul_ceiling_GFLOP/s"] for r in rows if r["dtype"] == "bf16")
    for r in rows:
        r["fraction_of_bf16_ceiling"] = r["achieved_GFLOP/s"] / bf16_ceiling
    print("\n" + table(rows, list(rows[0])))
    path = write_json({"machine": info, "args": vars(args), "flops": flops, "rows": rows, "profiles": profiles},
                      "flops", args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
