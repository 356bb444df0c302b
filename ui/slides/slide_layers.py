"""Overlay layers (:mod:`imaging_assist.layers`) placed on a slide.  No widgets.

A slide layer's array is a coarse grid aligned with level 0 of the slide, as produced by
the engine: :meth:`TissueMask.to_layer` (pixels of ``mask.downsample`` level-0 px from the
slide's corner) and :meth:`TileResult.to_layers` (pixels of ``res.downsample`` level-0 px
from ``res.origin``).  The layer objects do not carry that geometry themselves, so it is
attached here as two plain attributes::

    layer = slide_layer(res.to_layers()[0], downsample=res.downsample, origin=res.origin)

``downsample`` = level-0 pixels per layer pixel ``(dx, dy)``; ``origin`` = level-0 ``(x, y)``
of layer pixel (0, 0)'s top-left corner.  Layer pixel ``(col, row)`` therefore covers
level-0 ``[ox + col*dx, ox + (col+1)*dx) x [oy + row*dy, oy + (row+1)*dy)``.  A raster layer
without these attributes is assumed to cover the whole slide (downsample = slide size /
array size, origin 0).  Markers ``(k, j, i)`` are layer pixel centres:
level-0 ``(ox + (i + 0.5) dx, oy + (j + 0.5) dy)``; a marker layer without geometry uses
level-0 pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from imaging_assist.layers import HeatmapLayer, LabelLayer, Layer, MarkerLayer


def _pair(v) -> tuple[float, float]:
    if isinstance(v, (int, float, np.floating, np.integer)):
        return float(v), float(v)
    a, b = v
    return float(a), float(b)


def slide_layer(layer: Layer, downsample=(1.0, 1.0), origin=(0.0, 0.0)) -> Layer:
    """Attach level-0 geometry to ``layer`` (returns it).  Set before adding it to a stack."""
    object.__setattr__(layer, "downsample", _pair(downsample))
    object.__setattr__(layer, "origin", _pair(origin))
    return layer


def layer_geometry(layer: Layer, slide_dims: tuple[int, int]) -> tuple[float, float, float, float]:
    """(dx, dy, ox, oy) of a layer on a slide of level-0 size ``slide_dims``."""
    ds = getattr(layer, "downsample", None)
    org = getattr(layer, "origin", None)
    ox, oy = _pair(org) if org is not None else (0.0, 0.0)
    if ds is not None:
        dx, dy = _pair(ds)
    elif layer.is_raster:
        rows, cols = layer.array.shape[1:3]
        dx, dy = slide_dims[0] / max(1, cols), slide_dims[1] / max(1, rows)
    else:
        dx, dy = 1.0, 1.0
    return dx, dy, ox, oy


def _sample_index(start0: float, extent0: float, n: int, pad: int, o: float, d: float, size: int):
    """Layer indices of ``n (+2 pad)`` screen pixel centres spanning level-0 [start0, start0+extent0)."""
    i = np.arange(-pad, n + pad, dtype=np.float64)
    pos = start0 + (i + 0.5) * (extent0 / n)
    idx = np.floor((pos - o) / d).astype(np.int64)
    valid = (idx >= 0) & (idx < size)
    return np.clip(idx, 0, size - 1), valid


def _edges(lab: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` px of a label change (inside the labelled side)."""
    e = np.zeros(lab.shape, bool)
    for k in range(1, width + 1):
        d = lab[:-k] != lab[k:]
        e[:-k] |= d
        e[k:] |= d
        d = lab[:, :-k] != lab[:, k:]
        e[:, :-k] |= d
        e[:, k:] |= d
    return e


