"""Screenshots of session 22's changed screens, into docs/screenshots/:

* ``mpr_sagittal_acquisition.png``: MPR of a series acquired sagittally (the real Philips head
  phantom's slices with their geometry re-labelled as sagittal: IOP 0\\1\\0\\0\\0\\-1, positions
  stepping along x).  The process died with SIGSEGV as soon as MPR showed such a series.
* ``model_card_splits.png``: the card dialog of cxr-pneumonia with its split counts (images,
  patients, per class) for each split, as docs/model_card.md says it shows them.
* ``us_doppler_region_ruler.png``: an ultrasound image with a B-mode region (cm) above a spectral
  Doppler strip (s, cm/s): a ruler in the B-mode part reads mm (calibrated), one in the Doppler
  strip px with "outside the calibrated ultrasound region".

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_session22.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, open_and_wait as _open, small_png, wait  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
PHANTOM = SHARED / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"
OUT = HERE.parent / "docs" / "screenshots"


def sagittal_copy(folder: Path, n: int = 60) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for k, f in enumerate(sorted(PHANTOM.glob("*.dcm"))[40:40 + n]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        ds.ImagePositionPatient = [f"{-30.0 + k:.1f}", "-120", "120"]
        ds.SeriesDescription = "phantom slices re-labelled as a sagittal acquisition"
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"s{k:03d}.dcm")


US_DEMO = HERE.parent / "imaging_assist" / "data" / "demo" / "breast_us" / "us_01_breast.dcm"


def us_with_doppler(path: Path) -> tuple[int, int]:
    """The demo's synthetic breast ultrasound with two regions: the upper part B-mode in cm
    (0.1 x 0.1 mm pixels), the lower part a spectral Doppler strip (seconds x cm/s).  Returns
    (rows, cols)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(US_DEMO)
    rows, cols = int(ds.Rows), int(ds.Columns)
    split = rows * 2 // 3

    def region(y0, y1, ux, uy, dx, dy):
        r = Dataset()
        r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = (1, 1, 0) if ux == 3 else (3, 3, 0)
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = 0, y0, cols - 1, y1
        r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection, r.PhysicalDeltaX, r.PhysicalDeltaY = ux, uy, dx, dy
        return r
    ds.SequenceOfUltrasoundRegions = Sequence([region(0, split - 1, 3, 3, 0.01, 0.01),
                                               region(split, rows - 1, 4, 7, 0.01, 2.0)])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "B-mode above a spectral Doppler strip (regions added)"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return rows, cols


def main() -> int:
    app, w, home = fresh_window("ia-shot22-")
    a = Path(home) / "sagittal"
    sagittal_copy(a)
    _open(app, w, a)
    w.set_layout("mpr")
    wait(app, lambda: False, 1.5)
    print(small_png(w.grab().toImage(), OUT / "mpr_sagittal_acquisition.png"))

    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QTextBrowser

    from imaging_assist.measure import Measurement
    from imaging_assist_ui.radiology.annotation_tools import annotations_for

    b = Path(home) / "us"
    rows, cols = us_with_doppler(b / "us.dcm")
    w.set_layout("single")
    _open(app, w, b)
    ctl = annotations_for(w.doc)
    ctl.add(Measurement("ruler", [(cols * 0.3, rows * 0.15), (cols * 0.3, rows * 0.55)], 0, 0))
    ctl.add(Measurement("ruler", [(cols * 0.6, rows * 0.72), (cols * 0.6, rows * 0.95)], 0, 0))
    wait(app, lambda: False, 1.0)
    img = w.view_area.grab().toImage()  # the viewport and its banner (speckle makes big PNGs)
    print(small_png(img.scaledToWidth(int(img.width() * 0.75), Qt.SmoothTransformation),
                    OUT / "us_doppler_region_ruler.png"))

    from imaging_assist.models.card import load_card
    from imaging_assist_ui.ai.model_card_dialog import ModelCardDialog

    dlg = ModelCardDialog(load_card(HERE.parent / "weights" / "cxr-pneumonia"), parent=w)
    dlg.resize(900, 1000)
    dlg.show()
    wait(app, lambda: False, 0.8)
    browser = next((c for c in dlg.findChildren(QTextBrowser)), None)
    if browser is not None:  # scrolled to the Data section: the split counts
        browser.find("original_test")
        wait(app, lambda: False, 0.3)
    print(small_png(dlg.grab().toImage(), OUT / "model_card_splits.png"))
    dlg.close()
    w.close()
    wait(app, lambda: False, 2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
