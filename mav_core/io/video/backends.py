"""The optional codec libraries: PyAV (``av``) and OpenCV (``cv2``), each None where it is not installed.

PyAV is the preferred backend; everything degrades to OpenCV without it. The other modules look the
libraries up here at call time (``backends.av``), so a test that sets ``backends.av = None`` runs the
OpenCV fallback everywhere.
"""
from __future__ import annotations

try:
    import av
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    av = None

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None
