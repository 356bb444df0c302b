"""Screenshots of session 19's reading changes, into docs/screenshots/:

* ``corner_instance_number.png``: a CT series numbered the other way round (feet first): the
  corner gives the image's place in the stack and its own InstanceNumber ("Im 21 / 40 (Inst 120)");
* ``priors_later_study.png``: two films of one patient, the older one shown: the Priors dock marks
  the newer study "(later)" (it is not the older one's prior).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_priors_corner.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, small_png, wait  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data" / "dicom"
OUT = HERE.parent / "docs" / "screenshots"


def main() -> int:
    app, w, home = fresh_window()
    src = sorted((DATA / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose").glob("*"))[:40]
    rev = Path(home) / "rev"
    rev.mkdir()
    z = {f.name: float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]) for f in src}
    for k, name in enumerate(sorted(z, key=z.get)):
        ds = pydicom.dcmread(str(next(f for f in src if f.name == name)))
        ds.InstanceNumber = 140 - k  # numbered from the other end of the stack
        ds.save_as(str(rev / name))
    w.open_path(str(rev))
    assert wait(app, lambda: w.load_state == "done" and w.doc.volume is not None and w.doc.volume.loaded.all(), 60)
    w.doc.set_index(0, 20)
    wait(app, lambda: False, 0.5)
    print(small_png(w.grab().toImage(), OUT / "corner_instance_number.png"))

    films = Path(home) / "films"
    cr = DATA / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
    for date in ("20190101", "20240301"):
        (films / date).mkdir(parents=True)
        ds = pydicom.dcmread(str(cr), force=True)
        ds.StudyDate, ds.PatientID = date, "P-DEMO"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.save_as(str(films / date / "f.dcm"))
    w.open_path([str(films / "20190101"), str(films / "20240301")])
    assert wait(app, lambda: w.load_state == "done" and w.doc.volume is not None, 60)
    wait(app, lambda: False, 2.0)
    index = w.loading.index
    older = next(s for s in index.image_series() if index.study_of(s).date == "20190101")
    w.loading.load_series(older.key)
    wait(app, lambda: False, 2.0)
    w.reading.priors_dock.show()
    wait(app, lambda: False, 1.0)
    print(small_png(w.reading.priors_dock.grab().toImage(), OUT / "priors_later_study.png"))
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
