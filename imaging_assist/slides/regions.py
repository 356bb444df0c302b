"""Regions of a slide drawn by the reader (a rectangle or a polygon in level-0 pixels) and a
tile filter by region: only the tiles inside it are analysed.  No Qt.

* A region is a closed polygon ``[(x, y), ...]`` in level-0 pixels; a rectangle is its four
  corners (:func:`rect_polygon`).
* :func:`filter_plan` keeps the tiles of a :class:`~imaging_assist.slides.TilePlan` whose
  area lies at least ``min_inside`` inside the polygon.  The share is measured on a
  ``SAMPLES x SAMPLES`` grid of points per tile (even-odd point-in-polygon in numpy,
  :func:`points_in_polygon`, line by line of samples) rather than by exact clipping with
  shapely: the grid answers to 1/64 of a tile, decides points on the outline always the same
  way, holds for an outline that crosses itself, and for an axis-aligned rectangle the tile
  grid already starts at the rectangle (``plan_tiles(region=bbox)``).
* :func:`run_region` plans the tiles over the polygon's bounding box (with the tissue
  mask), filters them by the polygon and runs :func:`~imaging_assist.slides.run_tiles`; the
  heat-map grid starts at the bounding box.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError
from ..measure import outline_area

#: points per tile side used to measure how much of a tile lies inside a polygon
SAMPLES = 8
#: most vertices accepted in one region (a freehand outline of a whole slide has far fewer)
MAX_VERTICES = 100_000


def as_polygon(points: Sequence[Sequence[float]]) -> np.ndarray:
    """(N, 2) float64 vertices of a closed polygon (the closing vertex is not repeated).
    A one-line :class:`UserError` for fewer than 3 distinct finite vertices."""
    try:
        a = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UserError(f"a region needs numeric (x, y) vertices ({e})") from None
    if a.ndim != 2 or a.shape[1] != 2:
        raise UserError(f"a region needs (x, y) vertices, got an array of shape {a.shape}")
    if len(a) > MAX_VERTICES:
        raise UserError(f"a region has {len(a):,} vertices (at most {MAX_VERTICES:,})")
    if not np.isfinite(a).all():
        raise UserError("a region vertex is not a finite number")
    if len(a) > 1 and np.array_equal(a[0], a[-1]):
        a = a[:-1]
    if len(np.unique(a, axis=0)) < 3:
        raise UserError("a region needs at least 3 distinct vertices")
    return a


def rect_polygon(x: float, y: float, w: float, h: float) -> np.ndarray:
    """The four corners of a level-0 rectangle, clockwise on screen from the top-left."""
    if w <= 0 or h <= 0:
        raise UserError(f"a rectangle needs a positive size, got {w} x {h}")
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)


def polygon_area(points) -> float:
    """Area of a closed polygon (even-odd filled parts, :func:`imaging_assist.measure.outline_area`)
    in the units of its coordinates squared."""
    return outline_area(points)[0]


def bbox(points) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the polygon's bounding box."""
    a = np.asarray(points, np.float64)
    x0, y0 = a.min(axis=0)
    x1, y1 = a.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def points_in_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule for many points (arrays of any equal shape) against one polygon: a point is
    inside when the outline crosses the ray to its right an odd number of times, an edge from y1
    to y2 crossing the points' line at y when ``(y1 > y) != (y2 > y)``, so a point on the outline is
    decided the same way each time (the left and top edges of a rectangle are in, the others out).

    Written out in numpy rather than with shapely: its predicates leave every point on the
    outline out (``contains_xy``) or in (``intersects_xy``), which would change which tiles a
    region keeps, and are not defined for an outline that crosses itself (measured even-odd
    here, as by :func:`polygon_area`).  The points are taken by horizontal line (a tile grid's
    samples lie on few): the crossings of a line are computed once, in one pass over the edges,
    and each of its points counts those to its right by a binary search."""
    px, py = np.broadcast_arrays(np.asarray(px, np.float64), np.asarray(py, np.float64))
    xs, ys = poly[:, 0], poly[:, 1]
    xe, ye = np.roll(xs, -1), np.roll(ys, -1)
    fx, fy = px.ravel(), py.ravel()
    order = np.argsort(fy, kind="stable")
    lines = np.split(order, np.flatnonzero(np.diff(fy[order])) + 1) if len(order) else []
    if len(lines) > len(xs):  # more lines than edges: one pass over the points per edge
        inside = np.zeros(px.shape, bool)
        for x1, y1, x2, y2 in zip(xs, ys, xe, ye):
            if y1 == y2:
                continue
            crosses = (y1 > py) != (y2 > py)
            xi = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (px < xi)
        return inside
    inside = np.zeros(fx.shape, bool)
    for idx in lines:
        y = fy[idx[0]]
        m = (ys > y) != (ye > y)
        x1, y1, x2, y2 = xs[m], ys[m], xe[m], ye[m]
        xi = np.sort(x1 + (y - y1) * (x2 - x1) / (y2 - y1))
        inside[idx] = (len(xi) - np.searchsorted(xi, fx[idx], side="right")) % 2 == 1  # crossings beyond x
    return inside.reshape(px.shape)


def inside_fraction(rects0: np.ndarray, poly: np.ndarray, samples: int = SAMPLES) -> np.ndarray:
    """(N,) share of each level-0 rectangle ``(x, y, w, h)`` inside ``poly`` (sampled)."""
    r = np.asarray(rects0, np.float64).reshape(-1, 4)
    if not len(r):
        return np.zeros(0, np.float32)
    t = (np.arange(samples) + 0.5) / samples
    out = np.empty(len(r), np.float32)
    step = max(1, 200_000 // (samples * samples))
    for a in range(0, len(r), step):  # bounded memory for large plans
        rr = r[a:a + step]
        px = rr[:, 0, None, None] + t[None, None, :] * rr[:, 2, None, None]
        py = rr[:, 1, None, None] + t[None, :, None] * rr[:, 3, None, None]
        px, py = np.broadcast_arrays(px, py)
        out[a:a + step] = points_in_polygon(px, py, poly).mean(axis=(1, 2))
    return out


def filter_plan(plan, points, min_inside: float = 0.5):
    """Keep the tiles of ``plan`` (a TilePlan) lying at least ``min_inside`` inside the
    polygon ``points``; returns the same plan object, filtered (cells, tissue fractions)."""
    poly = as_polygon(points)
    if len(plan):
        frac = inside_fraction(plan.rects0(), poly)
        keep = frac >= min_inside
        plan.cells = plan.cells[keep]
        plan.tissue_fraction = plan.tissue_fraction[keep]
    return plan


def plan_region(slide, points, tile_px: int, mpp: float | None, *, tissue_mask="auto",
                tissue_threshold: float = 0.5, min_inside: float = 0.5):
    """A TilePlan over the polygon ``points`` only (tiles on its bounding-box grid)."""
    from .tiling import plan_tiles

    poly = as_polygon(points)
    w0, h0 = slide.dimensions
    x, y, w, h = bbox(poly)
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(w0), x + w), min(float(h0), y + h)
    if x1 <= x0 or y1 <= y0:
        raise UserError("the region lies outside the slide")
    plan = plan_tiles(slide, tile_px, mpp, tissue_mask=tissue_mask, tissue_threshold=tissue_threshold,
                      region=(x0, y0, x1 - x0, y1 - y0))
    return filter_plan(plan, poly, min_inside)


def run_region(slide, model_fn, points, tile_px: int, mpp: float | None, *, tissue_mask="auto",
               tissue_threshold: float = 0.5, min_inside: float = 0.5, **run_kw):
    """Run ``model_fn`` on the tiles inside the polygon ``points`` (see :func:`plan_region`);
    ``run_kw`` go to :func:`~imaging_assist.slides.run_tiles` (progress, cancel, class_names,
    batch_size, as_tensor, device, top_k).  A one-line UserError when no tile is inside."""
    from .tiling import run_tiles

    plan = plan_region(slide, points, tile_px, mpp, tissue_mask=tissue_mask,
                       tissue_threshold=tissue_threshold, min_inside=min_inside)
    if not len(plan):
        raise UserError("no tissue tile lies inside the drawn region (draw a larger region, or "
                        "over tissue)")
    return run_tiles(slide, model_fn, plan=plan, **run_kw)
