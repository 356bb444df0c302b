"""Screenshots of session 20's changed screens, into docs/screenshots/:

* ``enhanced_mr_thickness.png``: an enhanced (multi-frame) MR whose SliceThickness is only in its
  frames' Pixel Measures: the corner shows "Thick 3 mm" (it showed none before);
* ``nodule_growth_withheld.png``: the LIDC slab's nodule compared with the same nodule in a copy
  dated six months earlier: the nodule reaches the models' 32 mm window, so its sizes are lower
  bounds and the growth gives no verdict and no VDT, and says why.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_session20.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, small_png, wait  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
OUT = HERE.parent / "docs" / "screenshots"
CENTRE = (56.21, 86.34, -115.87)  # the slab's nodule (labels.csv, LPS mm)


def _dated_copy(src: Path, dst: Path, study_date: str) -> None:
    dst.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyDate, ds.StudyInstanceUID, ds.SeriesInstanceUID = study_date, study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dst / f.name)


def _show(app, w, uid):
    s = next(x for x in w.loading.index.image_series() if x.uid == uid)
    w.load_series(s.key)
    assert wait(app, lambda: w.load_state == "done" and w.doc.series is not None and w.doc.series.uid == uid
                and w.doc.volume.loaded.all(), 60)


def _analyse(app, w):
    n0 = len(w.nodules.history)
    assert w.nodules.analyse_at(CENTRE)
    assert wait(app, lambda: not w.nodules.busy and len(w.nodules.history) == n0 + 1, 180), w.nodules.last_line
    return w.nodules.history[-1]


def main() -> int:
    app, w, home = fresh_window()
    w.open_path(str(SHARED / "dicom" / "mr_enhanced_siemens_series_jpeg2000_lossless_derived"))
    assert wait(app, lambda: w.load_state == "done" and w.doc.volume is not None and w.doc.volume.loaded.all(), 60)
    w.doc.set_index(0, 12)
    wait(app, lambda: False, 0.8)
    print(w.view_area.single.annotation_text()["bl"])
    print(small_png(w.view_area.grab().toImage(), OUT / "enhanced_mr_thickness.png"))

    slab = SHARED / "ct" / "lidc_idri_0001_slab"
    root = Path(home) / "two_studies"
    (root / "current").mkdir(parents=True)
    for f in sorted(slab.glob("*.dcm")):
        (root / "current" / f.name).symlink_to(f)
    _dated_copy(slab, root / "prior", "19990701")
    w.open_path(str(root))
    assert wait(app, lambda: w.load_state == "done" and w.loading.index is not None
                and len(w.loading.index.image_series()) == 2, 60)
    prior_uid = next(x.uid for x in w.loading.index.image_series() if w.loading.index.study_of(x).date == "19990701")
    current_uid = next(x.uid for x in w.loading.index.image_series() if x.uid != prior_uid)
    _show(app, w, prior_uid)
    _analyse(app, w)
    _show(app, w, current_uid)
    cur = _analyse(app, w)
    w.nodules._select(cur)
    w.nodules.compare_menu()
    w.nodules._menu.actions()[0].trigger()
    w.nodules._menu.hide()
    wait(app, lambda: False, 1.0)
    print(w.nodules.entry_lines())
    print(small_png(w.grab().toImage(), OUT / "nodule_growth_withheld.png"))
    w.close()
    wait(app, lambda: False, 2)  # the loader threads end before the interpreter
    return 0


if __name__ == "__main__":
    sys.exit(main())
