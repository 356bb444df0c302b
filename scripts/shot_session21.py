"""Screenshots of session 21's changed reading screens, into docs/screenshots/:

* ``prior_same_id_other_name.png``: a chest film whose only prior was made under the same
  Patient ID but another name: the prior is hung beside it, and the hanging's note, the Priors
  dock, the viewport's link note and the browser's "same ID as another name" say so;
* ``study_uid_two_patients.png``: one StudyInstanceUID used by two patients: the browser lists
  both patients, each film under its own name, with the warning on the series;
* ``corner_name_groups.png``: a film whose name has three component groups (alphabetic,
  ideographic, phonetic: ``\\ISO 2022 IR 87``): the corner text shows each group (the glyphs need
  a CJK font on the machine, e.g. Debian's ``fonts-wqy-microhei``; without one Qt draws boxes).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_session21.py

The films are copies of the real Fuji CR chest (shared/data/dicom/cr_chest_monochrome1_fuji)
with the identifying attributes changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, open_and_wait as _open, small_png, wait  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
CR = SHARED / "dicom" / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
OUT = HERE.parent / "docs" / "screenshots"


def film(path: Path, pid, name, date, study=None, flip=False, charset=None):
    ds = pydicom.dcmread(CR, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.BodyPartExamined = pid, name, date, "CHEST"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.SeriesDescription = ds.StudyDescription = f"PA chest {date}"
    if flip:
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=True, little_endian=True)


def main() -> int:
    app, w, home = fresh_window("ia-shot21-")
    a = Path(home) / "same_id"
    film(a / "now.dcm", "P100", "SMITH^JOHN", "20240301")
    film(a / "prior.dcm", "P100", "JONES^MARY", "20200301", flip=True)
    _open(app, w, a)
    print(small_png(w.grab().toImage(), OUT / "prior_same_id_other_name.png"))

    b = Path(home) / "one_study_uid"
    uid = generate_uid()
    film(b / "a.dcm", "PA1", "ALPHA^ANN", "20240301", study=uid)
    film(b / "b.dcm", "PB2", "BETA^BOB", "20240301", study=uid, flip=True)
    w.set_layout("single")
    _open(app, w, b)
    print(small_png(w.grab().toImage(), OUT / "study_uid_two_patients.png"))

    c = Path(home) / "name_groups"
    film(c / "j.dcm", "J1", "Yamada^Tarou=山田^太郎=やまだ^たろう", "20240301", charset=["", "ISO 2022 IR 87"])
    _open(app, w, c)
    print(small_png(w.view_area.grab().toImage(), OUT / "corner_name_groups.png"))
    w.close()
    wait(app, lambda: False, 2.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
