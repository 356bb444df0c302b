"""Screenshot of rulers on the reformatted planes of the real GE gantry-tilt series (uneven
gaps, 18.5 degrees): each measured between the positions where its ends were acquired
(docs/screenshots/mpr_tilt_rulers.png, docs/reading.md).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_mpr_tilt.py OUT.png
"""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
for var in ("IMAGING_ASSIST_CONFIG_DIR", "IMAGING_ASSIST_DATA_DIR"):
    os.environ[var] = tempfile.mkdtemp()
from PySide6.QtCore import QSettings
from _qt import wait_until
from imaging_assist.measure import Measurement
from imaging_assist_ui.app import make_app
from imaging_assist_ui.main_window import MainWindow
from imaging_assist_ui.radiology.annotation_tools import annotations_for
make_app()
w = MainWindow(settings=QSettings(str(Path(tempfile.mkdtemp()) / "s.ini"), QSettings.IniFormat))
w.resize(1920, 1080); w.show()
from conftest import DICOM  # noqa: E402
w.open_path(str(DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"))
assert wait_until(lambda: w.load_state == "done", 120), w.last_error
w.set_layout("mpr")
wait_until(lambda: False, 0.5)
ctl = annotations_for(w.doc)
vol = w.doc.volume
plane = w.doc.plane_for_axis(2)
shape3 = vol.array.shape[:3]
print("shape", shape3, "reason", vol.reformat_distortion())
# a ruler along the slice axis on the sagittal plane, and one on the coronal
u0, v0, _ = plane.from_voxel((1, 256, 256), shape3); u1, v1, _ = plane.from_voxel((6, 256, 256), shape3)
ctl.add(Measurement("ruler", [(u0, v0), (u1, v1)], 2, 256))
pc = w.doc.plane_for_axis(1)
a0, b0, _ = pc.from_voxel((1, 256, 200), shape3); a1, b1, _ = pc.from_voxel((6, 256, 300), shape3)
ctl.add(Measurement("ruler", [(a0, b0), (a1, b1)], 1, 256))
w.doc.select(None)
w.measure_dock.show(); w.measure_dock.raise_()
wait_until(lambda: False, 0.8)
w.save_screenshot(sys.argv[1])
print([m.summary() for m in w.doc.measurements])
print([m.result.get("display_text") for m in w.doc.measurements])
w.close()
