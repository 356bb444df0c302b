"""The slide view: a whole-slide image (pyramid) drawn from tiles, with overlays.

* Tiles come from the pyramid level that matches the zoom (OpenSlide's rule: the coarsest
  level with at least the screen's resolution, counted in device pixels: at a device pixel
  ratio of 2 a logical pixel is 2 x 2 screen pixels), only those in view, read on worker threads
  (:class:`~imaging_assist_ui.slides.slide_tiles.TileLoader`) into a memory-bounded LRU.  A tile
  that is not there yet is drawn from the best coarser tile already cached (or the
  thumbnail), scaled up; the GUI thread never reads the file.
* Tiles are laid on an integer screen grid per zoom (tile edges at ``round(x0 * scale)``),
  so panning moves whole pixels and the per-zoom resized tiles are plain blits.  They are
  resized to their size in device pixels and drawn in device coordinates (the logical grid's
  edges times the device pixel ratio, rounded), so a high-DPI screen gets its full detail;
  every coordinate mapping (``screen_to_slide`` ...) stays in logical pixels.
* Overlay layers (:mod:`imaging_assist.layers`) are placed with their level-0 geometry
  (:mod:`imaging_assist_ui.slides.slide_layers`), coloured per screen tile and cached per zoom.
* HUD: name / size / MPP, a scale bar in µm (only with MPP; without it a "no MPP" notice
  and a bar in pixels), zoom / level, heat-map legend, and an overview (thumbnail) with the
  view rectangle that can be clicked or dragged to navigate.

Keys: + / - zoom, arrows pan (Shift: more), F fit.  Mouse: drag pans, the wheel zooms
around the cursor, double-click zooms in.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPen, QTransform
from PySide6.QtWidgets import QWidget

from imaging_assist.layers import HeatmapLayer, LabelLayer, LayerStack, MarkerLayer, Plane

from .slide_layers import (layer_geometry, marker_positions, render_layer_tile, smooth_factor,
                           smooth_heat_values)
from .slide_tiles import (MAX_VISIBLE_TILES, TILE, TileCache, TileLoader, best_level, rgb_to_qimage,
                          tile_grid)
from ..shared.theme import ACCENT, WARN_BG, WARN_FG

BG = QColor("#101113")          # outside the slide
PLACEHOLDER = QColor("#3a3c41")  # inside the slide, nothing decoded yet
ERROR_TILE = QColor("#5a2a2a")
THUMB_SIZE = 1024
SCALE_BUDGET_S = 0.012  # smooth tile resizing per paint (see SlideView._scaled_tile)
NO_MPP_NOTICE = "no MPP: distances in pixels"
_ERR = "error"  # cache value of a tile that could not be read


def nice_length(raw: float) -> float:
    """The largest of 1, 2, 5 x 10^n that is <= raw (raw > 0)."""
    if raw <= 0 or not math.isfinite(raw):
        return 0.0
    e = math.floor(math.log10(raw))
    for m in (5, 2, 1):
        v = m * 10.0 ** e
        if v <= raw * (1 + 1e-9):
            return v
    return 10.0 ** e


def format_um(um: float) -> str:
    if um >= 1000:
        return f"{um / 1000:g} mm"
    return f"{um:g} µm"


def _thread_count() -> int:
    return max(2, min(4, os.cpu_count() or 2))


class SlideView(QWidget):
    """Shows one :class:`imaging_assist.slides.Slide`.  ``layers``: the overlay stack
    (the main window passes its document's stack, so the Overlays panel toggles them)."""

    viewChanged = Signal()           # zoom / pan / size changed, or the thumbnail arrived
    cursorInfo = Signal(str)
    firstViewComplete = Signal(float)  # perf_counter() of the first complete screen
    thumbnailReady = Signal()
    tileFailed = Signal(str)

    def __init__(self, layers: LayerStack | None = None, cache_mb: float = 256.0, threads: int | None = None,
                 parent=None):
        super().__init__(parent)
        self.layers = layers if layers is not None else LayerStack()
        self.layers.subscribe(self._on_layers)
        self.show_overlays = True
        self.show_hud = True
        self.show_overview = True
        self.show_info_text = True   # name / size / MPP at the top left (off when a panel shows them)
        self.slide = None
        self.threads = threads or _thread_count()
        self.cache = TileCache(cache_mb)                      # decoded tiles, per (level, col, row)
        self._cache_budget = self.cache.max_bytes
        self._scaled = TileCache(max(32.0, cache_mb / 4))     # the same at the current zoom (device px)
        self._scaled_budget = self._scaled.max_bytes
        self._scaled_tag = None
        self._overlay = TileCache(max(32.0, cache_mb / 4))    # overlay tiles at the current zoom
        self._overlay_tag = None
        self._layer_images: dict = {}  # id(layer) -> (layer, version key, QImage | None)
        self._smooth_values: dict = {}  # id(layer) -> (array, factor, interpolated values)
        self.loader: TileLoader | None = None
        self.thumb: QImage | None = None
        self.scale = 1.0      # screen px per level-0 px
        self.ox = 0.0         # world x (level-0 x * scale) of the widget's left edge
        self.oy = 0.0
        self.fit_mode = True
        self.min_scale = 1e-4
        self.max_scale = 8.0
        self.t_open: float | None = None
        self.first_complete_at: float | None = None
        self.complete = False
        self.paint_count = 0
        self.last_paint: dict = {}
        self.errors: list[str] = []
        self._req_sig = None
        self._drafts = False
        self._pan_dir = (0, 0)
        self._drag = None
        self._cursor = None
        self._wheel_accum = 0.0
        self.smooth_heat = True  # heat maps interpolated between tile centres (False: tile blocks)
        self.tools = None  # drawing tools (ui/slides/slide_tools.SlideTools) get the mouse first
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAttribute(Qt.WA_OpaquePaintEvent, True)
        self.setMinimumSize(200, 160)
        f = QFont(self.font())
        f.setPointSizeF(10)
        self._font = f
        self._font_b = QFont(f)
        self._font_b.setBold(True)
        self.overview = SlideOverview(self)
        self.overview.navigate.connect(self.center_on)
        self.overview.hide()
        self.legend_rect = None
        self.legend_box = None
        self.no_mpp_rect = None
        self._scale_bar_rect = None
        self._again = QTimer(self)  # repaint soon (overlay tiles left for the next frame)
        self._again.setSingleShot(True)
        self._again.setInterval(0)
        self._again.timeout.connect(self.update)
        self._progress = QTimer(self)  # throttles repaints while tiles arrive
        self._progress.setSingleShot(True)
        self._progress.setInterval(30)
        self._progress.timeout.connect(self.update)

    # ================================================================== slide
    def set_slide(self, slide, t_open: float | None = None) -> None:
        """Show ``slide`` (an open :class:`Slide`; the view does not close it)."""
        self._stop_loader()
        self.slide = slide
        self.cache.clear()
        self._scaled.clear()
        self._overlay.clear()
        self._scaled_tag = self._overlay_tag = None
        self.thumb = None
        self.errors = []
        self.complete = False
        self.first_complete_at = None
        self.t_open = t_open if t_open is not None else time.perf_counter()
        self._req_sig = None
        self.overview.hide()
        if slide is None:
            self.update()
            return
        self._thumb_cost = self._thumbnail_cost()
        loader = TileLoader(lambda key, s=slide: self._fetch(s, key), threads=self.threads, parent=self)
        loader.ready.connect(lambda ld=loader: self._results(ld))
        self.loader = loader
        self.fit()
        self._place_overview()

    def close_slide(self) -> list:
        """Forget the slide (the caller closes it).  Returns loader threads still inside a
        read (close the file only after they end)."""
        busy = self._stop_loader()
        self.slide = None
        self.cache.clear()
        self._scaled.clear()
        self._overlay.clear()
        self.thumb = None
        self.overview.hide()
        self.update()
        return busy

    def _stop_loader(self) -> list:
        busy = []
        if self.loader is not None:
            busy = self.loader.shutdown(wait=1.0)
            self.loader.deleteLater()
            self.loader = None
        return busy

    def _thumbnail_cost(self) -> float:
        """Pixels decoded for the thumbnail (it reads the smallest level >= its size)."""
        s = self.slide
        w0, h0 = s.dimensions
        f = max(w0, h0) / THUMB_SIZE
        lvl = s.get_best_level_for_downsample(max(1.0, f))
        lw, lh = s.level_dimensions[lvl]
        return float(lw) * float(lh)

    @staticmethod
    def _fetch(slide, key):
        """Runs on a loader thread."""
        if key[0] == "t":
            _, level, col, row = key
            lw, lh = slide.level_dimensions[level]
            x, y = col * TILE, row * TILE
            return rgb_to_qimage(slide.read_level(level, x, y, min(TILE, lw - x), min(TILE, lh - y)))
        if key[0] == "thumb":
            return rgb_to_qimage(slide.get_thumbnail(THUMB_SIZE))
        raise ValueError(key)

    def _ensure_cache_floor(self) -> None:
        """The decoded-tile budget never drops below twice what one screen needs (a budget
        smaller than the screen could never show it complete and would re-read forever), and
        the resized-tile budget never below one screen of them with a ring of partial tiles
        (they are resized smoothly within a time budget per paint: a cache that cannot hold
        the screen would redo them forever).  Both count the screen in device pixels: at a
        device pixel ratio of 2 the level drawn and the resized tiles have 4x the pixels."""
        dpr = self.devicePixelRatioF()
        w, h = math.ceil(self.width() * dpr), math.ceil(self.height() * dpr)
        need = (math.ceil(w / TILE) + 2) * (math.ceil(h / TILE) + 2) * TILE * TILE * 4 * 2
        self.cache.max_bytes = max(self._cache_budget, need)
        # smooth-resized tiles are < 2 TILE device px a side: partial ones reach 2 TILE past each edge
        self._scaled.max_bytes = max(self._scaled_budget, (w + 4 * TILE) * (h + 4 * TILE) * 4)

    def _results(self, loader):
        if loader is not self.loader:
            return
        got = False
        for key, value, error in loader.take_results():
            if key[0] == "thumb":
                if value is not None:
                    self.thumb = value
                    self._place_overview()
                    self.thumbnailReady.emit()
                    self.viewChanged.emit()
                else:
                    self.errors.append(f"thumbnail: {error}")
                    self.tileFailed.emit(f"thumbnail: {error}")
                got = True
                continue
            if error is not None:
                self.cache.put(key, _ERR)
                if len(self.errors) < 50:
                    self.errors.append(f"tile {key[1:]}: {error}")
                if len(self.errors) == 1:
                    self.tileFailed.emit(error)
            else:
                self.cache.put(key, value)
            got = True
        if got:
            # While tiles stream in, repaint at most every 30 ms (painting competes with the
            # decoders for the CPU); the paint that completes the screen is not delayed.
            if not any(k not in self.cache for k in self.tile_screen_rects()):
                self._progress.stop()
                self.update()
            elif not self._progress.isActive():
                self._progress.start()

    # ================================================================== geometry
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.slide.dimensions if self.slide is not None else (1, 1)

    def world_origin(self) -> tuple[int, int]:
        """Integer world coordinates of the widget's top-left pixel (tile grid = world grid)."""
        return int(round(self.ox)), int(round(self.oy))

    def screen_to_slide(self, p) -> tuple[float, float]:
        """Widget point (QPointF or (x, y)) -> level-0 coordinates."""
        x, y = (p.x(), p.y()) if hasattr(p, "x") else p
        rx, ry = self.world_origin()
        return (x + rx) / self.scale, (y + ry) / self.scale

    def slide_to_screen(self, x0: float, y0: float) -> QPointF:
        rx, ry = self.world_origin()
        return QPointF(x0 * self.scale - rx, y0 * self.scale - ry)

    def center(self) -> tuple[float, float]:
        """Level-0 point at the widget centre."""
        return (self.ox + self.width() / 2) / self.scale, (self.oy + self.height() / 2) / self.scale

    def visible_rect0(self) -> tuple[float, float, float, float]:
        """(x, y, w, h) of the view in level-0 pixels."""
        x0, y0 = self.screen_to_slide((0, 0))
        return x0, y0, self.width() / self.scale, self.height() / self.scale

    def fit_scale(self) -> float:
        w0, h0 = self.dimensions
        return max(1e-6, min(max(1, self.width()) / w0, max(1, self.height()) / h0) * 0.95)

    def fit(self) -> None:
        """Whole slide in view (F)."""
        self.fit_mode = True
        if self.slide is None:
            self.update()
            return
        s = self.fit_scale()
        self.min_scale = min(s * 0.5, 1.0)
        self.max_scale = max(8.0, s * 2)
        w0, h0 = self.dimensions
        self._set(s, w0 / 2 * s - self.width() / 2, h0 / 2 * s - self.height() / 2)
        self.fit_mode = True

    def _set(self, scale: float, ox: float, oy: float) -> None:
        if scale != self.scale:
            self.scale = scale
        self.ox, self.oy = ox, oy
        self.fit_mode = False
        self.complete = False
        self.update()
        self.viewChanged.emit()

    def set_scale(self, scale: float, anchor=None) -> None:
        """Zoom to ``scale`` screen px per level-0 px, keeping the slide point under ``anchor``
        (widget coordinates; default the centre) where it is."""
        if self.slide is None:
            return
        scale = float(np.clip(scale, self.min_scale, self.max_scale))
        if anchor is None:
            ax, ay = self.width() / 2, self.height() / 2
        else:
            ax, ay = (anchor.x(), anchor.y()) if hasattr(anchor, "x") else anchor
        x0, y0 = (ax + self.ox) / self.scale, (ay + self.oy) / self.scale
        self._set(scale, x0 * scale - ax, y0 * scale - ay)

    def zoom_by(self, factor: float, anchor=None) -> None:
        self.set_scale(self.scale * factor, anchor)

    def set_level_zoom(self, level: int) -> None:
        """Zoom so one pixel of ``level`` is one screen pixel."""
        if self.slide is not None:
            self.set_scale(1.0 / self.slide.level_downsamples[level])

    def pan_by(self, dx: float, dy: float) -> None:
        """Move the slide by (dx, dy) screen pixels (positive: the content moves right/down)."""
        if self.slide is None:
            return
        self._pan_dir = (int(np.sign(-dx)), int(np.sign(-dy)))
        self._set(self.scale, self.ox - dx, self.oy - dy)

    def center_on(self, x0: float, y0: float) -> None:
        """Put level-0 point (x0, y0) at the widget centre."""
        if self.slide is None:
            return
        self._set(self.scale, x0 * self.scale - self.width() / 2, y0 * self.scale - self.height() / 2)

    def resizeEvent(self, ev):
        old = ev.oldSize()
        self._ensure_cache_floor()
        if self.slide is not None:
            if self.fit_mode:
                self.fit()
            elif old.isValid() and old.width() > 0:
                self.ox -= (self.width() - old.width()) / 2
                self.oy -= (self.height() - old.height()) / 2
                self.viewChanged.emit()
        self._place_overview()
        super().resizeEvent(ev)

    # ================================================================== levels / tiles
    def level_for_scale(self, scale: float | None = None) -> int:
        """The pyramid level drawn at ``scale`` (default: the current one)."""
        s = self.slide
        if s is None:
            return 0
        scale = self.scale if scale is None else scale
        # device pixels: at a device pixel ratio of 2 the screen shows twice the detail
        lvl = best_level(s.level_downsamples, 1.0 / (scale * self.devicePixelRatioF()))
        # files without a (deep enough) pyramid: never ask for thousands of tiles at once
        while lvl < s.level_count - 1 and self._visible_tile_count(lvl, scale) > MAX_VISIBLE_TILES:
            lvl += 1
        return lvl

    @property
    def level(self) -> int:
        return self.level_for_scale()

    def _level_geom(self, level: int, scale: float | None = None):
        """(lw, lh, kx, ky): level size and screen px per level px."""
        scale = self.scale if scale is None else scale
        w0, h0 = self.dimensions
        lw, lh = self.slide.level_dimensions[level]
        return lw, lh, scale * w0 / lw, scale * h0 / lh

    def _visible_tile_count(self, level: int, scale: float) -> int:
        lw, lh, kx, ky = self._level_geom(level, scale)
        return (math.ceil(self.width() / (TILE * kx)) + 1) * (math.ceil(self.height() / (TILE * ky)) + 1)

    def _tile_range(self, level: int, margin: int = 0):
        """(c0, c1, r0, r1) inclusive tile range of ``level`` in view (+ margin tiles)."""
        lw, lh, kx, ky = self._level_geom(level)
        cols, rows = tile_grid((lw, lh))
        rx, ry = self.world_origin()
        c0 = int(math.floor(rx / (TILE * kx))) - margin
        c1 = self._last_tile(cols, kx, rx + self.width() - 1) + margin
        r0 = int(math.floor(ry / (TILE * ky))) - margin
        r1 = self._last_tile(rows, ky, ry + self.height() - 1) + margin
        return max(0, c0), min(cols - 1, c1), max(0, r0), min(rows - 1, r1)

    @staticmethod
    def _last_tile(n_tiles: int, k: float, x: int) -> int:
        """The tile holding world pixel ``x`` on one axis, by the drawn (rounded) edges of
        :meth:`_edges`: tile i starts at round(i*TILE*k), which may be at or before x even
        where i*TILE*k is past it."""
        i = int(math.floor(x / (TILE * k)))
        while i + 1 < n_tiles and int(round((i + 1) * TILE * k)) <= x:
            i += 1
        return i

    def _edges(self, n_tiles: int, size: int, k: float, a: int, b: int) -> list[int]:
        """World-pixel edges of tiles a..b (inclusive) on one axis: round(i*TILE*k), last = round(size*k)."""
        out = []
        for i in range(a, b + 2):
            out.append(int(round((i * TILE if i < n_tiles else size) * k)))
        return out

    def tile_screen_rects(self, level: int | None = None) -> dict:
        """{(level, col, row): QRect} of the tiles of ``level`` that are in view."""
        lvl = self.level if level is None else level
        lw, lh, kx, ky = self._level_geom(lvl)
        cols, rows = tile_grid((lw, lh))
        c0, c1, r0, r1 = self._tile_range(lvl)
        if c1 < c0 or r1 < r0:
            return {}
        ex = self._edges(cols, lw, kx, c0, c1)
        ey = self._edges(rows, lh, ky, r0, r1)
        rx, ry = self.world_origin()
        out = {}
        for j, r in enumerate(range(r0, r1 + 1)):
            for i, c in enumerate(range(c0, c1 + 1)):
                out[("t", lvl, c, r)] = QRect(ex[i] - rx, ey[j] - ry, ex[i + 1] - ex[i], ey[j + 1] - ey[j])
        return out

    def _tile_rect0(self, key) -> tuple[float, float, float, float]:
        _, lvl, c, r = key
        w0, h0 = self.dimensions
        lw, lh = self.slide.level_dimensions[lvl]
        sx, sy = w0 / lw, h0 / lh
        x, y = c * TILE, r * TILE
        return x * sx, y * sy, min(TILE, lw - x) * sx, min(TILE, lh - y) * sy

    def missing_tiles(self) -> list:
        """Keys of tiles in view at the current level that are not decoded yet."""
        return [k for k in self.tile_screen_rects() if k not in self.cache]

    def is_complete(self) -> bool:
        """Everything in view is drawn at the right level (as of the last paint)."""
        return self.slide is not None and self.complete

    # ================================================================== requests
    def _update_requests(self, level: int, missing: list) -> None:
        if self.loader is None:
            return
        c0, c1, r0, r1 = self._tile_range(level)
        sig = (level, c0, c1, r0, r1, self.thumb is None, tuple(missing))
        if sig == self._req_sig:
            return
        self._req_sig = sig
        cx, cy = (c0 + c1) / 2, (r0 + r1) / 2
        keys = sorted(missing, key=lambda k: (k[2] - cx) ** 2 + (k[3] - cy) ** 2)
        want_thumb = self.thumb is None and not any(e.startswith("thumbnail") for e in self.errors)
        if want_thumb and self._thumb_cost <= 4e6:
            keys.insert(0, ("thumb",))
        elif want_thumb:
            keys.append(("thumb",))
        # prefetch: a ring of one tile (two ahead in the pan direction), then the next
        # coarser level for zooming out - only as far as the cache holds them beside the
        # tiles in view (prefetching must never evict what is on screen)
        n_vis = (c1 - c0 + 1) * (r1 - r0 + 1)
        room = self.cache.max_bytes // (TILE * TILE * 4) // 2 - n_vis
        if room <= 0:
            self.loader.request(keys)
            return
        lw, lh, _, _ = self._level_geom(level)
        cols, rows = tile_grid((lw, lh))
        dx, dy = self._pan_dir
        ring = []
        for r in range(max(0, r0 - 1 - (dy < 0)), min(rows - 1, r1 + 1 + (dy > 0)) + 1):
            for c in range(max(0, c0 - 1 - (dx < 0)), min(cols - 1, c1 + 1 + (dx > 0)) + 1):
                if not (c0 <= c <= c1 and r0 <= r <= r1):
                    k = ("t", level, c, r)
                    if k not in self.cache:
                        ring.append(k)
        ring.sort(key=lambda k: (k[2] - cx) ** 2 + (k[3] - cy) ** 2)
        if level + 1 < self.slide.level_count:
            a0, a1, b0, b1 = self._tile_range(level + 1)
            up = [("t", level + 1, c, r) for r in range(b0, b1 + 1) for c in range(a0, a1 + 1)]
            if len(up) <= 64:
                ring += [k for k in up if k not in self.cache]
        self.loader.request(keys + ring[:room])

    # ================================================================== painting
    @staticmethod
    def _device_rect(rect: QRect, dpr: float) -> QRect:
        """A logical screen rectangle in device pixels (edges times ``dpr``, rounded: tiles that
        share an edge share it in device pixels too)."""
        if dpr == 1.0:
            return rect
        x0, y0 = round(rect.x() * dpr), round(rect.y() * dpr)
        x1, y1 = round((rect.x() + rect.width()) * dpr), round((rect.y() + rect.height()) * dpr)
        return QRect(x0, y0, x1 - x0, y1 - y0)

    def _scaled_tile(self, key, rect: QRect, kx: float, t0: float):
        """The tile at its size in device pixels, ``rect`` (cached per zoom; ``kx``: device px
        per level px).  Smooth resampling costs ~0.3 ms a tile: past SCALE_BUDGET_S in one
        paint (a zoom step) tiles are resized fast (nearest) and redone smoothly in the next
        frames."""
        img = self.cache.get(key)
        if img is None or isinstance(img, str):
            return img
        if img.width() == rect.width() and img.height() == rect.height():
            return img
        item = self._scaled.get(key)
        if item is not None and (not item[1] or time.perf_counter() - t0 > SCALE_BUDGET_S):
            return item[0]
        smooth = kx < 2.0  # magnified beyond the scan: show the pixels
        if smooth and time.perf_counter() - t0 > SCALE_BUDGET_S:
            if item is not None:
                return item[0]
            out = img.scaled(rect.width(), rect.height(), Qt.IgnoreAspectRatio, Qt.FastTransformation)
            self._scaled.put(key, (out, True))  # draft
            self._drafts = True
            return out
        out = img.scaled(rect.width(), rect.height(), Qt.IgnoreAspectRatio,
                         Qt.SmoothTransformation if smooth else Qt.FastTransformation)
        self._scaled.put(key, (out, False))
        return out

    def _overlay_key(self):
        return tuple((id(l), l._version, l.visible, getattr(l, "downsample", None), getattr(l, "origin", None))
                     for l in self.layers if l.is_raster)

    def _layer_image(self, layer) -> QImage | None:
        """The whole layer as one premultiplied ARGB32 image, made once per layer version (the
        engine's colouring: LUT, opacity, threshold, outline).  Heat maps are upsampled
        between tile centres (:func:`smooth_heat_values`, ``self.smooth_heat``) so they read as
        a smooth field at high zoom, not as blocks; other layers stay at their own resolution."""
        smooth = self.smooth_heat and isinstance(layer, HeatmapLayer)
        key = (layer._version, layer.visible, smooth)
        hit = self._layer_images.get(id(layer))
        if hit is not None and hit[0] is layer and hit[1] == key:
            return hit[2]
        if smooth and layer.visible and layer.opacity > 0:
            # the interpolated values are kept per array: opacity / threshold changes only
            # re-colour them (a slider drag must not redo the interpolation every step)
            f = smooth_factor(*layer.array.shape[1:3])
            sv = self._smooth_values.get(id(layer))
            if sv is None or sv[0] is not layer.array or sv[1] != f:
                sv = (layer.array, f, smooth_heat_values(layer.array[0], f))
                self._smooth_values[id(layer)] = sv
            words = np.ascontiguousarray(layer.lut()[layer.indices(sv[2])], np.uint32)
        else:
            f = 1
            words = layer.render_argb32(Plane.native(), 0)
        img = None
        if words is not None and words.any():
            words = np.ascontiguousarray(words, np.uint32)
            img = QImage(words.data, words.shape[1], words.shape[0], words.strides[0],
                         QImage.Format_ARGB32_Premultiplied).copy()
            img.setText("factor", str(f))
        self._layer_images[id(layer)] = (layer, key, img)
        return img

    def _draw_layer_image(self, p: QPainter, layer, img: QImage, rect0) -> None:
        """Draw the part of a layer image over the level-0 rectangle ``rect0``: each layer pixel
        becomes the screen rectangle its level-0 geometry says (nearest when magnified, smooth
        when a layer pixel is smaller than a screen pixel, and always for smoothed heat maps)."""
        dx, dy, ox, oy = layer_geometry(layer, self.dimensions)
        f = int(img.text("factor") or 1)
        dx, dy = dx / f, dy / f
        cols, rows = img.width(), img.height()
        x, y, w, h = rect0
        c0, c1 = max(0, math.floor((x - ox) / dx)), min(cols, math.ceil((x + w - ox) / dx))
        r0, r1 = max(0, math.floor((y - oy) / dy)), min(rows, math.ceil((y + h - oy) / dy))
        if c1 <= c0 or r1 <= r0:
            return
        a = self.slide_to_screen(ox + c0 * dx, oy + r0 * dy)
        b = self.slide_to_screen(ox + c1 * dx, oy + r1 * dy)
        p.setRenderHint(QPainter.SmoothPixmapTransform, f > 1 or dx * self.scale < 1.0)
        p.drawImage(QRectF(a, b), img, QRectF(c0, r0, c1 - c0, r1 - r0))

    def _outline_tile(self, layer, key, rect: QRect):
        """Outline label layers: coloured per screen tile at screen resolution (a 2 px line at
        any zoom), cached per zoom.  False when nothing shows in the tile."""
        ck = (id(layer), key)
        out = self._overlay.get(ck)
        if out is not None:
            return out
        w = render_layer_tile(layer, self.dimensions, self._tile_rect0(key), rect.width(), rect.height())
        out = False if w is None else QImage(w.data, w.shape[1], w.shape[0], w.strides[0],
                                             QImage.Format_ARGB32_Premultiplied).copy()
        self._overlay.put(ck, out)
        return out

    def paintEvent(self, ev):
        t0 = time.perf_counter()
        p = QPainter(self)
        if self.slide is None:
            p.fillRect(self.rect(), BG)
            p.setPen(QColor("#5d6169"))
            p.drawText(self.rect(), Qt.AlignCenter, "no slide")
            p.end()
            return
        level = self.level
        lw, lh, kx, ky = self._level_geom(level)
        dpr = self.devicePixelRatioF()
        tag = (level, kx, ky, dpr)
        if tag != self._scaled_tag:
            self._scaled.clear()
            self._scaled_tag = tag
            self._ensure_cache_floor()  # (the ratio changes when the window moves to another screen)
        rects = self.tile_screen_rects(level)
        self._fill_outside(p)
        missing = []
        n_err = 0
        exposed = ev.rect()
        self._drafts = False
        # Tiles are drawn in device pixels (resized to their device size, so Qt does not stretch
        # a logical-size tile by the device pixel ratio); everything else in logical pixels.
        p.save()
        if dpr != 1.0:
            p.setWorldTransform(QTransform.fromScale(1.0 / dpr, 1.0 / dpr))
        for key, rect in rects.items():
            if not exposed.intersects(rect):
                continue
            drect = self._device_rect(rect, dpr)
            img = self._scaled_tile(key, drect, kx * dpr, t0)
            if img is None:
                missing.append((key, rect))
            elif isinstance(img, str):
                p.fillRect(drect, ERROR_TILE)
                n_err += 1
            else:
                p.drawImage(drect.topLeft(), img)
        p.restore()
        n_fallback = self._paint_fallback(p, level, missing) if missing else 0
        overlays_done = self._paint_overlays(p, rects, tag, t0)
        if self.show_overlays:
            self._paint_markers(p)
        if self.tools is not None:
            self.tools.paint(p)
        if self.show_hud:
            self._paint_hud(p, level, len(missing), n_err)
        p.end()
        self._update_requests(level, [k for k, _ in missing])
        if self._drafts:
            self._again.start()  # redo the fast-resized tiles smoothly
        self.complete = not missing and overlays_done and not self._drafts
        self.paint_count += 1
        self.last_paint = {"level": level, "tiles": len(rects), "missing": len(missing),
                           "fallback": n_fallback, "ms": (time.perf_counter() - t0) * 1000.0}
        if self.complete and self.first_complete_at is None:
            self.first_complete_at = time.perf_counter()
            self.firstViewComplete.emit(self.first_complete_at)

    def _fill_outside(self, p: QPainter) -> None:
        """Background around the slide only (the tiles cover the slide itself)."""
        W, H = self.width(), self.height()
        w0, h0 = self.dimensions
        rx, ry = self.world_origin()
        x0, y0 = -rx, -ry
        x1, y1 = int(round(w0 * self.scale)) - rx, int(round(h0 * self.scale)) - ry
        if x1 <= 0 or y1 <= 0 or x0 >= W or y0 >= H:
            p.fillRect(self.rect(), BG)
            return
        a, b = max(0, y0), min(H, y1)
        if a > 0:
            p.fillRect(QRect(0, 0, W, a), BG)
        if b < H:
            p.fillRect(QRect(0, b, W, H - b), BG)
        if x0 > 0:
            p.fillRect(QRect(0, a, x0, b - a), BG)
        if x1 < W:
            p.fillRect(QRect(x1, a, W - x1, b - a), BG)

    def _level_tiles_screen(self, lvl: int, rect0) -> list | None:
        """[(image, screen QRectF)] of the tiles of ``lvl`` covering the level-0 rectangle,
        or None unless all of them are decoded."""
        llw, llh, kx, ky = self._level_geom(lvl)
        w0, h0 = self.dimensions
        sx, sy = w0 / llw, h0 / llh
        x, y, w, h = rect0
        c0, c1 = int(x / (TILE * sx)), int(min(x + w, w0) / (TILE * sx) - 1e-9)
        r0, r1 = int(y / (TILE * sy)), int(min(y + h, h0) / (TILE * sy) - 1e-9)
        if (c1 - c0 + 1) * (r1 - r0 + 1) > 16:
            return None
        rx, ry = self.world_origin()
        out = []
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                img = self.cache.peek(("t", lvl, c, r))
                if img is None or isinstance(img, str):
                    return None
                x0 = round(c * TILE * kx) - rx
                y0 = round(r * TILE * ky) - ry
                x1 = round(min((c + 1) * TILE, llw) * kx) - rx
                y1 = round(min((r + 1) * TILE, llh) * ky) - ry
                out.append((img, QRectF(x0, y0, x1 - x0, y1 - y0)))
        return out

    def _paint_fallback(self, p: QPainter, level: int, missing: list) -> int:
        """Fill each missing tile from the best data already decoded: the next finer level,
        else the nearest coarser level (scaled up), else the thumbnail; placeholder grey when
        there is nothing yet.  Each screen pixel is drawn once (source rectangles, no clip)."""
        p.save()
        p.setRenderHint(QPainter.SmoothPixmapTransform, True)
        drawn = 0
        order = ([level - 1] if level > 0 else []) + list(range(level + 1, self.slide.level_count))
        w0, h0 = self.dimensions
        for key, r in missing:
            rect0 = self._tile_rect0(key)
            src = None
            for lvl in order:
                src = self._level_tiles_screen(lvl, rect0)
                if src is not None:
                    break
            target = QRectF(r)
            if src is None and self.thumb is not None:
                a = self.slide_to_screen(0, 0)
                b = self.slide_to_screen(w0, h0)
                src = [(self.thumb, QRectF(a, b))]
            if src is None:
                p.fillRect(r, PLACEHOLDER)
                continue
            for img, tr in src:
                ir = tr.intersected(target)
                if ir.isEmpty():
                    continue
                fx, fy = img.width() / tr.width(), img.height() / tr.height()
                p.drawImage(ir, img, QRectF((ir.left() - tr.left()) * fx, (ir.top() - tr.top()) * fy,
                                            ir.width() * fx, ir.height() * fy))
            drawn += 1
        p.restore()
        return drawn

    def _paint_overlays(self, p: QPainter, rects: dict, tag, t0: float) -> bool:
        """Raster layers, bottom first.  Heat maps and filled label maps: the layer image drawn
        over the view; outlines: per-tile at screen resolution (tiles not coloured within the
        frame budget show the layer-resolution outline until the next frame).  False when
        some outline tiles were left for the next frame."""
        layers = [l for l in self.layers if l.is_raster and l.visible] if self.show_overlays else []
        live = {id(l) for l in layers}
        for k in [k for k in self._layer_images if k not in live]:
            del self._layer_images[k]
        for k in [k for k in self._smooth_values if k not in live]:
            del self._smooth_values[k]
        if not layers:
            return True
        otag = (tag, self._overlay_key())
        if otag != self._overlay_tag:
            self._overlay.clear()
            self._overlay_tag = otag
        done = True
        budget = 0.020  # s of outline colouring per paint
        view0 = self.visible_rect0()
        p.save()
        # a tile at the right or bottom edge runs when it is half on the slide and its cell is
        # drawn whole: nothing is drawn past the slide's edge (the overview PNG stops there too)
        w0, h0 = self.dimensions
        p.setClipRect(QRectF(self.slide_to_screen(0, 0), self.slide_to_screen(w0, h0)))
        for layer in layers:
            img = self._layer_image(layer)
            if img is None:
                continue
            if not (isinstance(layer, LabelLayer) and layer.mode == "outline"):
                self._draw_layer_image(p, layer, img, view0)
                continue
            for key, rect in rects.items():
                t = self._overlay.peek((id(layer), key))
                if t is None and time.perf_counter() - t0 <= budget:
                    t = self._outline_tile(layer, key, rect)
                if t is None:  # stand-in: the outline at the layer's own resolution
                    done = False
                    p.save()
                    p.setClipRect(rect, Qt.IntersectClip)
                    self._draw_layer_image(p, layer, img, self._tile_rect0(key))
                    p.restore()
                elif t is not False:
                    p.drawImage(rect.topLeft(), t)
        p.restore()
        if not done:
            self._again.start()
        return done

    def _paint_markers(self, p: QPainter) -> None:
        dims = self.dimensions
        W, H = self.width(), self.height()
        fm = QFontMetricsF(self._font)
        p.setFont(self._font)
        p.setRenderHint(QPainter.Antialiasing, True)
        for layer in self.layers.markers():
            for m, x0, y0, cw, ch in marker_positions(layer, dims):
                c = self.slide_to_screen(x0, y0)
                sw, sh = cw * self.scale, ch * self.scale
                half = max(sw, sh) / 2
                if not (-half - 200 < c.x() < W + half + 200 and -half - 50 < c.y() < H + half + 50):
                    continue
                col = QColor(*m.color)
                if min(sw, sh) >= 14:  # the cell itself (a tile of the heat-map grid)
                    r = QRectF(c.x() - sw / 2, c.y() - sh / 2, sw, sh)
                    p.setPen(QPen(QColor(0, 0, 0, 170), 4))
                    p.setBrush(Qt.NoBrush)
                    p.drawRect(r)
                    p.setPen(QPen(col, 2))
                    p.drawRect(r)
                    tx, ty = r.left(), r.top() - 4
                else:
                    rad = 9.0
                    p.setPen(QPen(QColor(0, 0, 0, 170), 4))
                    p.setBrush(Qt.NoBrush)
                    p.drawEllipse(c, rad, rad)
                    p.setPen(QPen(col, 2))
                    p.drawEllipse(c, rad, rad)
                    tx, ty = c.x() + rad + 4, c.y() - rad
                text = m.text()
                if text:
                    tw = fm.horizontalAdvance(text)
                    box = QRectF(tx, ty - fm.height(), tw + 8, fm.height() + 2)
                    p.fillRect(box, QColor(0, 0, 0, 170))
                    p.setPen(col)
                    p.drawText(box, Qt.AlignCenter, text)
        p.setRenderHint(QPainter.Antialiasing, False)

    # ------------------------------------------------------------------ HUD
    def scale_bar(self) -> dict:
        """The scale bar shown: ``length_px`` on screen standing for ``value`` ``unit``
        ('µm' with MPP; level-0 'px' without), and its ``label``."""
        s = self.scale
        mpp = self.slide.mpp if self.slide is not None else None
        if mpp:
            px_per_um = s / mpp[0]
            um = nice_length(150.0 / px_per_um)
            return {"length_px": um * px_per_um, "value": um, "unit": "µm", "label": format_um(um),
                    "mpp_known": True}
        px = nice_length(150.0 / s)
        return {"length_px": px * s, "value": px, "unit": "px", "label": f"{px:g} px (level 0)",
                "mpp_known": False}

    def zoom_text(self, level: int | None = None) -> str:
        s = self.slide
        level = self.level if level is None else level
        obj = s.objective_power if s is not None else None
        z = f"{obj * self.scale:.3g}× (scan {obj:g}×)" if obj else f"{self.scale * 100:.3g} %"
        return f"Zoom {z}  ·  level {level} of {s.level_count} (downsample {s.level_downsamples[level]:.4g})"

    def info_lines(self) -> list[str]:
        s = self.slide
        w0, h0 = s.dimensions
        lines = [os.path.basename(os.path.normpath(s.path)), f"{w0:,} × {h0:,} px  ·  {s.level_count} level"
                 + ("s" if s.level_count != 1 else "")]
        if s.mpp:
            lines.append(f"{s.mpp[0]:.4g} µm/px  ·  {w0 * s.mpp[0] / 1000:.2f} × {h0 * s.mpp[1] / 1000:.2f} mm")
        return lines

    def _text(self, p: QPainter, x: float, y: float, text: str, color=QColor("#e8e8e8")):
        p.setPen(QColor(0, 0, 0, 230))
        p.drawText(QPointF(x + 1, y + 1), text)
        p.setPen(color)
        p.drawText(QPointF(x, y), text)

    def _panel(self, p: QPainter, r: QRectF):
        p.fillRect(r, QColor(16, 17, 19, 190))

    def _paint_hud(self, p: QPainter, level: int, n_missing: int, n_err: int) -> None:
        p.setRenderHint(QPainter.TextAntialiasing, True)
        p.setFont(self._font)
        fm = QFontMetricsF(self._font)
        lh = fm.height()
        m = 10.0
        pad = 6.0
        W, H = self.width(), self.height()
        # top-left: the slide (when no info panel shows it)
        if self.show_info_text:
            lines = self.info_lines()
            tw = max(fm.horizontalAdvance(s) for s in lines)
            self._panel(p, QRectF(m - pad, m - pad / 2, tw + 2 * pad, lh * len(lines) + pad))
            for i, s in enumerate(lines):
                self._text(p, m, m + fm.ascent() + i * lh, s)
        # bottom-left: scale bar; without MPP a notice above a bar in level-0 pixels
        sb = self.scale_bar()
        L = sb["length_px"]
        fb = QFontMetricsF(self._font_b)
        notice_w = fb.horizontalAdvance(NO_MPP_NOTICE) + 2 * pad if not sb["mpp_known"] else 0.0
        box_w = max(L, fm.horizontalAdvance(sb["label"]), notice_w) + 2 * pad
        bar_y = H - m - 5                       # top of the 5 px bar
        label_base = bar_y - 6 - fm.descent()   # text baseline above the bar
        top = label_base - fm.ascent() - pad
        if not sb["mpp_known"]:
            top -= lh + 8
        self._panel(p, QRectF(m - pad, top, box_w, H - m + pad / 2 - top))
        p.fillRect(QRectF(m, bar_y, L, 5), QColor("white"))
        p.fillRect(QRectF(m, bar_y - 5, 2, 10), QColor("white"))
        p.fillRect(QRectF(m + L - 2, bar_y - 5, 2, 10), QColor("white"))
        self._scale_bar_rect = QRectF(m, bar_y, L, 5)
        self._text(p, m, label_base, sb["label"])
        if not sb["mpp_known"]:
            r = QRectF(m - pad / 2, top + pad / 2, notice_w, lh + 6)
            p.fillRect(r, QColor(WARN_BG))
            p.setPen(QPen(QColor("#6b5516"), 1))
            p.drawRect(r.adjusted(0, 0, -1, -1))
            p.setFont(self._font_b)
            p.setPen(QColor(WARN_FG))
            p.drawText(r, Qt.AlignCenter, NO_MPP_NOTICE)
            p.setFont(self._font)
            self.no_mpp_rect = r
        else:
            self.no_mpp_rect = None
        # bottom-right: zoom, level, loading
        br = [self.zoom_text(level)]
        if n_missing:
            br.insert(0, f"loading {n_missing} tile{'s' if n_missing != 1 else ''}…")
        if n_err:
            br.insert(0, f"{n_err} tile{'s' if n_err != 1 else ''} unreadable")
        bw = max(fm.horizontalAdvance(s) for s in br)
        self._panel(p, QRectF(W - m - bw - pad, H - m - lh * len(br) - pad / 2, bw + 2 * pad, lh * len(br) + pad))
        for i, s in enumerate(reversed(br)):
            col = QColor("#ffb4b4") if "unreadable" in s else QColor("#e8e8e8")
            self._text(p, W - m - fm.horizontalAdvance(s), H - m - fm.descent() - i * lh, s, col)
        if self.show_overlays:
            self._paint_legend(p)

    def _paint_legend(self, p: QPainter) -> None:
        """Colour bar of the top visible heat map: horizontal, under the overview."""
        heat = [l for l in self.layers.heatmaps() if l.visible]
        self.legend_rect = self.legend_box = None
        if not heat:
            return
        layer: HeatmapLayer = heat[-1]
        rgb, lo, hi = layer.legend(128)
        fm = QFontMetricsF(self._font)
        pad = 6.0
        h = fm.height() + 4 + 12 + 4 + fm.height() + pad
        W, H = float(self.width()), float(self.height())
        # under the overview when it fits there, else at the top right; always inside the
        # view (never clipped) and at least wide enough for the end values and the title
        w = max(170.0, min(240.0, W - 20))
        x, top = W - 10 - w, 10.0
        if self.overview.isVisible():
            g = self.overview.geometry()
            w = max(w, float(g.width()))
            x = min(float(g.left()), W - 10 - w)
            top = float(g.bottom()) + 8
            if top + h > H - 60:  # a short view: beside the overview instead
                x, top = max(4.0, float(g.left()) - 8 - w), 10.0
        x = max(4.0, x)
        top = max(4.0, min(top, H - h - 4))
        bar_x, bar_w = x + pad, w - 2 * pad
        title = fm.elidedText(layer.name + (f" ({layer.units})" if layer.units else ""), Qt.ElideRight, bar_w)
        self._panel(p, QRectF(x, top, w, h))
        self._text(p, bar_x, top + pad / 2 + fm.ascent(), title)
        by = top + pad / 2 + fm.height() + 4
        words = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2] | np.uint32(0xFF000000)
        words = np.ascontiguousarray(words.reshape(1, -1))
        p.drawImage(QRectF(bar_x, by, bar_w, 12), QImage(words.data, words.shape[1], 1, words.shape[1] * 4,
                                                         QImage.Format_RGB32))
        p.setPen(QPen(QColor(0, 0, 0, 200), 1))
        p.setBrush(Qt.NoBrush)
        p.drawRect(QRectF(bar_x, by, bar_w, 12))
        if layer.vmax > layer.vmin and layer.threshold > layer.vmin:  # values below are hidden
            tx = bar_x + bar_w * min(1.0, (layer.threshold - layer.vmin) / (layer.vmax - layer.vmin))
            p.fillRect(QRectF(bar_x, by, tx - bar_x, 12), QColor(16, 17, 19, 200))
            p.setPen(QPen(QColor("white"), 2))
            p.drawLine(QPointF(tx, by - 3), QPointF(tx, by + 15))
        ty = by + 12 + 4 + fm.ascent()
        lo_s, hi_s = f"{lo:.3g}", f"{hi:.3g}"
        self._text(p, bar_x, ty, lo_s)
        self._text(p, bar_x + bar_w - fm.horizontalAdvance(hi_s), ty, hi_s)
        self.legend_rect = QRectF(bar_x, by, bar_w, 12)
        self.legend_box = QRectF(x, top, w, h)  # the whole legend panel (tests: inside the view)

    # ================================================================== overview
    def _place_overview(self) -> None:
        ov = self.overview
        if self.thumb is None or self.slide is None or not (self.show_hud and self.show_overview):
            ov.hide()
            return
        size = ov.preferred_size(self.width(), self.height())
        ov.setGeometry(self.width() - size.width() - 10, 10, size.width(), size.height())
        ov.show()
        ov.raise_()

    def set_overview_visible(self, on: bool) -> None:
        self.show_overview = bool(on)
        self._place_overview()
        self.update()

    # ================================================================== layers
    def _on_layers(self, event, layer):
        try:
            self.update()
        except RuntimeError:  # widget already deleted
            pass

    def set_show_overlays(self, on: bool) -> None:
        self.show_overlays = bool(on)
        self.update()

    def center_on_marker(self, marker, layer=None) -> None:
        """Centre on ``marker`` placed by its layer's geometry (``layer``: the marker layer that
        holds it; default: the one of the stack that does), whether the layer is shown or not."""
        if layer is None:
            layer = next((l for l in self.layers.layers if isinstance(l, MarkerLayer)
                          and any(m is marker for m in l.markers)), None)
            if layer is None:
                return
        dx, dy, ox, oy = layer_geometry(layer, self.dimensions)
        _, j, i = marker.position
        self.center_on(ox + (i + 0.5) * dx, oy + (j + 0.5) * dy)

    # ================================================================== interaction
    def mousePressEvent(self, ev):
        if self.slide is None:
            return
        if self.tools is not None and self.tools.mouse("press", ev):
            return
        if ev.button() in (Qt.LeftButton, Qt.MiddleButton):
            self._drag = ev.position()
            self.setCursor(Qt.ClosedHandCursor)

    def mouseMoveEvent(self, ev):
        pos = ev.position()
        self._update_cursor(pos)
        if self.tools is not None and self._drag is None and self.tools.mouse("move", ev):
            return
        if self._drag is not None:
            d = pos - self._drag
            self._drag = pos
            self.pan_by(d.x(), d.y())

    def mouseReleaseEvent(self, ev):
        if self.tools is not None and self._drag is None and self.tools.mouse("release", ev):
            return
        self._drag = None
        self.unsetCursor()

    def mouseDoubleClickEvent(self, ev):
        if self.slide is not None and self.tools is not None and self.tools.mouse("double", ev):
            return
        if self.slide is not None and ev.button() == Qt.LeftButton:
            self.zoom_by(2.0, ev.position())

    def wheelEvent(self, ev):
        if self.slide is None:
            return
        d = ev.angleDelta().y() or ev.angleDelta().x()
        if not d:
            return
        self.zoom_by(1.25 ** (d / 120.0), ev.position())

    def keyPressEvent(self, ev):
        if self.slide is None:
            return super().keyPressEvent(ev)
        if self.tools is not None and self.tools.key_event(ev):
            return
        k = ev.key()
        step = 400 if ev.modifiers() & Qt.ShiftModifier else 100
        if k in (Qt.Key_Plus, Qt.Key_Equal):
            self.zoom_by(1.25)
        elif k in (Qt.Key_Minus, Qt.Key_Underscore):
            self.zoom_by(0.8)
        elif k == Qt.Key_F:
            self.fit()
        elif k == Qt.Key_Left:
            self.pan_by(step, 0)
        elif k == Qt.Key_Right:
            self.pan_by(-step, 0)
        elif k == Qt.Key_Up:
            self.pan_by(0, step)
        elif k == Qt.Key_Down:
            self.pan_by(0, -step)
        else:
            return super().keyPressEvent(ev)

    def event(self, ev):
        # Keys a drawing tool needs (Esc, Enter, Backspace, Del) would otherwise be taken by the
        # main window's shortcuts of the same keys: accepting the override delivers them here.
        if (ev.type() == QEvent.ShortcutOverride and self.tools is not None
                and self.tools.wants_key(ev)):
            ev.accept()
            return True
        return super().event(ev)

    def leaveEvent(self, ev):
        self.cursorInfo.emit("")
        super().leaveEvent(ev)

    def _update_cursor(self, pos) -> None:
        if self.slide is None:
            return
        x0, y0 = self.screen_to_slide(pos)
        w0, h0 = self.dimensions
        if not (0 <= x0 < w0 and 0 <= y0 < h0):
            self.cursorInfo.emit("")
            return
        text = f"x {int(x0)}  y {int(y0)}  (level-0 px)"
        mpp = self.slide.mpp
        if mpp:
            text += f"   {x0 * mpp[0] / 1000:.3f} mm, {y0 * mpp[1] / 1000:.3f} mm from the top-left corner"
        else:
            text += "   (no MPP: physical position unknown)"
        self.cursorInfo.emit(text)

    def closeEvent(self, ev):
        self._stop_loader()
        super().closeEvent(ev)


