"""Series thumbnails for the study browser, made in the background; a series whose thumbnail
cannot be made gets a "cannot display" tile with its one-line reason (never retried)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal

from imaging_assist import display

from ..radiology.loading import ThumbnailJob
from ..shared.text import reason_of


class Thumbnails(QObject):
    done = Signal()  # every series of the index has its tile (the window re-emits thumbnailsDone)

    def __init__(self, browser, parent=None, say=None):
        super().__init__(parent)
        self.browser = browser
        self.say = say  # callable(text): one line for the status bar
        self.job: ThumbnailJob | None = None
        self.shown: set[str] = set()  # series keys whose tile is final (thumbnail or "cannot display")

    def reset(self):
        self.stop()
        self.shown = set()

    def start(self, index, current_key):
        if index is None or self.job is not None:
            return
        todo = [s for s in index.image_series() if s.key != current_key and s.key not in self.shown]
        if not todo:
            self.done.emit()
            return
        job = ThumbnailJob(todo, self)
        # a stopped job's tiles (already queued) are dropped: after close_study their rows are gone
        job.ready.connect(lambda *a, j=job: j is self.job and self._ready(*a))
        job.failed.connect(lambda *a, j=job: j is self.job and self.mark_unviewable(*a))
        job.finished.connect(lambda j=job: self._finished(j))
        self.job = job
        job.start()

    def _finished(self, job):
        if job is self.job:
            self.job = None
            self.done.emit()

    def stop(self):
        if self.job is not None:
            self.job.cancel()
            self.job = None

    def _ready(self, key, img, aspect):
        self.browser.set_thumbnail(key, img, aspect)
        self.shown.add(key)

    def mark_unviewable(self, key, reason):
        """A series that cannot be displayed: tile + problems line, not retried."""
        self.browser.set_unviewable(key, reason)
        self.shown.add(key)

    def from_volume(self, key, vol, window):
        """The shown series' tile from its loaded volume (no second read)."""
        try:
            k = vol.n_slices // 2
            if vol.loaded is not None and not vol.loaded[k]:
                k = int(np.argmax(vol.loaded))
            img = display.render_slice(vol, k, window)
            step = max(1, max(img.shape[:2]) // 192)
            self.browser.set_thumbnail(key, np.ascontiguousarray(img[::step, ::step]), (vol.spacing[0], vol.spacing[1]))
            self.shown.add(key)
        except Exception as e:  # noqa: BLE001 - the series is on screen; its tile keeps the placeholder
            if self.say is not None:
                self.say(f"No thumbnail for this series: {reason_of(e)}")
