"""Screenshot of a study reopened with a measurement SR the reader had exported into its folder
(docs/screenshots/sr_own_measurements.png, docs/annotations.md): each measurement is drawn
once, as the reader's editable one; the ruler was moved after the export, so its exported copy
(dashed green) shows beside it; the Results dock says what was hidden.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_sr_own.py OUT.png

The real path: measurements drawn (kept by the viewer's store), File > Export measurements
(DICOM SR) into the study folder, the ruler moved, the study opened again.  Own config and data
folders and a temporary study folder (links to the CT phantom): nothing of the user's is touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(out: str) -> int:
    import os
    import tempfile

    for var in ("IMAGING_ASSIST_CONFIG_DIR", "IMAGING_ASSIST_DATA_DIR"):
        os.environ[var] = tempfile.mkdtemp()

    from PySide6.QtCore import QSettings

    from _qt import wait_until
    from conftest import link_ct_phantom
    from imaging_assist.measure import Measurement
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    from imaging_assist_ui.radiology.annotation_tools import annotations_for, export_sr

    study = link_ct_phantom(Path(tempfile.mkdtemp()) / "study")
    make_app()
    w = MainWindow(settings=QSettings(str(Path(tempfile.mkdtemp()) / "s.ini"), QSettings.IniFormat))
    w.resize(1920, 1080)
    w.show()
    w.open_path(str(study))
    assert wait_until(lambda: w.load_state == "done", 120), w.last_error
    k = 70
    w.doc.set_index(0, k)
    w.set_layout("single")
    ctl = annotations_for(w.doc)
    ctl.add(Measurement("polygon", [(276, 184), (297, 181), (300, 205), (279, 207)], 0, k))
    ctl.add(Measurement("ellipse", [(230, 228), (262, 254)], 0, k))
    ruler = ctl.add(Measurement("ruler", [(100, 430), (200, 430)], 0, k))
    path, warnings = export_sr(w.doc, study / "measurements_SR.dcm")
    print("exported", path, warnings)
    ctl.begin_edit(ruler)  # moved after the export, as the mouse would
    ruler.points = [(100.0, 400.0), (205.0, 400.0)]
    ctl.end_edit(ruler, "move")
    wait_until(lambda: False, 1.0)  # the store saves
    w.open_path(str(study))  # the study again: the SR is indexed now, the measurements come back
    assert wait_until(lambda: w.load_state == "done", 120), w.last_error
    wait_until(lambda: len(w.doc.measurements) == 3, 10)
    w.set_layout("single")
    w.doc.set_index(0, k)
    w.doc.select(None)
    wait_until(lambda: False, 1.0)
    w.results.dock.show()
    w.results.dock.raise_()
    w.save_screenshot(out)
    print("saved", out, [m.summary() for m in w.doc.measurements], w.results.messages)
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
