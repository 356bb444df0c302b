"""Tiled slide inference plumbing: plan a tile grid, read tiles efficiently, run a model,
stitch per-class heat maps.

* Tiles are ``tile_px`` square at a requested pixel size ``mpp`` (µm/px).  They are read from
  the coarsest pyramid level at or above that resolution and resampled (exact block mean for
  integer factors, Pillow's antialiased bilinear otherwise).
* Only tissue tiles run (tissue fraction from a :class:`TissueMask` >= ``tissue_threshold``).
* Reading is done per batch as **one region per run of adjacent tiles in a grid row**, not one
  ``read_region`` per tile, so each stored tile is decoded once; a prefetch thread reads the
  next batches while the model runs on the current one.
* Output: per-class probability heat maps on the tile grid (one heat-map pixel per tile,
  ``downsample`` = level-0 pixels per heat-map pixel, ``origin`` = level-0 position of the
  grid), per-class tissue area (mm², or level-0 px² when the slide has no MPP), and the top
  tiles per class.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .reader import MISSING_MPP_MESSAGE, MissingMPPWarning, Slide, SlideError
from .threads import map_grouped
from .tissue import TissueMask, detect_tissue

ProgressFn = Callable[[int, int], None]

#: Largest source region (bytes of RGB) read at once for a run of adjacent tiles.
MAX_RUN_BYTES = 96_000_000

#: Tiles per model call on the CPU when ``model_batch`` is not given.  Measured (CPU time per
#: tile, one torch thread, 224 px tiles, channels-last uint8 input; docs/slide_speed.md): the
#: bench's tiny CNN 1.21 ms at 16 tiles a call, 1.66 at 32, 2.72 at 64 (its first layer's
#: output is 0.8 MB a tile: a 32-tile call no longer fits the 2 MB L2 / shared L3); the
#: shipped path-lung-tissue 3.7-4.4 ms at 4-32, 6.1 at 64.  On a GPU the whole batch goes.
CPU_MODEL_BATCH = 16

#: A requested tile scale within this relative distance of a pyramid level's own scale is
#: read from that level as stored, without resampling (e.g. 0.5 µm/px asked of a 0.499 µm/px
#: scan): the tile then covers the level's pixels and the plan records the true µm/px.
MPP_SNAP = 0.005


class TilingCancelled(Exception):
    """Internal: raised inside the reader thread when the run was cancelled."""


# --------------------------------------------------------------------------- plan


@dataclass
class TilePlan:
    """Where the tiles are.  Tile ``i`` is grid cell ``cells[i] = (row, col)`` covering level-0
    ``[ox + col*sx, ox + (col+1)*sx) x [oy + row*sy, oy + (row+1)*sy)`` with ``(sx, sy) = stride0``.
    """

    slide_dimensions: tuple[int, int]
    tile_px: int
    downsample: tuple[float, float]          # level-0 px per tile px (x, y)
    level: int                               # pyramid level tiles are read from
    level_scale: tuple[float, float]         # level-0 px per pixel of that level (x, y)
    origin: tuple[float, float]              # level-0 (x, y) of grid cell (0, 0)
    grid_shape: tuple[int, int]              # (rows, cols)
    cells: np.ndarray                        # (N, 2) int32 (row, col), row-major order
    tissue_fraction: np.ndarray              # (N,) float32 (1.0 without a mask)
    mpp: float | None                        # µm per tile pixel (None without slide MPP)
    n_grid_tiles: int = 0                    # tiles in the grid before tissue filtering
    warnings: list[str] = field(default_factory=list)

    @property
    def stride0(self) -> tuple[float, float]:
        return self.tile_px * self.downsample[0], self.tile_px * self.downsample[1]

    def __len__(self) -> int:
        return len(self.cells)

    def rects0(self, idx=None) -> np.ndarray:
        """(N, 4) float level-0 (x, y, w, h) of tiles (all, or ``idx``)."""
        cells = self.cells if idx is None else self.cells[np.asarray(idx)]
        sx, sy = self.stride0
        x = self.origin[0] + cells[:, 1] * sx
        y = self.origin[1] + cells[:, 0] * sy
        return np.stack([x, y, np.full_like(x, sx), np.full_like(y, sy)], axis=1)

    def to_dict(self) -> dict:
        return {"tile_px": self.tile_px, "downsample": list(self.downsample), "level": self.level,
                "mpp": self.mpp, "origin": list(self.origin), "grid_shape": list(self.grid_shape),
                "n_tiles": len(self), "n_grid_tiles": self.n_grid_tiles,
                "warnings": list(self.warnings)}


def _resolve_downsample(slide: Slide, mpp: float | None, downsample, warn: list[str]):
    if mpp is not None and mpp <= 0:
        raise SlideError(f"mpp must be positive, got {mpp}")
    if mpp is not None and slide.mpp is not None:
        ds = (mpp / slide.mpp[0], mpp / slide.mpp[1])
        tile_mpp = float(mpp)
    else:
        if mpp is not None:
            msg = (f"{MISSING_MPP_MESSAGE}; tiles are read at "
                   f"{'downsample ' + str(downsample) if downsample else 'the native resolution'} "
                   f"instead of the requested {mpp:g} µm/px")
            warn.append(msg)
            warnings.warn(msg, MissingMPPWarning, stacklevel=3)
        d = 1.0 if downsample is None else downsample
        ds = (float(d), float(d)) if isinstance(d, (int, float)) else (float(d[0]), float(d[1]))
        tile_mpp = None if slide.mpp is None else slide.mpp[0] * ds[0]
    if ds[0] <= 0 or ds[1] <= 0:
        raise SlideError(f"downsample must be positive, got {ds}")
    if min(ds) < 1 - 1e-6:
        warn.append(f"requested resolution is finer than the scan (downsample {min(ds):.3g}); "
                    "tiles are upsampled from level 0")
    return ds, tile_mpp


def _level_for(slide: Slide, downsample: tuple[float, float]) -> int:
    """Coarsest level at or above the wanted resolution along both axes (a level whose x and
    y factors differ, 2x by 3x, is not picked for a 2.8x read: its rows would be upsampled).

    1 % slack: vendor pyramids store e.g. 4.0003 for a nominal 4x level; reading that level
    and resampling by 0.9999 beats decoding 16x the pixels from the level below.
    """
    best = 0
    for i in range(len(slide.level_dimensions)):
        sx, sy = slide.level_scale(i)
        if sx <= downsample[0] * 1.01 and sy <= downsample[1] * 1.01:
            best = i
    return best


def plan_tiles(slide: Slide, tile_px: int = 224, mpp: float | None = 0.5, *,
               downsample: float | tuple[float, float] | None = None,
               tissue_mask: TissueMask | str | None = "auto", tissue_threshold: float = 0.5,
               region: Sequence[float] | None = None) -> TilePlan:
    """Tile grid over ``slide`` (or the level-0 ``region`` ``(x, y, w, h)``).

    ``mpp``: tile pixel size in µm (needs slide MPP).  ``downsample``: level-0 px per tile px,
    used when ``mpp`` is None or the slide has no MPP (then a warning is recorded).
    ``tissue_mask``: a :class:`TissueMask`, ``"auto"`` (detect now) or None (all tiles).
    """
    if tile_px < 1:
        raise SlideError(f"tile size must be at least 1 px, got {tile_px}")
    warn: list[str] = []
    ds, tile_mpp = _resolve_downsample(slide, mpp, downsample, warn)
    level = _level_for(slide, ds)
    lsc = slide.level_scale(level)
    if ds != lsc and all(abs(d / s - 1) <= MPP_SNAP for d, s in zip(ds, lsc)):
        asked = tile_mpp
        ds = (float(lsc[0]), float(lsc[1]))
        if slide.mpp is not None:
            tile_mpp = slide.mpp[0] * ds[0]
            if asked is not None:
                warn.append(f"tiles read at {tile_mpp:.4g} µm/px as stored in level {level} (asked "
                            f"{asked:.4g}; within {MPP_SNAP:.1%}: not resampled)")
    w0, h0 = slide.dimensions
    if region is None:
        rx, ry, rw, rh = 0.0, 0.0, float(w0), float(h0)
    else:
        rx, ry, rw, rh = (float(v) for v in region)
        if not all(math.isfinite(v) for v in (rx, ry, rw, rh)) or rw <= 0 or rh <= 0:
            raise SlideError(f"region must be finite (x, y, width, height) with a positive size, got {region}")
        # Only the part on the slide: a grid starting off the slide would make a heat-map file
        # that read_heatmaps refuses (its origin must lie on the slide).
        x0, y0 = max(rx, 0.0), max(ry, 0.0)
        x1, y1 = min(rx + rw, float(w0)), min(ry + rh, float(h0))
        if x1 <= x0 or y1 <= y0:
            raise SlideError(f"region {tuple(region)} lies outside the {w0} x {h0} px slide")
        if (x0, y0, x1, y1) != (rx, ry, rx + rw, ry + rh):
            warn.append(f"region {tuple(region)} cut to the slide: ({x0:g}, {y0:g}, {x1 - x0:g}, {y1 - y0:g})")
        rx, ry, rw, rh = x0, y0, x1 - x0, y1 - y0
    sx, sy = tile_px * ds[0], tile_px * ds[1]
    cols, rows = max(1, math.ceil(rw / sx - 1e-9)), max(1, math.ceil(rh / sy - 1e-9))
    rr, cc = np.meshgrid(np.arange(rows, dtype=np.int32), np.arange(cols, dtype=np.int32), indexing="ij")
    cells = np.stack([rr.ravel(), cc.ravel()], axis=1)
    plan = TilePlan(slide_dimensions=(w0, h0), tile_px=int(tile_px), downsample=ds, level=level,
                    level_scale=slide.level_scale(level), origin=(rx, ry), grid_shape=(rows, cols),
                    cells=cells, tissue_fraction=np.ones(len(cells), np.float32), mpp=tile_mpp,
                    n_grid_tiles=len(cells), warnings=warn)
    if isinstance(tissue_mask, str):
        if tissue_mask != "auto":
            raise ValueError("tissue_mask must be a TissueMask, 'auto' or None")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingMPPWarning)  # already reported above/at open
            tissue_mask = detect_tissue(slide)
    if tissue_mask is not None:
        frac = tissue_mask.fraction_in_rects(plan.rects0()).astype(np.float32)
        keep = (frac >= tissue_threshold) & (frac > 0)
        plan.cells, plan.tissue_fraction = cells[keep], frac[keep]
    else:
        # Without a mask every tile counts fully, minus what hangs over the slide edge.
        r = plan.rects0()
        inside = (np.clip(r[:, 0] + r[:, 2], 0, w0) - np.clip(r[:, 0], 0, w0)) * \
                 (np.clip(r[:, 1] + r[:, 3], 0, h0) - np.clip(r[:, 1], 0, h0))
        plan.tissue_fraction = (inside / (r[:, 2] * r[:, 3])).astype(np.float32)
    return plan


# --------------------------------------------------------------------------- reading


def _runs(cells: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split row-major cells into runs of adjacent columns: (row, col0, n, first_index)."""
    out = []
    i, n = 0, len(cells)
    while i < n:
        r, c0 = int(cells[i, 0]), int(cells[i, 1])
        j = i + 1
        while j < n and cells[j, 0] == r and cells[j, 1] == c0 + (j - i):
            j += 1
        out.append((r, c0, j - i, i))
        i = j
    return out