def render_layer_tile(layer: Layer, slide_dims: tuple[int, int], rect0: Sequence[float],
                      out_w: int, out_h: int) -> np.ndarray | None:
    """Premultiplied ARGB32 words (out_h, out_w) of one raster layer over the level-0
    rectangle ``rect0 = (x, y, w, h)`` drawn at ``out_w x out_h`` screen pixels (nearest
    layer pixel per screen pixel centre: heat-map cells stay square).  None when nothing shows."""
    if not layer.is_raster or not layer.visible or layer.opacity <= 0 or out_w <= 0 or out_h <= 0:
        return None
    arr = layer.array[0]
    rows, cols = arr.shape
    dx, dy, ox, oy = layer_geometry(layer, slide_dims)
    x, y, w, h = (float(v) for v in rect0)
    # quick reject: the rectangle misses the layer
    if x >= ox + cols * dx or y >= oy + rows * dy or x + w <= ox or y + h <= oy:
        return None
    outline = isinstance(layer, LabelLayer) and layer.mode == "outline"
    pad = 2 if outline else 0
    ci, cv = _sample_index(x, w, out_w, pad, ox, dx, cols)
    ri, rv = _sample_index(y, h, out_h, pad, oy, dy, rows)
    s = arr[ri[:, None], ci[None, :]]
    valid = rv[:, None] & cv[None, :]
    if isinstance(layer, HeatmapLayer):
        s = np.where(valid, s, np.nan).astype(np.float32, copy=False)
        words = layer.lut()[layer.indices(s)]
    elif isinstance(layer, LabelLayer):
        s = np.where(valid, s, 0)
        if outline:
            s = np.where(_edges(s, 2), s, 0)[pad:-pad, pad:-pad]
        words = layer.lut()[s]
    else:
        return None
    if not words.any():
        return None
    return np.ascontiguousarray(words, np.uint32)


def marker_positions(layer: MarkerLayer, slide_dims: tuple[int, int]):
    """[(marker, x0, y0, cell_w0, cell_h0)] in level-0 pixels for the shown markers."""
    dx, dy, ox, oy = layer_geometry(layer, slide_dims)
    out = []
    for m in layer.shown():
        _, j, i = m.position
        out.append((m, ox + (i + 0.5) * dx, oy + (j + 0.5) * dy, dx, dy))
    return out


#: most pixels of one smoothed heat-map image (the grid is upsampled by up to SMOOTH_FACTOR)
SMOOTH_MAX_PIXELS = 4_000_000
SMOOTH_FACTOR = 8


def smooth_factor(rows: int, cols: int) -> int:
    """Upsampling factor of a heat-map grid for smooth display (1 = none)."""
    n = max(1, rows * cols)
    return int(max(1, min(SMOOTH_FACTOR, math.floor(math.sqrt(SMOOTH_MAX_PIXELS / n)))))


def smooth_heat_values(arr: np.ndarray, factor: int) -> np.ndarray:
    """(rows*f, cols*f) values of a tile grid, bilinear between tile centres.

    Cells without a tile (NaN: background, outside the region) neither pull their
    neighbours down nor spread into the background: values are interpolated from the
    tiles that ran only (normalised convolution: interpolated value*weight / interpolated
    weight), and a pixel shows only where its own cell ran, so a tile at the tissue edge
    keeps its whole square.  Hand-written with scipy's ``map_coordinates`` because Qt's
    smooth scaling would blend NaN cells (transparent) into their neighbours."""
    from scipy.ndimage import map_coordinates

    a = np.asarray(arr, np.float32)
    rows, cols = a.shape
    f = max(1, int(factor))
    valid = np.isfinite(a)
    if f == 1:
        return a.copy()
    yy = (np.arange(rows * f, dtype=np.float32) + 0.5) / f - 0.5
    xx = (np.arange(cols * f, dtype=np.float32) + 0.5) / f - 0.5
    gy, gx = np.meshgrid(yy, xx, indexing="ij")
    coords = np.stack([gy, gx])
    v = map_coordinates(np.where(valid, a, 0.0).astype(np.float32), coords, order=1, mode="nearest")
    w = map_coordinates(valid.astype(np.float32), coords, order=1, mode="nearest")
    own = np.repeat(np.repeat(valid, f, axis=0), f, axis=1)
    out = np.full((rows * f, cols * f), np.nan, np.float32)
    ok = own & (w > 1e-6)
    out[ok] = v[ok] / w[ok]
    return out

