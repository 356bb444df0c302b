"""Screenshots: File ▸ Save view as PNG (the view area) and the whole window (``--screenshot``).

A screenshot shows the patient's name and ID in the corners: it is an export, recorded in the
audit trail like every other (``privacy.audit.record_export``; docs/privacy.md).

Both are written under a temporary name in the target's folder and renamed over the target once
complete (``outputs.written_beside``): Qt opens (and so empties) the file before it finds out it
cannot write it, which destroyed an existing file of that name.

Save view as PNG takes the checks of ``view --screenshot`` (ui/app.py ``_unwritable``): never a
file or folder being read, nor a file of the shown series; a name without a type gets ``.png``,
one that is no image type is refused; a refusal or a failed write is one line in a message box.
The saved view carries "Not for clinical use" in a footer line below it, as the status bar does
under the view on screen (the whole-window screenshot has the status bar itself).

On a high-DPI screen (device pixel ratio 2: a logical pixel is 2 x 2 screen pixels) Save view as
PNG keeps the screen's device pixels, the detail the reader saw, and writes the PNG's physical
resolution as 96 x the ratio dots per inch, so it prints at its size on screen; the whole-window
screenshot (``view --screenshot --size WxH``) is exactly the WxH it promises, the grab scaled
down smoothly to the window's logical size."""

from __future__ import annotations

import os

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFontMetrics, QImage, QImageWriter, QPainter, QPixmap
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox, QWidget

from ..shared.text import NOT_FOR_CLINICAL_USE, plain_tip
from ..shared.theme import MUTED, PANEL


def _record(self, path: str) -> None:
    from imaging_assist.privacy.audit import record_export

    record_export("screenshot", path, getattr(getattr(self, "doc", None), "volume", None))


def _write(pixmap, path: str) -> str | None:
    """``pixmap`` written to ``path`` in the format its suffix names (PNG when it names none);
    why it could not be (one line), None when written."""
    from imaging_assist.outputs import written_beside

    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    try:
        with written_beside(path) as tmp:
            if not pixmap.save(str(tmp), fmt):
                raise OSError(f"Qt could not write {fmt}")
    except OSError as e:
        return e.strerror or str(e)
    return None


def _save(pixmap, path: str) -> bool:
    return _write(pixmap, path) is None


def with_footer(pixmap: QPixmap) -> QPixmap:
    """The view as on screen (``pixmap``, unchanged) with a footer line below it: "Not for
    clinical use" on the right, in the status bar's colours."""
    dpr = pixmap.devicePixelRatio()
    font = QApplication.font()
    foot = QFontMetrics(font).height() + 6  # logical pixels
    out = QPixmap(pixmap.width(), pixmap.height() + round(foot * dpr))
    out.setDevicePixelRatio(dpr)
    out.fill(QColor(PANEL))
    p = QPainter(out)
    p.drawPixmap(0, 0, pixmap)
    p.setFont(font)
    p.setPen(QColor(MUTED))
    w, h = pixmap.width() / dpr, pixmap.height() / dpr
    p.drawText(QRectF(0, h, w - 8, foot), Qt.AlignRight | Qt.AlignVCenter, NOT_FOR_CLINICAL_USE)
    p.end()
    return out


def at_screen_dpi(pixmap: QPixmap) -> QImage:
    """``pixmap`` (device pixels) as an image whose physical resolution is the screen's: 96 dpi
    per logical pixel, so the device pixels of a ratio-2 screen print at their on-screen size."""
    img = pixmap.toImage()
    dpm = round(96 * pixmap.devicePixelRatio() / 0.0254)  # dots per metre
    img.setDotsPerMeterX(dpm)
    img.setDotsPerMeterY(dpm)
    return img


def logical_size(pixmap: QPixmap) -> QPixmap:
    """``pixmap`` at its logical size (a grab at device pixel ratio 2 has twice the pixels each
    way): scaled down smoothly, ratio 1.  Unchanged at ratio 1."""
    dpr = pixmap.devicePixelRatio()
    if dpr == 1.0:
        return pixmap
    out = pixmap.scaled(round(pixmap.width() / dpr), round(pixmap.height() / dpr), Qt.IgnoreAspectRatio,
                        Qt.SmoothTransformation)
    out.setDevicePixelRatio(1.0)
    return out


def view_target(self, path: str) -> tuple[str, str | None]:
    """The file Save view as PNG writes for the name chosen (``.png`` added to a name without
    a type: save_view_dialog asks before replacing that file, which the dialog did not ask
    about) and why it must not be written (None: it may)."""
    from imaging_assist.errors import UserError
    from imaging_assist.outputs import refuse_input_target

    if not os.path.splitext(os.path.basename(path))[1]:
        path += ".png"
    kinds = [bytes(f).decode() for f in QImageWriter.supportedImageFormats()]
    if os.path.splitext(path)[1][1:].lower() not in kinds:
        common = [k for k in ("png", "jpg", "bmp", "tif") if k in kinds]
        return path, f"{path} is no image name: it must end in {', '.join('.' + k for k in common)}, ..."
    series = getattr(getattr(self, "doc", None), "series", None)
    files = {r.path for r in series.instances} if series is not None else set()
    try:  # the opened folders / files, and the shown series' files (by any name: links)
        refuse_input_target(path, [p for p in getattr(self, "root_paths", None) or [] if p], "the file", files)
    except UserError as e:
        return path, str(e)
    return path, None


def _tell(self, text: str) -> None:
    if isinstance(self, QWidget):  # (a stand-in window in tests has no screen to show it on)
        QMessageBox.warning(self, "Save view as PNG", text)


def save_view_dialog(self):
    path, _ = QFileDialog.getSaveFileName(self, "Save view as PNG", "view.png", "PNG (*.png)")
    if not path:
        return
    chosen = path
    path, why = view_target(self, path)
    if why is None and path != chosen and os.path.exists(path) and isinstance(self, QWidget):
        # the dialog asked about the name typed ("view"), not the one written ("view.png")
        ans = QMessageBox.question(self, "Save view as PNG", plain_tip(f"{os.path.basename(path)} already exists. "
                                                                       "Do you want to replace it?"))
        if ans != QMessageBox.Yes:
            return
    if why is None:
        grab = self.view_area.grab()  # (a stand-in's in tests is no QPixmap: written as it is)
        why = _write(at_screen_dpi(with_footer(grab)) if isinstance(grab, QPixmap) else grab, path)
        if why is None:
            _record(self, path)
            return
        why = f"could not write {path}: {why}"
    _tell(self, f"The view was not saved: {why}")


def save_screenshot(self, path: str) -> bool:
    """The whole main window as a PNG of its logical size (``view --screenshot --size WxH``
    writes WxH pixels at any device pixel ratio)."""
    grab = self.grab()  # (a stand-in's in tests is no QPixmap: written as it is)
    ok = _save(logical_size(grab) if isinstance(grab, QPixmap) else grab, path)
    if ok:
        _record(self, path)
    return ok
