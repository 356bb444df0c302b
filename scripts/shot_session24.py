"""Screenshots of session 24's changed screens, into docs/screenshots/:

* ``slab_box_german_locale.png``: the slice bar of a CT under a German system locale
  (QLocale de_DE, as LANG=de_DE.UTF-8 gives) after "2,5" and then "2.5" were typed into the
  slab thickness: the box reads "2.5 mm" and the view's corner "MIP 2.5 mm" (one slice of this 2.5-mm series) (before, Qt took
  "." for a thousands separator and "2.5" became a 25 mm slab, shown as "25,0 mm").
* ``export_sr_refused.png``: File > Export measurements (DICOM SR) with the save dialog's answer
  the CR film being shown (a copy of the Fuji CR): the banner says the file is one of those
  being read and nothing is written (before, the film was replaced by an SR without pixels).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_session24.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, open_and_wait as _open, small_png, wait  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
OUT = HERE.parent / "docs" / "screenshots"
CT = SHARED / "ct" / "lidc_idri_0001_slab"


def main() -> int:
    from PySide6.QtCore import QLocale, QPoint

    QLocale.setDefault(QLocale("de_DE"))  # the system's locale before the app sets its own
    app, w, home = fresh_window("ia-shot24-")
    _open(app, w, CT)

    # --- the slab thickness box under a German locale
    sc = w.slab_controls
    sc.combo.setCurrentIndex(sc.combo.findData("mip"))
    sc.apply()
    for typed in ("2,5", "2.5"):
        le = sc.thickness.lineEdit()
        le.selectAll()
        le.setText(typed)
        sc.thickness.interpretText()
        sc.thickness.editingFinished.emit()
        wait(app, lambda: False, 0.5)
        print(f"typed {typed!r}: box {sc.thickness.text()!r} value {sc.thickness.value()}")
    wait(app, lambda: False, 1.0)
    # the active (axial) view, whose corner names the slab, over the part of the slice bar
    # that holds the slab controls
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QImage, QPainter

    win = w.grab().toImage()
    view = w.active_view()
    vr = QRect(view.mapTo(w, QPoint(0, 0)), view.size())
    left = sc.label.mapTo(w, QPoint(0, 0))
    right = sc.thickness.mapTo(w, QPoint(sc.thickness.width(), sc.thickness.height()))
    br = QRect(QPoint(left.x() - 8, left.y() - 6), QPoint(right.x() + 8, right.y() + 6))
    top = win.copy(vr).scaledToWidth(min(vr.width(), 640))
    bot = win.copy(br)
    img = QImage(max(top.width(), bot.width()), top.height() + bot.height() + 8, QImage.Format_RGB32)
    img.fill(0x202020)
    p = QPainter(img)
    p.drawImage(QPoint(0, 0), top)
    p.drawImage(QPoint(0, top.height() + 8), bot)
    p.end()
    print(small_png(img, OUT / "slab_box_german_locale.png"))

    # --- Export measurements (DICOM SR) aimed at the film being read
    import shutil

    from PySide6.QtWidgets import QFileDialog

    from imaging_assist.measure import Measurement
    from imaging_assist_ui.radiology.annotation_tools import export_sr_dialog

    cr = Path(home) / "cr"
    cr.mkdir()
    film = cr / "CR-MONO1-10-chest.dcm"
    shutil.copy(SHARED / "dicom" / "cr_chest_monochrome1_fuji" / film.name, film)
    _open(app, w, cr)
    m = Measurement("ruler", [(300.0, 300.0), (900.0, 700.0)])
    w.doc.add_measurement(m)
    w.doc.compute_measurement(m)
    QFileDialog.getSaveFileName = staticmethod(lambda *a, **k: (str(film), ""))
    export_sr_dialog(w, "sr")
    wait(app, lambda: False, 0.8)
    print("banner:", w.banner_text())
    va = w.grab().toImage()
    top = w.view_area.mapTo(w, QPoint(0, 0))
    print(small_png(va.copy(0, max(0, top.y() - 60), 1400, 420), OUT / "export_sr_refused.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
