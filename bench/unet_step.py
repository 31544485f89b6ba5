"""UNet step time: ours (SpaceTimeUNet) vs diffusers' UNet3DConditionModel, same config and the same
weights (ours loaded through mav_core.io.convert from diffusers' saved files), batch 2 (a CFG pair: the same
latent under two contexts, as a sampler calls it). `ours` takes the batch as diffusers does; `ours_shared`
takes the pair as our sampler passes it (the latent once, both contexts: SpaceTimeUNet's shared latent).

    python bench/unet_step.py --configs small --variants fp32 bf16-weights bf16-autocast --threads 1
    python bench/unet_step.py --configs small --variants fp32 --compile      # adds torch.compile rows

Timings alternate ours / diffusers / ours / ... so machine drift hits both; medians and spreads are
reported, with the output difference of each pair (fp32: rel L2 vs diffusers fp32; bf16: both vs the
fp32 reference). Writes bench/results/unet_step.json.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

from common import (CONFIGS, add_common_args, inputs, machine_info, model_pair, rel_l2, summary, table,
                    time_alternating, write_json)

TOLERANCE = {"fp32": 1e-4, "bf16-weights": 2e-2, "bf16-autocast": 2e-2, "fp16-weights": 5e-3}


def _variant(ours, ref, x, ctx, variant):
    """(ours_fn, diffusers_fn) closures running one forward in `variant`."""
    if variant == "fp32":
        return ours, ref, x, ctx, contextlib.nullcontext
    if variant in ("bf16-weights", "fp16-weights"):
        dt = torch.bfloat16 if variant.startswith("bf16") else torch.float16
        return (copy.deepcopy(ours).to(dt), copy.deepcopy(ref).to(dt), x.to(dt), ctx.to(dt), contextlib.nullcontext)
    if variant == "bf16-autocast":
        return ours, ref, x, ctx, lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown variant {variant!r}")


def run_config(name, variants, args):
    ours, ref = model_pair(name)
    x, t, ctx = inputs(name, batch=args.batch, frames=args.frames, size=args.size)
    ours, ref, x, t, ctx = (v.to(args.device) for v in (ours, ref, x, t, ctx))
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else None
    rows = []
    with torch.no_grad():
        reference = ref(x, t, encoder_hidden_states=ctx).sample
        for variant in variants:
            o_mod, d_mod, xv, cv, ctxm = _variant(ours, ref, x, ctx, variant)
            half = xv.shape[0] // 2
            fns = {"ours": lambda: o_mod(xv, t, cv), "diffusers": lambda: d_mod(xv, t, encoder_hidden_states=cv).sample}
            if args.batch % 2 == 0:
                # the CFG pair as the sampler calls ours: each latent once, under both contexts
                fns["ours_shared"] = lambda: o_mod(xv[:half], t[:half], cv)
            with ctxm():
                err_ours = rel_l2(fns["ours"](), reference)
                err_shared = rel_l2(fns["ours_shared"](), reference) if "ours_shared" in fns else None
                err_diff = rel_l2(fns["diffusers"](), reference) if variant != "fp32" else 0.0
                times = time_alternating(fns, args.repeats, args.warmup, sync)
            rows.append(_row(name, variant, times, err_ours, err_diff, compile_s=None, err_shared=err_shared))
            print(table([rows[-1]], COLUMNS), flush=True)
            if args.compile:
                c_ours, c_ref = torch.compile(o_mod), torch.compile(d_mod)
                cfns = {"ours": lambda: c_ours(xv, t, cv),
                        "diffusers": lambda: c_ref(xv, t, encoder_hidden_states=cv).sample}
                compile_s = {}
                with ctxm():
                    for k, fn in cfns.items():
                        t0 = time.perf_counter()
                        out = fn()
                        compile_s[k] = time.perf_counter() - t0
                        if k == "ours":
                            err_ours_c = rel_l2(out, reference)
                    err_diff_c = rel_l2(cfns["diffusers"](), reference) if variant != "fp32" else 0.0
                    times = time_alternating(cfns, args.repeats, args.warmup, sync)
                rows.append(_row(name, variant + "+compile", times, err_ours_c, err_diff_c, compile_s))
                print(table([rows[-1]], COLUMNS), flush=True)
    return rows


def _row(name, variant, times, err_ours, err_diff, compile_s, err_shared=None):
    so, sd = summary(times["ours"]), summary(times["diffusers"])
    ss = summary(times["ours_shared"]) if "ours_shared" in times else None
    tol = TOLERANCE[variant.split("+")[0]]

    def ok(err):
        return err <= tol if variant.startswith("fp32") else err <= max(tol, 1.5 * err_diff)
    match = ok(err_ours) and (err_shared is None or ok(err_shared))
    return {"config": name, "variant": variant, "ours_s": so["median_s"], "ours_spread_%": so["spread_pct"],
            "ours_shared_s": ss and ss["median_s"], "ours_shared_spread_%": ss and ss["spread_pct"],
            "diffusers_s": sd["median_s"], "diffusers_spread_%": sd["spread_pct"],
            "speedup": sd["median_s"] / so["median_s"],
            "speedup_shared": ss and sd["median_s"] / ss["median_s"],
            "rel_err_ours": err_ours, "rel_err_ours_shared": err_shared, "rel_err_diffusers": err_diff,
            "outputs_match": match, "ours_shared_runs": ss and ss["runs"],
            "compile_s_ours": None if compile_s is None else compile_s["ours"],
            "compile_s_diffusers": None if compile_s is None else compile_s["diffusers"],
            "ours_runs": so["runs"], "diffusers_runs": sd["runs"]}


COLUMNS = ["config", "variant", "ours_s", "ours_spread_%", "ours_shared_s", "ours_shared_spread_%", "diffusers_s",
           "diffusers_spread_%", "speedup", "speedup_shared", "rel_err_ours", "rel_err_ours_shared",
           "rel_err_diffusers", "outputs_match"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--configs", nargs="+", default=["small"], choices=sorted(CONFIGS))
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16-weights", "bf16-autocast"],
                   choices=list(TOLERANCE))
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models (minutes to compile)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="latent height = width")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA timings synchronise after each run)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads, args.device)
    print(f"torch {info['torch']}, {args.threads} thread(s), {info['cpu']}, flags {info['cpu_flags']}, "
          f"device {args.device}{' (' + info['gpu'] + ')' if info['gpu'] else ''}, "
          f"input [{args.batch}, 4, {args.frames}, {args.size}, {args.size}], load {info['loadavg']}")
    rows = []
    for name in args.configs:
        rows += run_config(name, args.variants, args)
    print("\n" + table(rows, COLUMNS + ["compile_s_ours", "compile_s_diffusers"]))
    path = write_json({"machine": info, "args": vars(args), "configs": {k: CONFIGS[k] for k in args.configs},
                       "rows": rows}, "unet_step", args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
