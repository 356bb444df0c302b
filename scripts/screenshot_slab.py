"""Screenshot of a thick-slab MIP on the real LIDC-IDRI-0001 slab, at 1920x1080:

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_slab.py docs/screenshots

Writes ``ct_slab_mip.png`` (256 colours): MPR with the axial view as a 10 mm MIP at the slice
through the nodule (amber corner lines: the slices taken, values from the centre slice), the
coronal and sagittal views as plain slices.  The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLAB = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data")) / "ct" / "lidc_idri_0001_slab"
sys.path.insert(0, str(ROOT / "scripts"))
from _screens import fresh_window, small_png, wait  # noqa: E402


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:] or ["docs/screenshots"])[0])
    out.mkdir(parents=True, exist_ok=True)
    app, win, _home = fresh_window("ia-slab-")
    win.open_path(str(SLAB))
    assert wait(app, lambda: win.load_state == "done", 60), win.last_error
    win.set_layout("mpr")
    axial = next(v for v in win.view_area.mpr_views if v.plane.name == "axial")
    win.view_area._on_activated(axial)
    from imaging_assist.nodules import lidc_xml
    vol = win.doc.volume
    masks = [lidc_xml.consensus_mask(n) for n in lidc_xml.load_for_volume(SLAB / "annotations_69.xml", vol)]
    centre = lidc_xml.centre_lps(max(masks, key=lambda m: m.sum()), vol)  # the nodule, as the readers drew it
    win.doc.set_position(tuple(int(round(x)) for x in vol.lps_to_index(centre)[::-1]))
    win.slab_controls.thickness.setValue(10.0)
    win.slab_controls.choose("mip")
    wait(app, lambda: False, 0.5)
    for v in win.view_area.views():
        v.repaint()
    path = out / "ct_slab_mip.png"
    size = small_png(win.grab().toImage(), path)
    print(json.dumps({"screenshot": str(path), "bytes": size, "corner": axial.annotation_text()["bl"][:2]}))
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
