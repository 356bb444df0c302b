"""Screenshots: File ▸ Save view as PNG (the view area) and the whole window (``--screenshot``).

A screenshot shows the patient's name and ID in the corners: it is an export, recorded in the
audit trail like every other (``privacy.audit.record_export``; docs/privacy.md)."""

from __future__ import annotations

from PySide6.QtWidgets import QFileDialog


def _record(self, path: str) -> None:
    from imaging_assist.privacy.audit import record_export

    record_export("screenshot", path, getattr(getattr(self, "doc", None), "volume", None))


def save_view_dialog(self):
    path, _ = QFileDialog.getSaveFileName(self, "Save view as PNG", "view.png", "PNG (*.png)")
    if path and self.view_area.grab().save(path):
        _record(self, path)


def save_screenshot(self, path: str) -> bool:
    """The whole main window as a PNG."""
    ok = self.grab().save(path)
    if ok:
        _record(self, path)
    return ok
