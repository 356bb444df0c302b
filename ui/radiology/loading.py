"""Background work (scan, series loading, thumbnails) bridged to the GUI thread.

The engine's callbacks run on worker threads; each job re-emits them as Qt signals, which
Qt queues to the GUI thread, so the window never waits on disk or a decoder.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal

from ..shared.text import reason_of
from ..shared.workers import worker_thread


class _ThreadJob(QObject):
    """One daemon thread running ``_run``; ``cancel()`` sets a flag the work checks."""

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self._cancel = False
        self._thread = worker_thread(self._run_then_delete, name)

    def start(self):
        self._thread.start()

    def cancel(self):
        self._cancel = True

    @property
    def cancelled(self) -> bool:
        return self._cancel

    def _run(self):
        raise NotImplementedError

    def _run_then_delete(self):
        try:
            self._run()
        finally:
            # The job is over: its parent (the window) would otherwise keep it, and what it holds
            # (a LoadJob's volume), until the window closes.  deleteLater is safe from this thread
            # and runs after the signals already emitted here have reached their slots.
            try:
                self.deleteLater()
            except RuntimeError:  # its parent is already deleted (the window closed), and it with it
                pass


class ScanJob(_ThreadJob):
    progress = Signal(int, int)
    finished = Signal(object)  # StudyIndex
    failed = Signal(str)

    def __init__(self, paths: list[str], parent=None):
        super().__init__("scan", parent)
        self.paths = paths

    def _run(self):
        try:
            from imaging_assist.dicom import scan
            idx = scan(self.paths, progress=lambda d, t: self.progress.emit(d, t),
                       cancel=lambda: self._cancel)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.failed.emit(f"{type(e).__name__}: {e}")
            return
        if not self._cancel:
            self.finished.emit(idx)
        else:
            self.failed.emit("cancelled")


class LoadJob(_ThreadJob):
    """Load one stack of a series progressively (the slice it opens on first: viewing.start_index)."""

    planned = Signal(object, object)  # volume (still empty), list of stack plans
    first = Signal(object, int)       # volume, k of the first slice in
    sliceLoaded = Signal(int)
    progress = Signal(int, int)
    done = Signal(object)
    failed = Signal(str)

    def __init__(self, series, stack: int = 0, parent=None):
        super().__init__("load", parent)
        self.series = series
        self.stack = stack
        self.loader = None
        self.plans = []  # the series' stack plans (kept when the loader is dropped)

    def cancel(self):
        super().cancel()
        loader = self.loader  # the worker thread drops it when it ends
        if loader is not None:
            loader.cancel()

    def _run(self):
        from imaging_assist.dicom import SeriesLoader
        try:
            self.loader = SeriesLoader(
                self.series, self.stack,
                on_first=lambda vol, k: self.first.emit(vol, k),
                on_slice=lambda k: self.sliceLoaded.emit(k),
                on_progress=lambda d, t: self.progress.emit(d, t))
            from imaging_assist.viewing import start_index
            self.loader.start_k = start_index(self.loader.volume)  # the slice a reader starts on, read first
            self.plans = self.loader.plans
            if self._cancel:
                self.loader.cancel()
            self.planned.emit(self.loader.volume, self.loader.plans)
            vol = self.loader.run()
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.failed.emit(reason_of(e))
            return
        finally:
            # the volume is handed over by the signals: the job keeps no pixels (it used to keep
            # every series ever viewed in memory through loader.volume)
            self.loader = None
        self.done.emit(vol)


PLAIN_IMAGE_KINDS = ("PNG image", "JPEG image", "TIFF image", "BMP image")


def viewable_images(index) -> list[tuple[str, str]]:
    """(path, kind) of the plain images among a scan's other files that the viewer opens with
    ``analyze``'s reader (inference.images.read_image); BMP too (Pillow reads it).  Zip
    members are left out: the reader takes files."""
    from imaging_assist.inference.images import is_plain_image
    return [(o.path, o.reason) for o in getattr(index, "other_files", [])
            if o.reason in PLAIN_IMAGE_KINDS and "!" not in o.path
            and (is_plain_image(o.path) or o.path.lower().endswith(".bmp"))]


class ImageJob(_ThreadJob):
    """Read one plain image (PNG/JPEG/TIFF/BMP) off the GUI thread, as ``analyze`` reads it."""

    done = Signal(object)  # Volume
    failed = Signal(str)

    def __init__(self, path: str, parent=None):
        super().__init__("image", parent)
        self.path = path

    def _run(self):
        from imaging_assist.inference.images import read_image
        try:
            vol = read_image(self.path)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.failed.emit(reason_of(e))
            return
        if not self._cancel:
            self.done.emit(vol)


class PlainImage:
    """A plain image as the thumbnail job takes it (``key`` and ``path``)."""

    def __init__(self, key: str, path: str):
        self.key, self.path = key, path


def thumbnail_array(series, max_side: int = 96) -> tuple[np.ndarray, tuple[float, float]]:
    """A small display image (uint8, grey or RGB) of a series' middle slice (or of a
    :class:`PlainImage`), and its pixel aspect (sx, sy).  Reads only the unit of work
    holding the middle slice."""
    from imaging_assist import display
    if isinstance(series, PlainImage):
        from imaging_assist.inference.images import read_image
        vol = read_image(series.path)
        k = 0
    else:
        from imaging_assist.dicom import SeriesLoader
        loader = SeriesLoader(series)
        k = loader.load_middle()
        vol = loader.volume
    a = vol.array[k]
    if vol.is_color:
        img = display.render_slice(vol, k, None, slice_array=a)
    else:
        preset = None
        for p in vol.window_presets:
            if p.source in ("dicom", "voilut"):
                preset = p
                break
        img = display.render_slice(vol, k, preset or display.auto_window(a), slice_array=a)
    step = max(1, int(max(img.shape[:2]) // (2 * max_side)))
    img = np.ascontiguousarray(img[::step, ::step])
    return img, (float(vol.spacing[0]), float(vol.spacing[1]))


class ThumbnailJob(_ThreadJob):
    ready = Signal(str, object, object)  # series key, uint8 array, (sx, sy)
    failed = Signal(str, str)            # series key, one-line reason it cannot be displayed
    finished = Signal()

    def __init__(self, series_list, parent=None):
        super().__init__("thumbs", parent)
        self.series_list = list(series_list)

    def _run(self):
        for s in self.series_list:
            if self._cancel:
                break
            try:
                img, aspect = thumbnail_array(s)
            except Exception as e:  # noqa: BLE001 - shown: a "cannot display" tile and a problem line
                self.failed.emit(s.key, reason_of(e))
                continue
            self.ready.emit(s.key, img, aspect)
        self.finished.emit()
