"""Screenshots of the reading layouts (issue 17) on the real CT phantom, at 1920x1080:

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_reading.py docs/screenshots

A temp folder holds two studies of the phantom's patient built from its files (the current
one, 60 slices 1 mm apart; an older "prior", every third slice from the fifth), plus a
second series of the current study.  Writes (256-colour PNGs):

* ``reading_single.png`` - 1×1 as the series opens (Priors dock under Studies, empty Overlays/Measurements docks hidden)
* ``reading_1x2_prior.png`` - the prior opened beside the current study (Priors dock), linked
* ``reading_2x2.png`` - 2×2: current, prior, another series and a sagittal reformat of the
  current CT (resampled here) with the reference line of the current axial slice
* ``reading_mode.png`` - F11 reading mode: only the images and their corner text

The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CT = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data")) \
    / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"
sys.path.insert(0, str(ROOT / "scripts"))
from _screens import fresh_window, small_png, wait  # noqa: E402


def write_studies(root: Path, n_cur: int = 60) -> dict:
    """Current (1 mm), prior (3 mm, 4 mm offset, 2 years older) and a 2 mm series, same patient
    and frame of reference, written from the phantom's files."""
    import pydicom
    from pydicom.uid import generate_uid
    files = sorted(CT.glob("*.dcm"), key=lambda p: int(p.stem[1:]))[:n_cur]
    cur, prior = generate_uid(), generate_uid()
    keys = {}
    for folder, study, num, desc, fs, date in (
            ("cur", cur, 2, "CURRENT 1MM", files, "20240301"),
            ("prior", prior, 2, "PRIOR 3MM", files[4::3], "20220115"),
            ("thin2", cur, 3, "SOFT 2MM", files[1::2], "20240301")):
        d = root / folder
        d.mkdir()
        uid = generate_uid()
        for n, f in enumerate(fs):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber, ds.SeriesDescription, ds.StudyDate = num, desc, date
            ds.StudyDescription = "HEAD (prior)" if folder == "prior" else "HEAD"
            ds.InstanceNumber = n + 1
            ds.save_as(d / f"{n:03d}.dcm")
        keys[folder] = uid
    return keys


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:] or ["docs/screenshots"])[0])
    out.mkdir(parents=True, exist_ok=True)
    from bench_view import _sagittal

    app, win, home = fresh_window("ia-shot-")
    data = home / "studies"
    data.mkdir()
    keys = write_studies(data)
    win.open_path(str(data), series=keys["cur"])
    assert wait(app, lambda: win.load_state == "done" and win.doc.volume is not None
                 and win.doc.volume.loaded.all(), 60), win.last_error
    win.doc.set_index(0, 30)
    wait(app, lambda: False, 0.5)
    sizes = {}

    def shot(name, widget=None):
        wait(app, lambda: False, 0.4)
        img = (widget or win).grab().toImage()
        sizes[name] = small_png(img, out / name)

    shot("reading_single.png")
    win.reading.priors.button.click()  # the prior beside the current study
    g = win.view_area.grid
    assert wait(app, lambda: win.reading.loading_done() and g.cells[1].doc.volume is not None
                 and g.cells[1].doc.volume.loaded.all(), 60)
    win.doc.set_index(0, 31)
    shot("reading_1x2_prior.png")
    win.set_layout("2x2")
    assert wait(app, lambda: win.reading.loading_done() and all(
        c.doc.volume is not None for c in g.visible_cells()[:3]), 60)
    sag = _sagittal(win.doc.volume)
    g.cells[3].doc.set_volume(sag)
    g.cells[3].doc.set_index(0, sag.n_slices // 2 - 20)
    g.cells[3].doc.apply_preset(win.doc.window)
    g._on_activated(g.cells[0].view)
    win.doc.set_index(0, 20)
    shot("reading_2x2.png")
    win.a_full.trigger()
    wait(app, lambda: False, 0.8)
    shot("reading_mode.png")
    info = {"files": sizes, "layout": win.view_area.layout_mode,
            "positions_mm": [float(c.doc.volume.slice_positions[c.doc.position[0]]) for c in g.visible_cells()[:3]]}
    win.a_full.trigger()
    win.close()
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