class SlideOverview(QWidget):
    """Thumbnail of the whole slide with the view rectangle; click or drag to move the view."""

    navigate = Signal(float, float)  # level-0 point to centre on

    MAX_SIDE = 220
    MARGIN = 4

    def __init__(self, view: SlideView):
        super().__init__(view)
        self.view = view
        self._small = None
        self.setAttribute(Qt.WA_OpaquePaintEvent, True)  # repainting it never repaints the view below
        self.setCursor(Qt.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")
        view.viewChanged.connect(self.update)

    def preferred_size(self, view_w: int, view_h: int) -> QSize:
        t = self.view.thumb
        side = min(self.MAX_SIDE, max(80, min(view_w, view_h) // 3))
        if t is None or t.width() <= 0:
            return QSize(side, side)
        f = side / max(t.width(), t.height())
        return QSize(int(round(t.width() * f)) + 2 * self.MARGIN, int(round(t.height() * f)) + 2 * self.MARGIN)

    def image_rect(self) -> QRectF:
        m = self.MARGIN
        return QRectF(m, m, self.width() - 2 * m, self.height() - 2 * m)

    def to_slide(self, p) -> tuple[float, float]:
        r = self.image_rect()
        w0, h0 = self.view.dimensions
        x = (p.x() - r.left()) / r.width() * w0
        y = (p.y() - r.top()) / r.height() * h0
        return min(max(x, 0.0), float(w0)), min(max(y, 0.0), float(h0))

    def view_rect(self) -> QRectF:
        """The view's rectangle in overview widget coordinates."""
        r = self.image_rect()
        w0, h0 = self.view.dimensions
        x, y, w, h = self.view.visible_rect0()
        fx, fy = r.width() / w0, r.height() / h0
        return QRectF(r.left() + x * fx, r.top() + y * fy, w * fx, h * fy)

    def paintEvent(self, ev):
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(16, 17, 19))
        t = self.view.thumb
        r = self.image_rect()
        if t is not None:
            key = (t.cacheKey(), int(r.width()), int(r.height()))
            if self._small is None or self._small[0] != key:  # scaled once, not per frame
                self._small = (key, t.scaled(int(r.width()), int(r.height()), Qt.IgnoreAspectRatio,
                                             Qt.SmoothTransformation))
            p.drawImage(r.topLeft(), self._small[1])
        vr = self.view_rect().intersected(r.adjusted(-1, -1, 1, 1))
        p.setRenderHint(QPainter.Antialiasing, False)
        p.setBrush(Qt.NoBrush)
        if vr.width() < 6 and vr.height() < 6:  # tiny: a cross-hair mark instead of a dot
            c = vr.center()
            p.setPen(QPen(QColor(0, 0, 0, 200), 4))
            p.drawLine(QPointF(c.x() - 9, c.y()), QPointF(c.x() + 9, c.y()))
            p.drawLine(QPointF(c.x(), c.y() - 9), QPointF(c.x(), c.y() + 9))
            p.setPen(QPen(QColor(ACCENT), 2))
            p.drawLine(QPointF(c.x() - 8, c.y()), QPointF(c.x() + 8, c.y()))
            p.drawLine(QPointF(c.x(), c.y() - 8), QPointF(c.x(), c.y() + 8))
        else:
            p.setPen(QPen(QColor(0, 0, 0, 200), 4))
            p.drawRect(vr)
            p.setPen(QPen(QColor(ACCENT), 2))
            p.drawRect(vr)
        p.setPen(QPen(QColor("#4a4d55"), 1))
        p.drawRect(QRectF(0, 0, self.width() - 1, self.height() - 1))
        p.end()

    def mousePressEvent(self, ev):
        if ev.button() == Qt.LeftButton:
            self.navigate.emit(*self.to_slide(ev.position()))

    def mouseMoveEvent(self, ev):
        if ev.buttons() & Qt.LeftButton:
            self.navigate.emit(*self.to_slide(ev.position()))

    def wheelEvent(self, ev):
        d = ev.angleDelta().y() or ev.angleDelta().x()
        if d:
            self.view.zoom_by(1.25 ** (d / 120.0))
