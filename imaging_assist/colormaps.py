"""The one set of colours of the app: heat-map colormaps and the label palette.

The viewer's layers (:mod:`imaging_assist.layers`), the key images of analyses
(:mod:`imaging_assist.inference.results`) and the slide heat maps all take their colours
from here, so a heat map or a label looks the same in the viewer and in a written PNG.
Heat-map colours are matplotlib's colormap tables; heat maps fade to transparent at low values
(:func:`fade_alpha`) in the viewer and in the written key images alike.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Qualitative palette for labels (distinct on a grey image); label 1 gets the first.  Sasha
# Trubetskoy's 20 colours, except that its grey (label 20: invisible over grey CT at 50 %
# opacity) and its two near-whites (pink, beige: labels 10 and 14) are replaced by saturated
# colours far from the others.
LABEL_PALETTE: list[tuple[int, int, int]] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (40, 0, 255),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (0, 255, 145), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (0, 255, 0),
]

# Heat-map colormaps: matplotlib's tables (a dependency; its colormaps are the reference
# every reader of a matplotlib/MONAI figure knows).  The perceptually uniform ones come first;
# "jet" stays selectable for people who compare with older figures, but is not the default
# (its bright cyan/yellow bands make flat attribution look like structure).
COLORMAPS = ("inferno", "magma", "viridis", "hot", "jet", "coolwarm", "gray")
DEFAULT_HEAT_COLORMAP = "inferno"  # the viewer's heat-map layers, the key images and the reports
# What a heat map shows by default: values below DEFAULT_HEAT_THRESHOLD of the colour range are
# not drawn, and the opacity ramps from 0 there up to DEFAULT_HEAT_OPACITY at the top of the range.
DEFAULT_HEAT_THRESHOLD = 0.2
DEFAULT_HEAT_OPACITY = 0.7
# Contour mode: iso-lines at these fractions of the colour range (50 / 75 / 90 % of the maximum).
CONTOUR_LEVELS = (0.5, 0.75, 0.9)


@lru_cache(maxsize=64)
def _table(name: str, n: int) -> np.ndarray:
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    from matplotlib import colormaps as mpl_colormaps  # imported on first use (0.5 s)

    rgba = mpl_colormaps[name](np.linspace(0.0, 1.0, int(n)))
    out = np.clip(rgba[:, :3] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def colormap_rgb(name: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 table of a named colormap (see :data:`COLORMAPS`), from matplotlib."""
    return _table(str(name), int(n))


def fade_alpha(v: np.ndarray, threshold: float = DEFAULT_HEAT_THRESHOLD,
               opacity: float = DEFAULT_HEAT_OPACITY) -> np.ndarray:
    """Opacity of a heat map at values ``v`` in [0, 1] of its colour range: 0 below ``threshold``
    (and for NaN), then rising linearly to ``opacity`` at 1, so that weak attribution fades into
    the image instead of tinting all of it.  Float32 in [0, opacity]."""
    v = np.nan_to_num(np.asarray(v, np.float32), nan=-1.0)
    thr = float(np.clip(threshold, 0.0, 1.0))
    span = 1.0 - thr
    ramp = np.clip((v - thr) / span, 0.0, 1.0) if span > 0 else (v >= thr).astype(np.float32)
    ramp[v < thr] = 0.0
    return (ramp * float(np.clip(opacity, 0.0, 1.0))).astype(np.float32)


def heat_rgba(v: np.ndarray, name: str = DEFAULT_HEAT_COLORMAP, threshold: float = DEFAULT_HEAT_THRESHOLD,
              opacity: float = DEFAULT_HEAT_OPACITY) -> tuple[np.ndarray, np.ndarray]:
    """Values in [0, 1] -> (RGB uint8 (..., 3), alpha float32 (...)) as the viewer draws a heat
    map (:func:`fade_alpha`); the key images and reports blend with these."""
    return apply_colormap(v, name), fade_alpha(v, threshold, opacity)


def iso_lines(values: np.ndarray, levels) -> np.ndarray:
    """Contour pixels of a 2-D map: 1 + the index of the highest level reached, on the pixels of
    each level's region that touch a pixel below that level (4-neighbourhood); 0 elsewhere.

    Hand-written on the pixel grid (like :func:`imaging_assist.layers.outline` for label maps)
    rather than with skimage's sub-pixel ``find_contours``: the lines then go through the same
    cached numpy -> QImage path as every other layer, in every plane, with no polygon drawing."""
    s = np.nan_to_num(np.asarray(values, np.float32), nan=-np.inf)
    band = np.searchsorted(np.asarray(sorted(levels), np.float32), s, side="right").astype(np.uint8)
    lower = np.zeros(band.shape, bool)
    lower[1:] |= band[:-1] < band[1:]
    lower[:-1] |= band[1:] < band[:-1]
    lower[:, 1:] |= band[:, :-1] < band[:, 1:]
    lower[:, :-1] |= band[:, 1:] < band[:, :-1]
    return np.where(lower & (band > 0), band, 0).astype(np.uint8)