@dataclass
class _Run:
    """A run of ``n`` adjacent tiles of one grid row, read as one level region."""

    first: int                      # position of its first tile in the sorted cells
    n: int
    ix: int                         # level-pixel region read (may overhang the level)
    iy: int
    iw: int
    ih: int
    k: tuple[int, int] | None       # integer, aligned: box-average factors (1, 1 = as stored)
    box: tuple[float, float, float, float] | None  # otherwise: Pillow resize box in the region


def _plan_runs(plan: TilePlan, cells_sorted: np.ndarray) -> list[_Run]:
    """The level regions to read for row-major ``cells_sorted`` (one per run of adjacent tiles
    in a grid row, split so a region stays under :data:`MAX_RUN_BYTES`)."""
    t = plan.tile_px
    sx0, sy0 = plan.stride0
    lsx, lsy = plan.level_scale
    fx, fy = plan.downsample[0] / lsx, plan.downsample[1] / lsy   # level px per tile px
    kx, ky = round(fx), round(fy)
    integer = abs(fx - kx) < 1e-6 and abs(fy - ky) < 1e-6 and kx >= 1 and ky >= 1
    # Cap a run's source region so coarse tiles from a fine level keep memory bounded.
    max_run = max(1, int(MAX_RUN_BYTES // (t * t * max(fx, 1.0) * max(fy, 1.0) * 3)))
    out = []
    for r, c0, n, first in _runs(cells_sorted):
        for j in range(0, n, max_run):
            c, m = c0 + j, min(max_run, n - j)
            # level-pixel box of the run (continuous coordinates)
            bx0 = (plan.origin[0] + c * sx0) / lsx
            by0 = (plan.origin[1] + r * sy0) / lsy
            bx1 = bx0 + m * t * fx
            by1 = by0 + t * fy
            aligned = abs(bx0 - round(bx0)) < 1e-6 and abs(by0 - round(by0)) < 1e-6
            if integer and aligned:
                out.append(_Run(first + j, m, int(round(bx0)), int(round(by0)), m * t * kx, t * ky,
                                (kx, ky), None))
            else:
                margin = int(math.ceil(max(fx, fy))) + 1   # filter support for the resampler
                ix, iy = int(math.floor(bx0)) - margin, int(math.floor(by0)) - margin
                iw = int(math.ceil(bx1)) + margin - ix
                ih = int(math.ceil(by1)) + margin - iy
                out.append(_Run(first + j, m, ix, iy, iw, ih, None,
                                (bx0 - ix, by0 - iy, bx1 - ix, by1 - iy)))
    return out


def _read_run(slide: Slide, plan: TilePlan, run: _Run) -> np.ndarray:
    """(n, t, t, 3) uint8 tiles of one run (a view of the resampled strip)."""
    from PIL import Image

    t, n = plan.tile_px, run.n
    region = slide.read_level(plan.level, run.ix, run.iy, run.iw, run.ih)
    if run.k is not None:
        if run.k == (1, 1):
            strip = region
        else:  # exact box average (sizes are multiples of the factors)
            strip = np.asarray(Image.fromarray(region).reduce(run.k))
    else:  # Pillow's antialiased bilinear, one call for the whole run
        strip = np.asarray(Image.fromarray(region).resize((n * t, t), Image.Resampling.BILINEAR, box=run.box))
    return strip.reshape(t, n, t, 3).transpose(1, 0, 2, 3)


_TILE_POOL = None
_TILE_POOL_LOCK = threading.Lock()


def _tile_pool():
    """Threads that read, resample and convert row runs in parallel.  The decoders (imagecodecs,
    OpenSlide's libjpeg), Pillow's resampling and numpy's conversion release the GIL.  A pool
    of its own: the tifffile backend's decode pool is used from inside these threads."""
    global _TILE_POOL
    from concurrent.futures import ThreadPoolExecutor

    with _TILE_POOL_LOCK:
        if _TILE_POOL is None:
            _TILE_POOL = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)),
                                            thread_name_prefix="tile-read")
        return _TILE_POOL


