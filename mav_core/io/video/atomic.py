"""Atomic targets: every write goes to a temporary file (or folder) next to the target and is moved into
place with ``os.replace``; a failed write leaves nothing behind (and an existing target untouched)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .formats import _IMAGE_SUFFIXES


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _temp_file_for(path: Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; move it onto ``path`` on success, delete it on failure."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"output path {str(path)!r} is a folder; expected a file path")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_file_for(path):
    """Public name of _temp_file_for: ``with temp_file_for(path) as tmp: write tmp`` -> moved onto path."""
    return _temp_file_for(Path(path))


@contextmanager
def _temp_folder_for(path: Path) -> Iterator[Path]:
    """Like _temp_file_for, for a frame folder. An existing folder is replaced only if it holds frames only."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"output path {str(path)!r} is a file; expected a folder for PNG frames")
        others = [p.name for p in path.iterdir() if p.suffix.lower() not in _IMAGE_SUFFIXES]
        if others:
            raise FileExistsError(f"output folder {str(path)!r} holds files other than frames ({others[:3]}); not replacing it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_current_umask())
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "frames")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "frames", path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
