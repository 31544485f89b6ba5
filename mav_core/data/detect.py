"""Detector for the rendered world: finds the single object in a frame and names its colour and shape.

Used to score generated frames (does "a red triangle" contain a red triangle? where is it?).
Method: background = median of the border pixels (or the expected background colour); object = pixels
far from it (threshold at half the peak contrast, on a 4x bilinear upsampling for sub-pixel contours);
colour = nearest palette colour in CIE Lab of the mean interior pixel; shape = nearest prototype in a
small space of contour features (solidity, fill of the min-area rectangle, circle, triangle).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from .world import BACKGROUNDS, COLOURS, SHAPES


class Detection(NamedTuple):
    colour: str | None  # palette name, None when no object was found
    shape: str | None
    centroid: tuple[float, float] | None  # (x, y) in input pixels
    area: float  # object area in input pixels
    mask: np.ndarray  # bool [H, W]


def _lab(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3)


_PALETTE_NAMES = list(COLOURS)
_PALETTE_LAB = _lab(np.array([COLOURS[c] for c in _PALETTE_NAMES]))
_BG_NAMES = list(BACKGROUNDS)
_BG_LAB = _lab(np.array([BACKGROUNDS[b] for b in _BG_NAMES]))

# ideal (rect fill, circle fill, triangle fill) of the convex shapes; the cross is told apart by solidity
_CONVEX_PROTOTYPES = {
    "circle": (np.pi / 4, 1.0, np.pi / (3 * np.sqrt(3))),
    "square": (1.0, 2 / np.pi, 0.5),
    "triangle": (0.5, 3 * np.sqrt(3) / (4 * np.pi), 1.0),
}
CROSS_MAX_SOLIDITY = 0.85


def to_uint8_rgb(frame) -> np.ndarray:
    """Accept uint8 or float ([0,1], or [-1,1] when negative values occur), HWC or CHW, numpy or torch."""
    if hasattr(frame, "detach"):
        frame = frame.detach().cpu().numpy()
    a = np.asarray(frame)
    if a.ndim != 3:
        raise ValueError(f"frame must be an RGB image [H,W,3] or [3,H,W], got shape {a.shape}")
    if a.shape[-1] != 3 and a.shape[0] == 3:
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] != 3:
        raise ValueError(f"frame must have 3 colour channels, got shape {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"frame dtype must be uint8 or float, got {a.dtype}")
    a = a.astype(np.float32)
    if a.min() < -0.01:
        a = (a + 1.0) / 2.0
    return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)


def estimate_background(frame) -> np.ndarray:
    """Median RGB of the border pixels (float32 [3])."""
    img = to_uint8_rgb(frame)
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    return np.median(border, axis=0).astype(np.float32)


def classify_background(frame) -> str:
    """Nearest background palette name to the border median."""
    d = np.linalg.norm(_BG_LAB - _lab(estimate_background(frame)), axis=1)
    return _BG_NAMES[int(np.argmin(d))]


def classify_colour(rgb) -> str:
    """Nearest object palette colour in Lab to an RGB triple (0..255)."""
    d = np.linalg.norm(_PALETTE_LAB - _lab(np.asarray(rgb, np.float32)), axis=1)
    return _PALETTE_NAMES[int(np.argmin(d))]


def shape_features(contour: np.ndarray) -> tuple[float, float, float, float]:
    """(solidity, fill of min-area rectangle, fill of min enclosing circle, fill of min enclosing triangle)."""
    area = max(cv2.contourArea(contour), 1e-6)
    hull = cv2.convexHull(contour)
    solidity = area / max(cv2.contourArea(hull), 1e-6)
    (_, _), (w, h), _ = cv2.minAreaRect(contour)
    rect_fill = area / max(w * h, 1e-6)
    _, r = cv2.minEnclosingCircle(contour)
    circle_fill = area / max(np.pi * r * r, 1e-6)
    tri_area, _ = cv2.minEnclosingTriangle(hull.astype(np.float32))
    tri_fill = area / max(tri_area, 1e-6)
    return float(solidity), float(rect_fill), float(circle_fill), float(tri_fill)


def classify_shape(features) -> str:
    s, rect, circ, tri = features
    if s < CROSS_MAX_SOLIDITY:
        return "cross"
    f = np.array([rect, circ, tri])
    names = list(_CONVEX_PROTOTYPES)
    d = [np.linalg.norm(f - np.array(_CONVEX_PROTOTYPES[n])) for n in names]
    return names[int(np.argmin(d))]


def detect(frame, background=None, upsample: int = 4, min_contrast: float = 30.0) -> Detection:
    """Find the object in `frame` (RGB; see `to_uint8_rgb`) and classify it.

    `background`: expected background as a palette name or RGB triple; None estimates it from the border.
    Returns a Detection with colour/shape None and an empty mask when nothing stands out.
    """
    img = to_uint8_rgb(frame)
    h, w = img.shape[:2]
    if background is None:
        bg = estimate_background(img)
    elif isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(f"background {background!r} is not one of {sorted(BACKGROUNDS)}")
        bg = np.array(BACKGROUNDS[background], np.float32)
    else:
        bg = np.asarray(background, np.float32).reshape(3)
    empty = Detection(None, None, None, 0.0, np.zeros((h, w), bool))

    dist = np.linalg.norm(img.astype(np.float32) - bg, axis=-1)
    up = max(1, int(upsample))
    big = cv2.resize(dist, (w * up, h * up), interpolation=cv2.INTER_LINEAR) if up > 1 else dist
    peak = float(np.percentile(big, 99.5))
    if peak < min_contrast:
        return empty
    binary = (big > 0.5 * peak).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return empty
    contour = max(contours, key=cv2.contourArea)
    if cv2.contourArea(contour) < 4 * up * up:
        return empty
    obj_big = np.zeros_like(binary)
    cv2.drawContours(obj_big, [contour], -1, 1, thickness=-1)
    obj_big &= binary
    if up > 1:
        mask = cv2.resize(obj_big.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    else:
        mask = obj_big.astype(bool)

    # colour from interior pixels (far from the background), falling back to the whole mask
    interior = mask & (dist > 0.75 * peak)
    pix = img[interior] if interior.sum() >= 2 else img[mask] if mask.any() else img[dist >= np.max(dist)]
    colour = classify_colour(pix.mean(axis=0))

    m = cv2.moments(contour)
    centroid = (float(m["m10"] / m["m00"] + 0.5) / up - 0.5, float(m["m01"] / m["m00"] + 0.5) / up - 0.5)
    area = float(cv2.contourArea(contour)) / (up * up)
    shape = classify_shape(shape_features(contour))
    return Detection(colour, shape, centroid, area, mask)


assert set(SHAPES) == {"circle", "square", "triangle", "cross"}, "detect.classify_shape knows these four shapes"