def _read_sorted(slide: Slide, plan: TilePlan, cells: np.ndarray, sink: Callable,
                 into: np.ndarray | None = None) -> None:
    """Read the tiles of ``cells`` (any order); ``sink(positions, tiles)`` receives each run's
    (n, t, t, 3) uint8 tiles and their positions in ``cells`` (a slice or an index array).
    With ``into`` (an ``(>= len(cells), t, t, 3)`` uint8 array) and a backend with
    ``direct_reads``, runs read as stored (no resampling) are copied tile by tile from the backend's decoded tiles straight into
    ``into[position]`` (:meth:`Slide.read_level_into`: no run region, no second copy) and do
    not reach ``sink``.

    Per batch: one prefetch hint (the tifffile backend decodes every stored tile of the batch
    once, in parallel), then the runs read/resampled/handed to ``sink`` in parallel when the
    backend allows concurrent reads.  Each run is computed the same way whatever thread does
    it, so the result does not depend on the parallelism.
    """
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    identity = bool(np.all(order == np.arange(len(order))))
    runs = _plan_runs(plan, cells[order])
    if not runs:
        return
    slide.prefetch_level(plan.level, [(r.ix, r.iy, r.iw, r.ih) for r in runs])

    t = plan.tile_px

    def work(run: _Run) -> None:
        pos = slice(run.first, run.first + run.n) if identity else order[run.first:run.first + run.n]
        if into is not None and run.k == (1, 1) and slide.direct_reads:
            first = run.first if identity else None
            for j in range(run.n):
                p = first + j if identity else int(pos[j])
                slide.read_level_into(plan.level, run.ix + j * t, run.iy, into[p])
            return
        sink(pos, _read_run(slide, plan, run))

    if slide.concurrent_reads and len(runs) > 1:
        map_grouped(work, runs, _tile_pool())  # this thread takes a share; first error raised
    else:
        for run in runs:
            work(run)


