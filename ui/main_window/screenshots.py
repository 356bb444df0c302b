"""Screenshots: File ▸ Save view as PNG (the view area) and the whole window (``--screenshot``)."""

from __future__ import annotations

from PySide6.QtWidgets import QFileDialog


def save_view_dialog(self):
    path, _ = QFileDialog.getSaveFileName(self, "Save view as PNG", "view.png", "PNG (*.png)")
    if path:
        self.view_area.grab().save(path)


def save_screenshot(self, path: str) -> bool:
    """The whole main window as a PNG."""
    return self.grab().save(path)
