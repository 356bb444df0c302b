"""Screenshot of the viewer with measurements and annotations on the CT phantom
(docs/screenshots/annotations.png, docs/annotations.md).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_annotations.py OUT.png [CT_FOLDER]

Draws, through the same controller the mouse tools use, a polygon and a freehand ROI (HU
statistics, area with its spacing source), an arrow with a note and a text note, then saves
the whole window.  Own config and data folders: nothing is saved into the user's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(out: str, path: str | None = None) -> int:
    import os
    import tempfile

    for var in ("IMAGING_ASSIST_CONFIG_DIR", "IMAGING_ASSIST_DATA_DIR"):
        os.environ[var] = tempfile.mkdtemp()

    from PySide6.QtCore import QSettings

    from _qt import wait_until
    from conftest import CT_PHANTOM
    from imaging_assist.measure import Measurement
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    from imaging_assist_ui.radiology.annotation_tools import annotations_for

    make_app()
    w = MainWindow(settings=QSettings(str(Path(tempfile.mkdtemp()) / "s.ini"), QSettings.IniFormat))
    w.resize(1920, 1080)
    w.show()
    w.open_path(path or str(CT_PHANTOM))
    assert wait_until(lambda: w.load_state == "done", 120), w.last_error
    k = 70
    w.doc.set_index(0, k)
    ctl = annotations_for(w.doc)
    w.set_layout("single")
    ctl.add(Measurement("polygon", [(276, 184), (297, 181), (300, 205), (279, 207)], 0, k))
    ctl.add(Measurement("freehand", [(246 + 14 * math.cos(t) + 1.5 * math.sin(5 * t), 241 + 13 * math.sin(t))
                                     for t in [i * 2 * math.pi / 60 for i in range(60)]], 0, k))
    ctl.add(Measurement("arrow", [(300, 322), (350, 372)], 0, k, text="insert"))
    ctl.add(Measurement("text", [(120, 120)], 0, k, text="compare with prior"))
    ctl.add(Measurement("ruler", [(100, 430), (200, 430)], 0, k))
    w.doc.select(None)
    w.measure_dock.show()
    w.measure_dock.raise_()
    wait_until(lambda: False, 0.5)
    w.save_screenshot(out)
    print("saved", out, [m.summary() for m in w.doc.measurements])
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