def read_tiles(slide: Slide, plan: TilePlan, idx: Sequence[int] | slice | None = None) -> np.ndarray:
    """(n, tile_px, tile_px, 3) uint8 tiles for plan indices ``idx`` (default: all).

    Adjacent tiles of a grid row are read as one region and resampled together; the stored
    tiles of the whole request are decoded once, in parallel where the backend allows.
    """
    cells = plan.cells if idx is None else plan.cells[idx]
    t = plan.tile_px
    out = np.empty((len(cells), t, t, 3), np.uint8)

    def sink(pos, tiles):
        out[pos] = tiles

    _read_sorted(slide, plan, cells, sink)
    return out


def read_batch_u8_into(slide: Slide, plan: TilePlan, idx, out: np.ndarray) -> np.ndarray:
    """Read tiles ``idx`` straight into ``out[:n]``, a preallocated ``(>= n, t, t, 3)`` uint8
    buffer (tiles read as stored are copied from the decoded stored tiles into their slot;
    resampled runs are copied in once).  Returns ``out[:n]``."""
    cells = plan.cells[idx]
    dst = out[:len(cells)]

    def sink(pos, tiles):
        dst[pos] = tiles

    _read_sorted(slide, plan, cells, sink, into=dst)
    return dst


_SCALE = np.float32(1.0 / 255.0)


def read_batch_into(slide: Slide, plan: TilePlan, idx, out: np.ndarray) -> np.ndarray:
    """Read tiles ``idx`` straight into ``out[:n]``, a preallocated ``(>= n, t, t, 3)`` float32
    channels-last buffer, as RGB in 0..1 (the same values as :func:`tiles_to_batch`).  Returns
    the ``(n, 3, t, t)`` view of it (channels-last strides: no transposing copy)."""
    cells = plan.cells[idx]
    n = len(cells)
    dst = out[:n]

    def sink(pos, tiles):
        if isinstance(pos, slice):
            np.multiply(tiles, _SCALE, out=dst[pos])
        else:
            for j, p in enumerate(pos):
                np.multiply(tiles[j], _SCALE, out=dst[p])

    _read_sorted(slide, plan, cells, sink)
    return dst.transpose(0, 3, 1, 2)


