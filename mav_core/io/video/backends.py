"""The optional codec libraries: PyAV (``av``) and OpenCV (``cv2``), each None where it is not installed.

PyAV is the preferred backend; everything degrades to OpenCV without it. The other modules look the
libraries up here at call time (``backends.av``), so a test that sets ``backends.av = None`` runs the
OpenCV fallback everywhere.
"""
from __future__ import annotations

import struct
import zlib
from contextlib import contextmanager

try:
    import av
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    av = None

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None


@contextmanager
def naming_the_file(path, what: str):
    """Turn what a corrupt or foreign file makes a decoder or chunk walker raise (PyAV's errors, an index
    past the end, a bad zlib stream or tag encoding, a format check) into one ValueError naming `path`."""
    corrupt = (IndexError, struct.error, zlib.error, UnicodeDecodeError) + ((av.FFmpegError,) if av is not None else ())
    try:
        yield
    except corrupt as error:
        raise ValueError(f"{str(path)!r}: {what} ({type(error).__name__}: {error})") from None
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"{str(path)!r}: {error}") from None
