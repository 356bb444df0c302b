"""Screenshots of a hanging protocol applied and of the cine bar (issue 17), at 1920x1080:

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_hanging_cine.py docs/screenshots

* ``reading_hanging.png`` - a CR chest study opening by the built-in protocol: the current film
  beside the most recent prior.  The pair is two of the bundled demo films (``cxr_03_pa`` as
  the 2024 study, ``cxr_04_pa`` as the 2020 one) given one PatientID in a temp folder, only
  for the picture; a third, older film (``cxr_01_ap``, 2016) shows that the most recent prior
  is chosen.
* ``reading_cine.png`` - the real XA cine (96 frames, FrameTime 33 ms) playing in bounce mode,
  with the cine bar (step, play/pause, loop/bounce, 30 fps from FrameTime) under the image.

Own config / data folders in a temp dir (no user protocol, no remembered position).  The last
stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))
XA = SHARED / "dicom" / "xa_multiframe_cine_jpeg_baseline"
DEMO = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray"
sys.path.insert(0, str(ROOT / "scripts"))
from _screens import fresh_window, small_png, wait  # noqa: E402


def write_pair(root: Path) -> dict:
    import pydicom
    from pydicom.uid import generate_uid
    uids = {}
    for name, src, date in (("now", "cxr_03_pa.dcm", "20240301"), ("prior", "cxr_04_pa.dcm", "20200115"),
                            ("old", "cxr_01_ap.dcm", "20160610")):
        ds = pydicom.dcmread(DEMO / src)
        ds.PatientID, ds.PatientName, ds.BodyPartExamined = "DEMO-PAIR", "DEMO^PAIR", "CHEST"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = date
        for kw in ("PatientAge", "PatientBirthDate", "PatientSex"):  # three people's: not one patient's
            if kw in ds:
                delattr(ds, kw)
        ds.StudyDescription = f"CHEST ({name})"
        d = root / name
        d.mkdir()
        ds.save_as(d / "a.dcm")
        uids[name] = ds.SeriesInstanceUID
    return uids


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:] or ["docs/screenshots"])[0])
    out.mkdir(parents=True, exist_ok=True)

    app, win, home = fresh_window("ia-hang-shot-")
    data = home / "studies"
    data.mkdir()
    uids = write_pair(data)
    sizes = {}

    def shot(name):
        wait(app, lambda: False, 0.5)
        sizes[name] = small_png(win.grab().toImage(), out / name)

    win.open_path(str(data), series=uids["now"])
    g = win.view_area.grid
    assert wait(app, lambda: win.load_state == "done" and win.view_area.layout_mode == "1x2"
                 and win.reading.loading_done() and g.cells[1].doc.volume is not None, 60), win.last_error
    shown = [c.doc.series.uid for c in g.visible_cells()]
    assert shown == [uids["now"], uids["prior"]], shown
    message = win.statusBar().currentMessage()
    shot("reading_hanging.png")

    win.open_path(str(XA))
    assert wait(app, lambda: win.load_state == "done" and win.doc.volume is not None
                 and win.doc.volume.loaded.all() and win.view_area.layout_mode == "single", 60), win.last_error
    wait(app, lambda: False, 0.3)
    win.cine_bar.mode.setCurrentIndex(1)
    win.cine_bar.mode.activated.emit(1)
    win.play_btn.setChecked(True)
    assert win.cine.playing
    wait(app, lambda: False, 1.5)
    assert win.cine.playing
    frame = win.doc.position[0]
    shot("reading_cine.png")
    win.cine.pause()
    info = {"files": sizes, "hanging": message, "cine": {"fps": win.cine.fps, "source": win.cine.rate_source,
                                                         "mode": win.cine.mode, "frame": frame}}
    win.close()
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
