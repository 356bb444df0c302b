"""The one set of colours of the app: heat-map colormaps and the label palette.

The viewer's layers (:mod:`imaging_assist.layers`), the key images of analyses
(:mod:`imaging_assist.inference.results`) and the slide heat maps all take their colours
from here, so a heat map or a label looks the same in the viewer and in a written PNG.
Written by hand (a few control points each) because matplotlib is not a dependency.
"""

from __future__ import annotations

import numpy as np

# Qualitative palette for labels (distinct on a grey image); label 1 gets the first.
LABEL_PALETTE: list[tuple[int, int, int]] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]

# Colormap control points (position 0..1, r, g, b).  Values between are linear.
_CMAP_POINTS: dict[str, list[tuple[float, int, int, int]]] = {
    "jet": [(0.0, 0, 0, 131), (0.125, 0, 0, 255), (0.375, 0, 255, 255), (0.625, 255, 255, 0),
            (0.875, 255, 0, 0), (1.0, 128, 0, 0)],
    "hot": [(0.0, 10, 0, 0), (0.375, 255, 0, 0), (0.75, 255, 255, 0), (1.0, 255, 255, 255)],
    "inferno": [(0.0, 0, 0, 4), (0.25, 87, 16, 110), (0.5, 188, 55, 84), (0.75, 249, 142, 9),
                (1.0, 252, 255, 164)],
    "viridis": [(0.0, 68, 1, 84), (0.25, 59, 82, 139), (0.5, 33, 145, 140), (0.75, 94, 201, 98),
                (1.0, 253, 231, 37)],
    "coolwarm": [(0.0, 59, 76, 192), (0.5, 221, 221, 221), (1.0, 180, 4, 38)],
    "gray": [(0.0, 0, 0, 0), (1.0, 255, 255, 255)],
}
COLORMAPS = tuple(_CMAP_POINTS)
DEFAULT_HEAT_COLORMAP = "jet"  # the viewer's heat-map layers and the key images


def colormap_rgb(name: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 table of a named colormap (see :data:`COLORMAPS`)."""
    pts = _CMAP_POINTS.get(name)
    if pts is None:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    x = np.linspace(0.0, 1.0, n)
    pos = np.array([p[0] for p in pts])
    out = np.stack([np.interp(x, pos, [p[c] for p in pts]) for c in (1, 2, 3)], axis=1)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colormap_index(v: np.ndarray, n: int = 256) -> np.ndarray:
    """Values in [0, 1] (NaN as 0) -> table indices 0..n-1, rounded as the viewer's layers do."""
    v = np.clip(np.nan_to_num(np.asarray(v, np.float32), nan=0.0), 0.0, 1.0)
    return (v * (n - 1) + 0.5).astype(np.intp)


def apply_colormap(v: np.ndarray, name: str = DEFAULT_HEAT_COLORMAP) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (..., 3) with the named colormap."""
    return colormap_rgb(name)[colormap_index(v)]


def label_color(i: int) -> tuple[int, int, int]:
    """Colour of label value ``i`` (1 = first palette colour; 0, the background, is black)."""
    i = int(i)
    if i <= 0:
        return (0, 0, 0)
    return LABEL_PALETTE[(i - 1) % len(LABEL_PALETTE)]


def label_lut(n: int) -> np.ndarray:
    """(n, 3) uint8: row i is :func:`label_color` (i)."""
    return np.array([label_color(i) for i in range(max(1, int(n)))], np.uint8)