def colormap_index(v: np.ndarray, n: int = 256) -> np.ndarray:
    """Values in [0, 1] (NaN as 0) -> table indices 0..n-1, rounded as the viewer's layers do."""
    v = np.clip(np.nan_to_num(np.asarray(v, np.float32), nan=0.0), 0.0, 1.0)
    return (v * (n - 1) + 0.5).astype(np.intp)


def apply_colormap(v: np.ndarray, name: str = DEFAULT_HEAT_COLORMAP) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (..., 3) with the named colormap."""
    return colormap_rgb(name)[colormap_index(v)]


PICKED_LABELS = 255  # label values up to this one get colours picked apart (_picked_label_colors)


@lru_cache(maxsize=1)
def _picked_label_colors() -> np.ndarray:
    """(PICKED_LABELS - 20, 3) uint8 colours of labels 21 ... 255: each the colour farthest (RGB
    distance) from those of all lower labels, among the saturated, bright colours of a 16-level
    grid, and clearly different from the label just below (>= 60 in some channel).  Greedy
    farthest-point picking, in integers, so the same everywhere; no two of labels 1 ... 255 are
    closer than about 34 (a golden-ratio hue turn came round to within 1.4 after 144 labels)."""
    g = np.arange(0, 256, 17)
    c = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(np.int64)
    hi, lo = c.max(1), c.min(1)
    c = c[(hi >= 153) & (2 * (hi - lo) >= hi)]  # value >= 0.6, saturation >= 0.5: never grey
    pal = np.array(LABEL_PALETTE, np.int64)
    d = ((c[:, None] - pal[None]) ** 2).sum(-1).min(1)  # squared distance to the nearest so far
    prev, out = pal[-1], []
    for _ in range(PICKED_LABELS - len(LABEL_PALETTE)):
        i = int(np.argmax(np.where(np.abs(c - prev).max(1) >= 60, d, -1)))
        prev = c[i]
        out.append(prev)
        d = np.minimum(d, ((c - prev) ** 2).sum(1))
    out = np.array(out, np.uint8)
    out.setflags(write=False)
    return out


def _extra_label_colors(values: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 colours of label values after the palette's 20: up to PICKED_LABELS the
    picked ones (:func:`_picked_label_colors`); above it (uint16 label maps) hues a golden-ratio
    turn apart (neighbouring values get hues about 137 degrees apart), saturated and bright enough
    not to read as grey, with saturation and brightness cycling so that hues that come round
    again mostly differ too."""
    values = np.asarray(values, np.int64)
    n = values - (len(LABEL_PALETTE) + 1)
    h = (0.05 + n * 0.6180339887498949) % 1.0
    s = np.array([0.95, 0.6, 0.8])[n % 3]
    v = np.array([0.9, 1.0, 0.7])[(n // 3) % 3]
    # HSV -> RGB (colorsys.hsv_to_rgb, for arrays)
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    out = np.clip(np.stack([r, g, b], -1) * 255 + 0.5, 0, 255).astype(np.uint8)
    picked = values <= PICKED_LABELS
    out[picked] = _picked_label_colors()[n[picked]]
    return out


def label_color(i: int) -> tuple[int, int, int]:
    """Colour of label value ``i`` (1 = first palette colour; 0, the background, is black).
    Values after the palette's 20 get colours of their own (:func:`_extra_label_colors`)
    rather than the palette again, so that label 21 does not look like label 1."""
    i = int(i)
    if i <= 0:
        return (0, 0, 0)
    if i <= len(LABEL_PALETTE):
        return LABEL_PALETTE[i - 1]
    return tuple(int(c) for c in _extra_label_colors(np.array([i]))[0])


def label_lut(n: int) -> np.ndarray:
    """(n, 3) uint8: row i is :func:`label_color` (i)."""
    n = max(1, int(n))
    lut = np.zeros((n, 3), np.uint8)
    first = min(n, len(LABEL_PALETTE) + 1)
    lut[1:first] = np.array(LABEL_PALETTE, np.uint8)[:first - 1]
    if n > first:
        lut[first:] = _extra_label_colors(np.arange(first, n))
    return lut
