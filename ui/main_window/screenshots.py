"""Screenshots: File ▸ Save view as PNG (the view area) and the whole window (``--screenshot``).

A screenshot shows the patient's name and ID in the corners: it is an export, recorded in the
audit trail like every other (``privacy.audit.record_export``; docs/privacy.md).

Both are written under a temporary name in the target's folder and renamed over the target once
complete (``outputs.written_beside``): Qt opens (and so empties) the file before it finds out it
cannot write it, which destroyed an existing file of that name."""

from __future__ import annotations

import os

from PySide6.QtWidgets import QFileDialog


def _record(self, path: str) -> None:
    from imaging_assist.privacy.audit import record_export

    record_export("screenshot", path, getattr(getattr(self, "doc", None), "volume", None))


def _save(pixmap, path: str) -> bool:
    """``pixmap`` written to ``path`` in the format its suffix names (PNG when it names none)."""
    from imaging_assist.outputs import written_beside

    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    try:
        with written_beside(path) as tmp:
            if not pixmap.save(str(tmp), fmt):
                raise OSError(f"Qt could not write {fmt}")
    except OSError:
        return False
    return True


def save_view_dialog(self):
    path, _ = QFileDialog.getSaveFileName(self, "Save view as PNG", "view.png", "PNG (*.png)")
    if path and _save(self.view_area.grab(), path):
        _record(self, path)


def save_screenshot(self, path: str) -> bool:
    """The whole main window as a PNG."""
    ok = _save(self.grab(), path)
    if ok:
        _record(self, path)
    return ok
