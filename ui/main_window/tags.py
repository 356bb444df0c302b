"""The DICOM tags dock follows the slice on screen (updates throttled, only while visible)."""

from __future__ import annotations

import os

from PySide6.QtCore import QObject, Qt, QTimer


class TagsFollower(QObject):
    def __init__(self, window, dock, tag_browser, doc):
        super().__init__(window)
        self.window, self.dock, self.tag_browser, self.doc = window, dock, tag_browser, doc
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(120)
        self._timer.timeout.connect(self.update_now)
        dock.visibilityChanged.connect(self._visibility)

    def show(self):
        self.dock.show()
        self.dock.raise_()
        if self.dock.width() < 520 and self.window.width() > 1500:
            self.window.resizeDocks([self.dock], [560], Qt.Horizontal)
        self.update_now()

    def _visibility(self, visible):
        if visible:
            self.update_now()

    def update_later(self):
        if self.dock.isVisible() and not self.dock.visibleRegion().isEmpty():
            self._timer.start()

    def clear_cache(self):
        """A folder is opened: headers are read again (its files may have been rewritten)."""
        self.tag_browser.clear_cache()

    def update_now(self):
        vol = self.doc.volume
        if vol is None or not vol.headers:
            self.tag_browser.show_record(None)
            return
        k = min(self.doc.position[0], len(vol.headers) - 1)
        rec = vol.headers[k]
        frames = getattr(vol, "frames", None)
        frame = frames[k] if frames and rec.frames > 1 else None
        fr = f", frame {frame + 1}" if frame is not None else ""
        caption = f"Image {k + 1} of {vol.n_slices}{fr} — {os.path.basename(rec.display_path)}"
        self.tag_browser.show_record(rec, caption, frame)
