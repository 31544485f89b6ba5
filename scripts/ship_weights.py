"""Copy a training run's stage checkpoints into the shipped MAV-Tiny folder, stored as float16.

    python scripts/ship_weights.py [--run runs/mav-tiny] [--dest mav_core/weights/mav-tiny] [--stages ...]

Float16 storage halves the files; loading casts back to the model's dtype (float32 on CPU). The
run's `decoder_video` checkpoint is D^t, shipped as `decoder.safetensors`. A regression ↑F run's interpolator
(`train interpolator --objective regression`) is shipped as `interpolator_regression.safetensors`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mav_core.models import family  # noqa: E402
from mav_core.io.checkpoints import atomic_save_file, load_state_dict  # noqa: E402

SOURCES = {"text": "text", "prior": "prior", "decoder": "decoder_video", "interpolator": "interpolator",
           "sr_video": "sr_video", "sr_frame": "sr_frame"}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="runs/mav-tiny")
    p.add_argument("--dest", default=str(family.WEIGHTS_DIR))
    p.add_argument("--spatial-from", default=None,
                   help="run checkpoint whose spatial (image) weights replace D^t's, e.g. 'decoder' when D was "
                        "trained further after D^t's temporal layers: the temporal layers move over as a motion module")
    p.add_argument("--stages", nargs="+", choices=sorted(SOURCES), default=sorted(SOURCES),
                   help="ship only these stages (e.g. interpolator, after retraining just ↑F)")
    args = p.parse_args()
    dest = Path(args.dest)
    total = 0
    for stage, src in SOURCES.items():
        if stage not in args.stages:
            continue
        path = Path(args.run) / f"{src}.safetensors"
        if not path.exists():
            print(f"missing {path}", file=sys.stderr)
            return 1
        sd, meta = load_state_dict(path)
        if stage == "decoder" and args.spatial_from:
            from mav_core.models.unet import is_temporal_key
            image_sd, _ = load_state_dict(Path(args.run) / f"{args.spatial_from}.safetensors")
            if image_sd.keys() != sd.keys():
                print(f"{args.spatial_from} and {src} differ in keys", file=sys.stderr)
                return 1
            sd = {k: (v if is_temporal_key(k) else image_sd[k]) for k, v in sd.items()}
            meta = {**meta, "mav_spatial_from": args.spatial_from}
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        meta = {**meta, "mav_storage_dtype": "float16"}
        out = dest / family.STAGE_FILES[stage]
        if stage == "interpolator" and meta.get("mav_interp_estimate") == "regression":
            out = dest / family.REGRESSION_INTERPOLATOR_FILE   # beside the diffusion ↑F, never over it
        atomic_save_file(sd, out, meta)
        total += out.stat().st_size
        print(f"{out}: {out.stat().st_size / 1e6:.1f} MB from {path}")
    for kind, name in family.CONTROL_FILES.items() if "decoder" in args.stages else ():
        path = Path(args.run) / name
        if path.exists():
            sd, meta = load_state_dict(path)
            atomic_save_file({k: v.half() for k, v in sd.items()}, dest / name, {**meta, "mav_storage_dtype": "float16"})
            total += (dest / name).stat().st_size
            print(f"{dest / name}: {(dest / name).stat().st_size / 1e6:.1f} MB from {path}")
    print(f"total {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
