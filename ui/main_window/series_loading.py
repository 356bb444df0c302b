"""Opening studies and loading series for the main window: scanning (headers), the
progressive load of a series (middle slice first), stacks, the progress bar and cancel, the
cache of recently viewed volumes, and whole-slide images handed to the slide page.

The loading state (``index``, ``current_key``, ``load_state``, ``last_error``...) lives here;
the window shows it (browser, views, banner) and re-exposes it for its callers."""

from __future__ import annotations

import os
from collections import OrderedDict

from PySide6.QtCore import QObject, QTimer

from imaging_assist import viewing
from imaging_assist.dicom.loader import stack_label

from ..radiology.browser import IMAGE_KEY
from ..radiology.loading import ImageJob, LoadJob, PlainImage, ScanJob, ThumbnailJob, viewable_images

MAX_PLAIN_THUMBS = 200  # tiles made for at most this many plain images of a folder (each is a full read)

CACHE_BYTES = 1536 * 1024**2  # keep recently viewed volumes up to this size


class SeriesLoading(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.w = window
        self.index = None
        self.root_paths: list[str] = []
        self.current_key: str | None = None
        self.current_stack = 0
        self.plans = []
        self._scan_job: ScanJob | None = None
        self._load_job: LoadJob | None = None
        self._pending_series: str | None = None
        self._pending_layout: str | None = None
        self._cache: OrderedDict = OrderedDict()  # (key, stack) -> (volume, plans), at most CACHE_BYTES
        self._per_series: dict = {}  # (key, stack) -> (measurements, layers) of a cached volume
        self._shown_key = None
        self.load_state = "idle"  # idle, scanning, loading, done, error
        self.last_error = ""
        self._plain_thumbs: ThumbnailJob | None = None

    def open_path(self, path, series: str | None = None, layout: str | None = None):
        """Scan a folder / zip / DICOMDIR / file (or a list) and show a series."""
        paths = [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
        gone = [p for p in paths if not os.path.lexists(p)]
        if gone:  # a recent entry whose folder was deleted or moved: say so (the shown study stays)
            self.last_error = f"no such file or folder: {gone[0]}"
            self.w.show_banner(f"Could not open {gone[0]}: no such file or folder (moved or deleted?)", error=True)
            self.w.loadFinished.emit(False)
            return
        from ..slides.slide_detect import is_slide_target
        if len(paths) == 1 and is_slide_target(paths[0]):
            self.open_slide(paths[0])
            return
        self.cancel_loading(quiet=True)
        self.w.thumbs.stop()
        self._stop_plain_thumbs()
        self.root_paths = paths
        self._pending_series = series
        self._pending_layout = layout
        self._cache.clear()
        self._per_series.clear()
        self._shown_key = None
        self.w.tags.clear_cache()
        self.w._hide_banner()
        self.load_state = "scanning"
        self.w.pages.setCurrentIndex(1)
        self._show_progress("Reading headers…", 0, 0)
        job = ScanJob(paths, self)
        job.progress.connect(self._guard(job, "_scan_job", lambda d, t: self._show_progress("Reading headers…", d, t)))
        job.finished.connect(self._guard(job, "_scan_job", self._scanned))
        job.failed.connect(self._guard(job, "_scan_job", self._scan_failed))
        self._scan_job = job
        job.start()
        if len(paths) == 1:
            QTimer.singleShot(1500, lambda p=paths[0]: self.w.recent.add(p))

    def open_slide(self, path: str):
        """Show a whole-slide image (SVS, NDPI, tiled TIFF, DICOM WSI, ...) in the slide view
        instead of the radiology view (ui/slides/slide_page.py; it reports through loadFinished)."""
        if self.w.slide_page is None:
            from ..slides.slide_page import SlidePage
            self.w.slide_page = SlidePage(self.w)
            self.w.pages.addWidget(self.w.slide_page)
        self.close_study()
        self.w._hide_banner()
        self.w.pages.setCurrentWidget(self.w.slide_page)
        self.w.slide_page.open(path)
        QTimer.singleShot(1500, lambda p=path: self.w.recent.add(p))

    def _guard(self, job, attr, fn):
        """A slot that runs fn only while job is still the current one (stale jobs are ignored)."""
        def slot(*args):
            if getattr(self, attr) is job:
                fn(*args)
        return slot

    def _scan_failed(self, msg):
        self._scan_job = None
        self._hide_progress()
        self.load_state = "error"
        self.last_error = msg
        if msg != "cancelled":
            self.w.show_banner(f"Could not read {', '.join(self.root_paths)}: {msg}", error=True)
        self.w.loadFinished.emit(False)

    def _scanned(self, index):
        self._scan_job = None
        self.index = index
        self.w.thumbs.shown = set()
        self.w.browser.set_index(index)
        series = index.image_series()
        images = viewable_images(index)
        self._start_plain_thumbs(images)
        if not series and images and not self._pending_series:  # a folder of plain images
            self.load_series(IMAGE_KEY + images[0][0])
            return
        if not series:
            self._hide_progress()
            self.load_state = "error"
            n = len(index.problems)
            n_other = len(getattr(index, "other_files", []))
            self.last_error = "no images"
            self.w.show_banner(f"No viewable images in {', '.join(self.root_paths)}"
                               + (f" — {n} file(s) could not be read; the reasons are listed under Studies."
                                  if n else ".")
                               + (f" {n_other} other file(s) are not images." if n_other else ""), error=True)
            self.w.doc.set_volume(None)
            self.w.loadFinished.emit(False)
            return
        chosen = None
        if self._pending_series:
            chosen = index.find_series(self._pending_series)
            if chosen is not None and chosen.result_kind:  # a SEG/PM/SR: its source, with it
                chosen = next((t for t in map(index.find_series, chosen.references)
                               if t is not None and t.is_image), None)
            if chosen is None:
                self.w.show_banner(f"Series {self._pending_series} not found; showing the largest series instead.")
        if chosen is None:
            chosen = max(series, key=lambda s: (s.n_frames, -series.index(s)))
            # that patient's most recent study (opening a folder of one patient's studies hung
            # the oldest as "current" and the newer one as its "prior"), then its largest series
            here, others = index.study_of(chosen), viewing.other_studies(index, chosen)
            later = [st for st in others if viewing.is_later(st, here)]
            if viewing.in_future(here):  # a date typo is never the most recent study
                later = [st for st in others if viewing.parse_date(st.date) and not viewing.in_future(st)]
            if later:
                newest = max(later, key=lambda st: (viewing.parse_date(st.date), st.time or ""))
                chosen = max((x for x in newest.series if x.is_image), key=lambda x: x.n_frames, default=chosen)
        self.load_series(chosen.key)

    def _series_chosen(self, key):
        if key == self.current_key and self.w.doc.volume is not None:
            return
        if key.startswith(IMAGE_KEY):
            self.load_series(key)
            return
        s = self.index.find_series(key) if self.index else None
        if s is not None and s.result_kind:  # a SEG/PM/SR: show the series it refers to
            self.w.results.open_result(s)
            return
        if s is None or not s.is_image:
            self.w.statusBar().showMessage("This series has no images to show", 4000)
            return
        self.load_series(key)

    def load_series(self, key: str, stack: int = 0):
        if key.startswith(IMAGE_KEY):
            self._load_image(key)
            return
        s = self.index.find_series(key)
        if s is None:
            return
        if self._load_job is not None:
            self._load_job.cancel()
            self._load_job = None
        self.w.play_btn.setChecked(False)
        self.current_key = key
        self.current_stack = stack
        self.w.browser.set_current(key)
        cached = self._cache.get((key, stack))
        if cached is not None:
            self._cache.move_to_end((key, stack))
            vol, plans = cached
            self.plans = plans
            self._set_volume(vol, s)
            self._update_stacks()
            self.load_state = "done"
            self.w.loadFinished.emit(True)
            return
        self.load_state = "loading"
        self._show_progress("Loading…", 0, max(1, s.n_frames))
        job = LoadJob(s, stack, self)
        job.planned.connect(self._guard(job, "_load_job", lambda vol, plans: self._planned(plans)))
        job.first.connect(self._guard(job, "_load_job", lambda vol, k: self._first_slice(vol, k, s)))
        job.sliceLoaded.connect(self._guard(job, "_load_job", self._slice_in))
        job.progress.connect(self._guard(job, "_load_job", lambda d, t: self._show_progress("Loading…", d, t)))
        job.done.connect(self._guard(job, "_load_job", self._loaded))
        job.failed.connect(self._guard(job, "_load_job", self._load_failed))
        self._load_job = job
        job.start()

    def _load_image(self, key: str):
        """A plain image (PNG/JPEG/TIFF/BMP) of the scanned folder, read as ``analyze`` reads it."""
        if self._load_job is not None:
            self._load_job.cancel()
            self._load_job = None
        self.w.play_btn.setChecked(False)
        self.current_key, self.current_stack, self.plans = key, 0, []
        self.w.browser.set_current(key)
        self._update_stacks()
        cached = self._cache.get((key, 0))
        if cached is not None:
            self._cache.move_to_end((key, 0))
            self._image_loaded(cached[0])
            return
        self.load_state = "loading"
        self._show_progress("Loading…", 0, 0)
        job = ImageJob(key[len(IMAGE_KEY):], self)
        job.done.connect(self._guard(job, "_load_job", self._image_loaded))
        job.failed.connect(self._guard(job, "_load_job", self._load_failed))
        self._load_job = job
        job.start()

    def _start_plain_thumbs(self, images):
        """Tiles for the plain images, on their own thread (the DICOM tiles have theirs)."""
        todo = [PlainImage(IMAGE_KEY + p, p) for p, _ in images[:MAX_PLAIN_THUMBS]]
        if not todo:
            return
        job = ThumbnailJob(todo, self)
        job.ready.connect(self._guard(job, "_plain_thumbs", self.w.thumbs._ready))
        job.failed.connect(self._guard(job, "_plain_thumbs", self.w.thumbs.mark_unviewable))
        job.finished.connect(self._guard(job, "_plain_thumbs", lambda: setattr(self, "_plain_thumbs", None)))
        self._plain_thumbs = job
        job.start()

    def _stop_plain_thumbs(self):
        if self._plain_thumbs is not None:
            self._plain_thumbs.cancel()
            self._plain_thumbs = None

    def _image_loaded(self, vol):
        self._load_job = None
        self._hide_progress()
        self._set_volume(vol, None)
        self.load_state = "done"
        self.w.doc.loadFinished.emit()
        self._cache[(self.current_key, 0)] = (vol, [])
        self._trim_cache()
        self.w.thumbs.from_volume(self.current_key, vol, self.w.doc.default_window)
        self.w.thumbs.start(self.index, self.current_key)
        self.w.tags.update_later()
        self.w.loadFinished.emit(True)

    def _planned(self, plans):
        self.plans = plans
        self._update_stacks()

    def _set_volume(self, vol, series):
        # measurements and overlays belong to their series: keep them for when it comes back from
        # the cache (the same volume object; a series read again starts clean, as it always has).
        # The volume itself is not kept here: only the cache holds volumes, within CACHE_BYTES.
        shown = self._shown_key
        if self.w.doc.volume is not None and shown is not None:
            if self._cached_volume(shown) is self.w.doc.volume:
                self._per_series[shown] = (list(self.w.doc.measurements), self.w.doc.layers.layers)
            else:
                self._per_series.pop(shown, None)
        pat = self.index.patient_of(series) if self.index else None
        st = self.index.study_of(series) if self.index else None
        label = stack_label(self.plans, self.current_stack)
        self.w.doc.set_volume(vol, series, pat, st, label)
        self._shown_key = (self.current_key, self.current_stack)
        saved = self._per_series.get(self._shown_key)
        if saved is not None and self._cached_volume(self._shown_key) is vol:
            for m in saved[0]:
                self.w.doc.measurements.append(m)
            for layer in saved[1]:
                self.w.doc.layers.add(layer)
            self.w.doc.measurementsChanged.emit()
        layout = self._pending_layout
        self._pending_layout = None
        if layout:
            self.w.set_layout(layout)
        elif self.w.view_area.layout_mode == "mpr" and not self.w.doc.mpr_available:
            self.w.set_layout("single")
        if vol.warnings:
            self.w.show_banner("  •  ".join(vol.warnings))
        else:
            self.w._hide_banner()
        who = (pat.name.replace("^", " ") if pat else "") or "Imaging Assist"
        what = (series.description or series.modality) if series is not None else vol.description
        self.w.setWindowTitle(f"{who} — {what} — Imaging Assist")
        if vol.is_cine and vol.frame_time_ms:
            self.w.fps.setValue(int(round(min(120, max(1, 1000.0 / vol.frame_time_ms)))))

    def _first_slice(self, vol, k, series):
        self._set_volume(vol, series)

    def _slice_in(self, k):
        if self.w.doc.volume is not None:
            self.w.doc.sliceLoaded.emit(k)

    def _loaded(self, vol):
        job = self._load_job
        self._load_job = None
        self._hide_progress()
        self.load_state = "done"
        if self.w.doc.volume is not vol:  # e.g. the first slice failed but later ones loaded
            s = self.index.find_series(self.current_key)
            self._set_volume(vol, s)
        elif vol.warnings:
            self.w.show_banner("  •  ".join(vol.warnings))
        self.w.doc.loadFinished.emit()
        for v in self.w.view_area.all_views():
            v._img_cache = None
            v.update()
        if not (job is not None and job.cancelled):
            self._cache[(self.current_key, self.current_stack)] = (vol, self.plans)
            self._trim_cache()
        self.w.thumbs.from_volume(self.current_key, vol, self.w.doc.default_window)
        self.w.thumbs.start(self.index, self.current_key)
        self.w.tags.update_later()
        self.w.loadFinished.emit(True)

    def _load_failed(self, msg):
        self._load_job = None
        self._hide_progress()
        self.load_state = "error"
        self.last_error = msg
        self.w.show_banner(f"This series cannot be shown: {msg}", error=True)
        if self.current_key:
            self.w.thumbs.mark_unviewable(self.current_key, msg)
        self.w.thumbs.start(self.index, self.current_key)
        self.w.loadFinished.emit(False)

    def cancel_loading(self, quiet=False):
        """Stop scanning / loading.  Slices already read stay on screen."""
        if self._scan_job is not None:
            self._scan_job.cancel()
            self._scan_job = None
            if not quiet:
                self.load_state = "cancelled"
                self.w.statusBar().showMessage("Reading headers cancelled", 5000)
                self.w.loadFinished.emit(False)
        if self._load_job is not None:
            self._load_job.cancel()
            if quiet:
                self._load_job = None
            else:  # the job stops after the slice in hand and reports what it has (see _loaded)
                self.w.statusBar().showMessage("Loading cancelled; the slices read so far stay visible", 5000)
        self._hide_progress()

    def close_study(self):
        self.cancel_loading(quiet=True)  # the jobs are dropped: their slots no longer report
        self.load_state = "idle"  # not "loading" / "scanning" for good
        self.w.thumbs.stop()
        self._stop_plain_thumbs()
        self.index = None
        self.current_key = None
        self.w.doc.set_volume(None)
        # nothing of the closed study stays in memory (the cache alone held up to CACHE_BYTES)
        self._cache.clear()
        self._per_series.clear()
        self._shown_key = None
        self.w.browser.clear()  # its rows, and the keys of rows a late thumbnail would look up
        self.w.browser.set_problems([])
        self.w.pages.setCurrentIndex(0)
        self.w.recent.refresh_list()
        self.w.setWindowTitle("Imaging Assist")

    def _cached_volume(self, key):
        hit = self._cache.get(key)
        return hit[0] if hit is not None else None

    def _trim_cache(self):
        total = sum(v[0].array.nbytes for v in self._cache.values())
        while len(self._cache) > 1 and total > CACHE_BYTES:
            key, (vol, _) = self._cache.popitem(last=False)
            total -= vol.array.nbytes
            self._per_series.pop(key, None)  # read again, the series starts clean: drop its layers now

    # ------------------------------------------------------------------ stacks
    def _update_stacks(self):
        multi = len(self.plans) > 1
        for a in self.w._stack_actions:
            a.setVisible(multi)
        self.w.stack_combo.clear()
        if multi:
            for n, p in enumerate(self.plans):
                self.w.stack_combo.addItem(f"{n + 1} of {len(self.plans)} ({len(p.slots)} images)")
            self.w.stack_combo.setCurrentIndex(self.current_stack)

    def _stack_chosen(self, i):
        if i != self.current_stack and self.current_key:
            self.load_series(self.current_key, i)

    # ------------------------------------------------------------------ progress / banner
    def _show_progress(self, text, done, total):
        self.w.progress_label.setText(text)
        self.w.progress.setRange(0, total if total else 0)
        if total:
            self.w.progress.setValue(done)
            self.w.progress.setFormat(f"{done} / {total}")
        self.w.progress.show()
        self.w.progress_label.show()
        self.w.cancel_btn.show()

    def _hide_progress(self):
        self.w.progress.hide()
        self.w.progress_label.setText("")
        self.w.cancel_btn.hide()