def tiles_to_batch(tiles: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float32 in 0..1 (C-contiguous)."""
    x = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), np.float32)
    np.multiply(tiles.transpose(0, 3, 1, 2), _SCALE, out=x)
    return x


# --------------------------------------------------------------------------- result


@dataclass
class TopTile:
    x: int                 # level-0 rectangle of the tile
    y: int
    w: int
    h: int
    score: float
    row: int               # grid cell (heat-map pixel)
    col: int

    def to_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": round(self.score, 6),
                "row": self.row, "col": self.col}


@dataclass
class TileResult:
    class_names: list[str]
    heatmaps: np.ndarray                     # (C, rows, cols) float32; NaN where no tile ran
    downsample: tuple[float, float]          # level-0 px per heat-map px (= tile stride)
    origin: tuple[float, float]              # level-0 (x, y) of heat-map pixel (0, 0)'s corner
    slide_dimensions: tuple[int, int]
    slide_mpp: tuple[float, float] | None
    coords: np.ndarray                       # (N, 2) int64 level-0 (x, y) of tiles that ran
    cells: np.ndarray                        # (N, 2) int32 (row, col)
    probs: np.ndarray                        # (N, C) float32
    tissue_fraction: np.ndarray              # (N,) float32
    area_px: dict[str, float]                # tissue area per predicted class, level-0 px²
    area_mm2: dict[str, float] | None        # same in mm² (None without MPP)
    top_tiles: dict[str, list[TopTile]]
    plan: TilePlan
    mpp: float | None                        # µm per tile pixel
    warnings: list[str] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0
    read_s: float = 0.0                      # time the reader spent (overlaps model time)
    model_s: float = 0.0

    @property
    def n_tiles(self) -> int:
        return len(self.probs)

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def area_unit(self) -> str:
        return "mm2" if self.area_mm2 is not None else "px"

    @property
    def areas(self) -> dict[str, float]:
        """Per-class tissue area in :attr:`area_unit`."""
        return self.area_mm2 if self.area_mm2 is not None else self.area_px

    def heatmap(self, name_or_index) -> np.ndarray:
        i = self.class_names.index(name_or_index) if isinstance(name_or_index, str) else int(name_or_index)
        return self.heatmaps[i]

    def heatmap_mpp(self) -> tuple[float, float] | None:
        """µm per heat-map pixel (None without MPP)."""
        if self.slide_mpp is None:
            return None
        return self.slide_mpp[0] * self.downsample[0], self.slide_mpp[1] * self.downsample[1]

    def to_layers(self, colormap: str | None = None, opacity: float = 0.4) -> list:
        """One :class:`imaging_assist.layers.HeatmapLayer` per class, on the heat-map grid
        (each pixel = ``downsample`` level-0 pixels, starting at ``origin``); the app's heat
        colour map unless one is named."""
        from ..colormaps import DEFAULT_HEAT_COLORMAP
        from ..layers import HeatmapLayer
        colormap = colormap or DEFAULT_HEAT_COLORMAP
        layers = [HeatmapLayer(name, self.heatmaps[i], colormap=colormap, opacity=opacity,
                               vmin=0.0, vmax=1.0, units="probability")
                  for i, name in enumerate(self.class_names)]
        ds = tuple(float(v) for v in (self.downsample if np.ndim(self.downsample) else (self.downsample,) * 2))
        for layer in layers:  # placement on the slide travels with the layer
            object.__setattr__(layer, "downsample", ds)
            object.__setattr__(layer, "origin", (float(self.origin[0]), float(self.origin[1])))
        return layers

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "grid_shape": list(self.heatmaps.shape[1:]),
                "downsample": list(self.downsample), "origin": list(self.origin),
                "slide_dimensions": list(self.slide_dimensions),
                "slide_mpp": list(self.slide_mpp) if self.slide_mpp else None,
                "tile_mpp": self.mpp, "tile_px": self.plan.tile_px, "level": self.plan.level,
                "n_tiles": self.n_tiles, "n_planned": len(self.plan), "n_grid_tiles": self.plan.n_grid_tiles,
                "area_unit": self.area_unit, "areas": {k: round(v, 6) for k, v in self.areas.items()},
                "area_px": {k: round(v, 1) for k, v in self.area_px.items()},
                "top_tiles": {k: [t.to_dict() for t in v] for k, v in self.top_tiles.items()},
                "cancelled": self.cancelled, "elapsed_s": round(self.elapsed_s, 3),
                "tiles_per_s": round(self.tiles_per_s, 2), "warnings": list(self.warnings)}


# --------------------------------------------------------------------------- running


def _cancel_checker(cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be a threading.Event, a callable returning bool, or None")


def _to_numpy(y) -> np.ndarray:
    """A copy: the model may return a view of its input, whose buffer is reused."""
    if hasattr(y, "detach"):
        y = y.detach().cpu().float().numpy()
    return np.array(y, dtype=np.float32, copy=True)


def _model_device(torch, model_fn, device):
    """Where batches go: ``device`` if given, else the device of a torch module's parameters."""
    if device is not None:
        return torch.device(device)
    if isinstance(model_fn, torch.nn.Module):
        for p in model_fn.parameters():
            return p.device
    return torch.device("cpu")


class _Feeder:
    """Fills batches into a ring of preallocated uint8 channels-last buffers ``(N, t, t, 3)``.

    Tiles stay uint8 until the model: a model that says ``accepts_uint8`` gets the uint8
    batch (its first step converts it, e.g. fused with its normalisation); any other model
    gets float32 0..1 made by one vectorised multiply over the whole batch into a second
    (float) ring.  One code path for CPU and CUDA: on CUDA the uint8 ring is pinned and each
    batch is copied to the device on a side stream right after it is read (in the reading
    thread; 4x fewer bytes than float), converted there when the model wants float, so the
    copy overlaps the model's work on the previous batch; the consumer's stream waits for
    the copy's event.  A buffer is reused ``count`` batches later: by then the model has
    returned on it (the reading thread is at most ``prefetch`` batches ahead of the bounded
    queue, plus one being filled and one with the model).
    """

    def __init__(self, slide: Slide, plan: TilePlan, batch_size: int, count: int, torch, device,
                 uint8: bool = False):
        self.slide, self.plan, self.torch = slide, plan, torch
        t = plan.tile_px
        shape = (min(batch_size, max(1, len(plan))), t, t, 3)
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.uint8 = uint8
        if self.cuda:
            self.host = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
            self.bufs = [h.numpy() for h in self.host]
            self.stream = torch.cuda.Stream(device)
            self.events: list = [None] * count
        else:
            self.bufs = _take_ring(shape, count, np.uint8)
            self.fbufs = None if uint8 else _take_ring(shape, count, np.float32)
        self.count = count
        self.i = 0

    def close(self) -> None:
        """Hand the CPU buffers back for the next call (the reading thread has stopped and the
        model has returned on them)."""
        if not self.cuda:
            _give_ring(self.bufs)
            if self.fbufs is not None:
                _give_ring(self.fbufs)
            self.bufs = self.fbufs = None

    def fill(self, b: np.ndarray):
        """(indices, batch, event or None) for plan indices ``b``."""
        slot = self.i % self.count
        self.i += 1
        if self.cuda and self.events[slot] is not None:
            self.events[slot].synchronize()   # the last copy out of this pinned buffer is done
        u8 = read_batch_u8_into(self.slide, self.plan, b, self.bufs[slot])
        if not self.cuda:
            if self.uint8:
                return b, u8.transpose(0, 3, 1, 2), None
            x = self.fbufs[slot][:len(b)]
            np.multiply(u8, _SCALE, out=x)   # the whole batch at once
            return b, x.transpose(0, 3, 1, 2), None
        torch = self.torch
        with torch.cuda.stream(self.stream):
            xd = self.host[slot][:len(b)].to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            if not self.uint8:
                xd = xd.float().mul_(float(_SCALE))
            ev = torch.cuda.Event()
            ev.record(self.stream)
        self.events[slot] = ev
        return b, xd, ev

    def ready(self, x, ev):
        """The batch as the model gets it (after its copy, on CUDA)."""
        if ev is None:
            return x
        cur = self.torch.cuda.current_stream(self.device)
        cur.wait_event(ev)
        x.record_stream(cur)  # allocated on the side stream, used on this one
        return x


_END = object()

# Batch rings (CPU) are kept for the next run_tiles call instead of being allocated again: a
# fresh 4 x 32-tile uint8 ring (19 MB) page-faults on its first writes, every call (measured:
# 12,100 -> 10,700 page faults per 512-tile read, docs/slide_speed.md round 3).  Bounded: at
# most _RING_KEEP_BYTES of idle rings.  Each call takes a ring of its own (two runs at once
# never share one).  CUDA rings (pinned, with their events) are made per call.
_RINGS: list = []
_RINGS_LOCK = threading.Lock()
_RING_KEEP_BYTES = 128 << 20


def _take_ring(shape, count: int, dtype) -> list[np.ndarray]:
    key = (tuple(shape), count, np.dtype(dtype).str)
    with _RINGS_LOCK:
        for i, (k, bufs) in enumerate(_RINGS):
            if k == key:
                del _RINGS[i]
                return bufs
    return [np.empty(shape, dtype) for _ in range(count)]


def _give_ring(bufs: list[np.ndarray]) -> None:
    key = (tuple(bufs[0].shape), len(bufs), bufs[0].dtype.str)
    if sum(a.nbytes for a in bufs) > _RING_KEEP_BYTES:
        return  # too big to keep idle
    with _RINGS_LOCK:
        _RINGS.insert(0, (key, bufs))
        total = 0
        for i, (_, b) in enumerate(_RINGS):
            total += sum(a.nbytes for a in b)
            if total > _RING_KEEP_BYTES:
                del _RINGS[i:]
                break


def run_tiles(slide: Slide, model_fn: Callable, tile_px: int = 224, mpp: float | None = 0.5,
              batch_size: int = 32, tissue_mask: TissueMask | str | None = "auto",
              progress: ProgressFn | None = None, cancel=None, *,
              downsample: float | tuple[float, float] | None = None, tissue_threshold: float = 0.5,
              region: Sequence[float] | None = None, class_names: Sequence[str] | None = None,
              top_k: int = 10, prefetch: int = 2, as_tensor: bool | None = None,
              plan: TilePlan | None = None, device=None, model_batch: int | None = None) -> TileResult:
    """Run ``model_fn`` over the tissue tiles of ``slide``; stitch heat maps.

    ``model_fn(batch) -> (N, C)`` probabilities; ``batch`` is (N, 3, tile_px, tile_px) float32
    RGB in 0..1 (no normalisation: that is the model's job), a numpy array, or a torch tensor
    when ``as_tensor`` (default: when ``model_fn`` is a ``torch.nn.Module``).  It runs under
    ``torch.inference_mode()`` when torch is loaded.  The batch lives in a reused buffer with
    channels-last strides (not C-contiguous): it is valid during the call only, so a
    ``model_fn`` that keeps it must copy it.  A ``model_fn`` with a true ``accepts_uint8``
    attribute gets the tiles as uint8 0..255 instead (same layout) and converts them itself
    (saves a float pass when its first step rescales anyway, and 4x on a GPU copy).
    ``model_batch``: tiles per ``model_fn`` call (default: ``batch_size`` on CUDA, at most
    :data:`CPU_MODEL_BATCH` on the CPU): reading stays in batches of ``batch_size`` (parallel
    decoding per batch) while a convolutional model runs faster on the CPU on slices whose
    activations stay in the cache.
    ``device`` (torch tensors only): where batches are handed over; default the device of a
    torch module's parameters, else the CPU.  On CUDA the buffers are pinned and copied ahead.
    ``progress(done, total)`` is called after each batch; ``cancel`` (a ``threading.Event`` or
    a callable) stops the run between batches and returns what was done with
    ``cancelled=True``.  ``prefetch``: batches read ahead on a background thread (0 = none),
    through a bounded queue.
    Other arguments as in :func:`plan_tiles`.
    """
    t_start = time.perf_counter()
    if batch_size < 1:
        raise SlideError(f"batch size must be at least 1, got {batch_size}")
    if plan is None:
        plan = plan_tiles(slide, tile_px, mpp, downsample=downsample, tissue_mask=tissue_mask,
                          tissue_threshold=tissue_threshold, region=region)
    warn = list(plan.warnings)
    is_cancelled = _cancel_checker(cancel)
    # A torch model has imported torch already; numpy-only callers do not pay for the import.
    torch = sys.modules.get("torch")
    if as_tensor and torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    if as_tensor is None:
        as_tensor = torch is not None and isinstance(model_fn, torch.nn.Module)
    if as_tensor and torch is None:
        raise SlideError("as_tensor needs torch, which is not installed")
    dev = _model_device(torch, model_fn, device) if as_tensor else None
    if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise SlideError(f"device {dev} was asked for, but torch sees no CUDA device here")

    n = len(plan)
    batches = [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
    probs_parts: list[np.ndarray] = []
    n_classes: int | None = None
    done = 0
    timing = {"read": 0.0, "model": 0.0}
    uint8 = bool(getattr(model_fn, "accepts_uint8", False))
    feeder = _Feeder(slide, plan, batch_size, prefetch + 2 if prefetch > 0 else 1, torch, dev, uint8)
    if model_batch and model_batch >= 1:
        mb = int(model_batch)
    else:
        mb = batch_size if dev is not None and dev.type == "cuda" else min(batch_size, CPU_MODEL_BATCH)

    def forward(x):
        if mb >= len(x):
            return _to_numpy(model_fn(x))
        return np.concatenate([_to_numpy(model_fn(x[i:i + mb])) for i in range(0, len(x), mb)])


    def read_batch(b):
        t0 = time.perf_counter()
        item = feeder.fill(b)
        timing["read"] += time.perf_counter() - t0
        return item

    def batch_source():
        """Yields (indices, batch, event); reads ahead on a thread when prefetch > 0."""
        if prefetch <= 0:
            for b in batches:
                if is_cancelled():
                    return
                yield read_batch(b)
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def producer():
            try:
                for b in batches:
                    if stop.is_set() or is_cancelled():
                        break
                    if not put(read_batch(b)):
                        return
                put(_END)
            except BaseException as e:  # handed to the consumer
                put(e)

        th = threading.Thread(target=producer, name="tile-prefetch", daemon=True)
        th.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            th.join(timeout=30)
            if th.is_alive():  # still reading (a stuck file?): its buffers are not handed back
                reader_alive.append(th)

    reader_alive: list = []
    if progress:
        progress(0, n)
    ctx = torch.inference_mode() if torch is not None else _nullcontext()
    source = batch_source()
    try:
        with ctx:
            for b, x, ev in source:
                if is_cancelled():
                    break
                t0 = time.perf_counter()
                if as_tensor:
                    x = feeder.ready(x, ev) if ev is not None else torch.from_numpy(x).to(dev)
                y = forward(x)
                timing["model"] += time.perf_counter() - t0
                if y.ndim == 1 and len(b) == 1:
                    y = y[None]
                if y.ndim != 2 or y.shape[0] != len(b):
                    raise SlideError(f"model_fn returned shape {tuple(y.shape)} for a batch of {len(b)} "
                                     "tiles; expected (N, C) probabilities")
                if n_classes is None:
                    n_classes = y.shape[1]
                elif y.shape[1] != n_classes:
                    raise SlideError(f"model_fn returned {y.shape[1]} classes after {n_classes}")
                probs_parts.append(y)
                done += len(b)
                if progress:
                    progress(done, n)
    finally:
        source.close()  # stops and joins the prefetch thread, also on errors
        if not reader_alive:
            feeder.close()  # its buffers serve the next call
    if n_classes is None:
        n_classes = len(class_names) if class_names else 1
    names = list(class_names) if class_names else [f"class {i}" for i in range(n_classes)]
    if len(names) != n_classes:
        raise SlideError(f"{len(names)} class names for a model with {n_classes} outputs")
    probs = np.concatenate(probs_parts) if probs_parts else np.zeros((0, n_classes), np.float32)
    result = stitch_tiles(slide, plan, probs, names, top_k, warn)
    result.elapsed_s = time.perf_counter() - t_start
    result.read_s, result.model_s = timing["read"], timing["model"]
    return result


def stitch_tiles(slide: Slide, plan: TilePlan, probs: np.ndarray, names: list[str], top_k: int,
                 warn: list[str]) -> TileResult:
    """The :class:`TileResult` of ``plan`` from the probabilities of its first ``len(probs)``
    tiles (in plan order; fewer than ``len(plan)``: the run was cancelled).  :func:`run_tiles`
    ends here, and so does a slide whose tiles ran in parts on several workers
    (:func:`imaging_assist.slides.analysis.finish_slide`)."""
    n_done, n = len(probs), len(plan)
    if not np.all(np.isfinite(probs)):
        warn.append("model produced non-finite outputs for some tiles (NaN in the heat map)")
    result = _assemble(slide, plan, probs, names, top_k, warn)
    result.cancelled = n_done < n
    if result.cancelled:
        result.warnings.append(f"cancelled after {n_done} of {n} tiles")
    return result


def plan_part(plan: TilePlan, start: int, stop: int) -> TilePlan:
    """Tiles ``start:stop`` of ``plan`` as a plan of their own (same grid): what one worker
    runs when a slide's tiles are spread over several."""
    import dataclasses

    return dataclasses.replace(plan, cells=plan.cells[start:stop].copy(),
                               tissue_fraction=plan.tissue_fraction[start:stop].copy(),
                               warnings=list(plan.warnings))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _assemble(slide: Slide, plan: TilePlan, probs: np.ndarray, names: list[str], top_k: int,
              warn: list[str]) -> TileResult:
    n_done = len(probs)
    c = len(names)
    rows, cols = plan.grid_shape
    heat = np.full((c, rows, cols), np.nan, np.float32)
    cells = plan.cells[:n_done]
    if n_done:
        heat[:, cells[:, 0], cells[:, 1]] = probs.T
    rects = plan.rects0(np.arange(n_done)) if n_done else np.zeros((0, 4))
    frac = plan.tissue_fraction[:n_done].astype(np.float64)
    # Tissue area of each tile (level-0 px²), assigned to its most probable class.
    area_each = frac * rects[:, 2] * rects[:, 3] if n_done else np.zeros(0)
    arg = np.nanargmax(np.where(np.isfinite(probs), probs, -np.inf), axis=1) if n_done else np.zeros(0, int)
    area_px = {name: float(area_each[arg == i].sum()) for i, name in enumerate(names)}
    mpp = slide.mpp
    if mpp is not None:
        area_mm2 = {k: v * mpp[0] * mpp[1] * 1e-6 for k, v in area_px.items()}
    else:
        area_mm2 = None
        if MISSING_MPP_MESSAGE not in " ".join(warn):
            warn.append(MISSING_MPP_MESSAGE)
            warnings.warn(f"{slide.path}: {MISSING_MPP_MESSAGE}", MissingMPPWarning, stacklevel=3)
    top: dict[str, list[TopTile]] = {}
    for i, name in enumerate(names):
        if not n_done or top_k <= 0:
            top[name] = []
            continue
        s = np.where(np.isfinite(probs[:, i]), probs[:, i], -np.inf)
        k = min(top_k, n_done)
        best = np.argpartition(-s, k - 1)[:k]
        best = best[np.argsort(-s[best], kind="stable")]
        top[name] = [TopTile(int(round(rects[j, 0])), int(round(rects[j, 1])), int(round(rects[j, 2])),
                             int(round(rects[j, 3])), float(probs[j, i]), int(cells[j, 0]), int(cells[j, 1]))
                     for j in best if np.isfinite(s[j])]
    coords = np.round(rects[:, :2]).astype(np.int64) if n_done else np.zeros((0, 2), np.int64)
    return TileResult(class_names=names, heatmaps=heat, downsample=plan.stride0, origin=plan.origin,
                      slide_dimensions=plan.slide_dimensions, slide_mpp=mpp, coords=coords,
                      cells=cells.copy(), probs=probs.astype(np.float32),
                      tissue_fraction=plan.tissue_fraction[:n_done].copy(), area_px=area_px,
                      area_mm2=area_mm2, top_tiles=top, plan=plan, mpp=plan.mpp, warnings=warn)
