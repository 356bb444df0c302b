"""Screenshot of session 20's linked-scrolling note, into docs/screenshots/:

* ``linked_gap_note.png``: a current CT study (1 mm slices) and its prior (3 mm slices starting
  4 mm further up) side by side, the current scrolled below the prior's first slice: the prior
  shows its nearest slice and says it is 4.0 mm away instead of parking there silently.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_linked_gap.py
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
    src = sorted((DATA / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose").glob("*"),
                 key=lambda p: int(p.stem[1:]))[:60]
    for folder, files, date in (("cur", src, "20240301"), ("prior", src[4::3], "20220115")):
        d = Path(home) / "studies" / folder
        d.mkdir(parents=True)
        study, series = generate_uid(), generate_uid()
        for n, f in enumerate(files):
            ds = pydicom.dcmread(str(f))
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyDate, ds.InstanceNumber = date, n + 1
            ds.save_as(str(d / f"{n:03d}.dcm"))
    w.open_path(str(Path(home) / "studies"))
    assert wait(app, lambda: w.load_state == "done" and w.doc.volume is not None and w.doc.volume.loaded.all(), 60)
    if w.doc.volume.n_slices != 60:
        cur = next(s for s in w.loading.index.image_series() if len(s.instances) == 60)
        w.loading.load_series(cur.key)
        assert wait(app, lambda: w.load_state == "done" and w.doc.volume.n_slices == 60, 60)
    w.reading.priors.button.click()
    g = w.view_area.grid
    assert wait(app, lambda: all(c.doc.volume is not None and c.doc.volume.loaded.all()
                                 for c in g.visible_cells()[:2]), 60)
    w.doc.set_index(0, 0)
    wait(app, lambda: False, 0.8)
    print(g.cells[1].gap_note)
    print(small_png(w.view_area.grab().toImage(), OUT / "linked_gap_note.png"))
    w.close()
    wait(app, lambda: False, 2)  # the viewports' loader threads end before the interpreter
    return 0


if __name__ == "__main__":
    sys.exit(main())
