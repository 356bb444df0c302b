"""Tiles for the slide view: grid arithmetic, a memory-bounded LRU cache and a background
loader.  No widgets here (the view is :mod:`imaging_assist_ui.slides.slide_view`).

* Tiles are ``TILE`` x ``TILE`` pixels **of their pyramid level**, keyed ``(level, col, row)``;
  edge tiles are smaller.  They are read with :meth:`Slide.read_level` (level pixels) on
  worker threads and handed to the GUI thread as ``QImage.Format_RGB32`` (the raster paint
  engine's fastest format), so the GUI thread never waits on a decoder.
* :class:`TileCache` is an LRU bounded in bytes (``max_mb``).
* :class:`TileLoader` runs jobs from a priority list that the view *replaces* whenever the
  visible area changes, so tiles that scrolled away are never read.  Results are
  collected under a lock and announced by one queued Qt signal per batch.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
import weakref
from collections import OrderedDict
from typing import Callable, Hashable, Iterable

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

TILE = 256
#: above this many visible tiles the view uses a coarser level (files without a pyramid)
MAX_VISIBLE_TILES = 600


# --------------------------------------------------------------------------- geometry
def best_level(downsamples: Iterable[float], downsample: float) -> int:
    """OpenSlide's rule: the coarsest level whose downsample is <= ``downsample``
    (so the level has at least the screen's resolution)."""
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= downsample * (1 + 1e-6):
            best = i
    return best


def tile_grid(level_dim: tuple[int, int], tile: int = TILE) -> tuple[int, int]:
    """(cols, rows) of a level's tile grid."""
    return max(1, math.ceil(level_dim[0] / tile)), max(1, math.ceil(level_dim[1] / tile))


def tile_rect(level_dim: tuple[int, int], col: int, row: int, tile: int = TILE) -> tuple[int, int, int, int]:
    """(x, y, w, h) in level pixels of tile (col, row) (edge tiles are cut at the level edge)."""
    x, y = col * tile, row * tile
    return x, y, min(tile, level_dim[0] - x), min(tile, level_dim[1] - y)


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """(h, w, 3) uint8 RGB -> a QImage (Format_RGB32) that owns its pixels."""
    h, w = rgb.shape[:2]
    buf = np.empty((h, w, 4), np.uint8)  # RGB32 in memory is B, G, R, 0xFF on little-endian
    buf[..., 0] = rgb[..., 2]
    buf[..., 1] = rgb[..., 1]
    buf[..., 2] = rgb[..., 0]
    buf[..., 3] = 255
    img = QImage(buf.data, w, h, w * 4, QImage.Format_RGB32)
    return img.copy()  # detach from the numpy buffer


def qimage_to_rgb(img: QImage) -> np.ndarray:
    """QImage -> (h, w, 3) uint8 RGB copy (tests, screenshots)."""
    img = img.convertToFormat(QImage.Format_RGB888)
    w, h = img.width(), img.height()
    arr = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, :w * 3].reshape(h, w, 3).copy()


# --------------------------------------------------------------------------- cache
class TileCache:
    """LRU of decoded tiles bounded by memory (``max_mb``).  GUI thread only."""

    def __init__(self, max_mb: float = 256.0):
        self.max_bytes = int(max_mb * 1024 * 1024)
        self._d: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def size_of(value) -> int:
        if isinstance(value, tuple):
            return max(64, sum(TileCache.size_of(v) for v in value if isinstance(v, (QImage, np.ndarray))))
        if isinstance(value, QImage):
            return max(64, value.sizeInBytes())
        if isinstance(value, np.ndarray):
            return max(64, value.nbytes)
        return 64

    def get(self, key, touch: bool = True):
        item = self._d.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        if touch:
            self._d.move_to_end(key)
        return item[0]

    def peek(self, key):
        """Like get() but neither counts nor refreshes (fallback searches)."""
        item = self._d.get(key)
        return None if item is None else item[0]

    def __contains__(self, key) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def put(self, key, value) -> None:
        n = self.size_of(value)
        old = self._d.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._d[key] = (value, n)
        self.bytes += n
        while self.bytes > self.max_bytes and len(self._d) > 1:
            _, (_, m) = self._d.popitem(last=False)
            self.bytes -= m

    def clear(self) -> None:
        self._d.clear()
        self.bytes = 0

    def keys(self):
        return list(self._d)


# --------------------------------------------------------------------------- loader
_LOADERS: "weakref.WeakSet[TileLoader]" = weakref.WeakSet()


@atexit.register
def _stop_all_loaders() -> None:
    """Threads blocked in a wait at interpreter exit abort Qt's thread bookkeeping: stop them."""
    for ld in list(_LOADERS):
        try:
            ld.shutdown(wait=1.0)
        except Exception:  # noqa: BLE001
            pass


class TileLoader(QObject):
    """Worker threads that run ``fetch(key)`` for the keys of the current request list.

    ``request(keys)`` replaces the waiting list (first = most urgent); keys already
    being fetched are not repeated.  Results are picked up on the GUI thread with
    :meth:`take_results` after the ``ready`` signal.  ``fetch`` must be thread-safe.
    """

    ready = Signal()

    def __init__(self, fetch: Callable[[Hashable], object], threads: int = 2, parent=None):
        super().__init__(parent)
        self._fetch = fetch
        self._cond = threading.Condition()
        self._queue: list = []
        self._inflight: set = set()
        self._results: list = []
        self._notified = False
        self._stop = False
        self.fetched = 0
        self.fetch_s = 0.0
        self._threads = [threading.Thread(target=self._run, name=f"slide-tiles-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for t in self._threads:
            t.start()
        _LOADERS.add(self)

    def request(self, keys: list) -> None:
        with self._cond:
            self._queue = [k for k in keys if k not in self._inflight]
            self._queue.reverse()  # pop() from the end = most urgent first
            if self._queue:
                self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._inflight)

    def busy(self, key) -> bool:
        with self._cond:
            return key in self._inflight

    def take_results(self) -> list:
        with self._cond:
            out, self._results = self._results, []
            self._notified = False
            return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                key = self._queue.pop()
                self._inflight.add(key)
            t0 = time.perf_counter()
            try:
                value, error = self._fetch(key), None
            except Exception as e:  # noqa: BLE001 - shown by the view, never raised in a thread
                value, error = None, f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            with self._cond:
                self._inflight.discard(key)
                if self._stop:
                    return
                self.fetched += 1
                self.fetch_s += dt
                self._results.append((key, value, error))
                notify = not self._notified
                self._notified = True
            if notify:
                try:
                    self.ready.emit()  # queued to the GUI thread
                except RuntimeError:  # the QObject is gone (window closed)
                    return

    def shutdown(self, wait: float = 2.0) -> list:
        """Stop the threads; returns those still busy after ``wait`` s (a very slow read)."""
        with self._cond:
            self._stop = True
            self._queue = []
            self._cond.notify_all()
        deadline = time.perf_counter() + wait
        for t in self._threads:
            t.join(max(0.0, deadline - time.perf_counter()))
        return [t for t in self._threads if t.is_alive()]
