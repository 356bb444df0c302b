"""Screenshot of the viewer with a chest film, the lung outline and a Grad-CAM heat map
(docs/screenshots/heatmap_after.png, docs/overlays.md).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_heatmap.py OUT.png [DICOM] [FLAGGED.png]

Opens the demo's adult PA film (Pneumocystis pneumonia; or DICOM), runs cxr-lung-seg and then
cxr-pneumonia with Grad-CAM from the AI panel (with the research override where the card does
not fit: cxr-pneumonia was trained on children), exactly as a reader would, and saves the whole
window with the heat map shown; FLAGGED.png first, as the window opens when the engine flagged the
map (hidden, with the reason).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(out: str, path: str | None = None, flagged_out: str | None = None) -> int:
    import os
    import tempfile

    # own config and data folders: no prediction log, drift alert or added models of the user's
    for var in ("IMAGING_ASSIST_CONFIG_DIR", "IMAGING_ASSIST_DATA_DIR"):
        os.environ[var] = tempfile.mkdtemp()

    from PySide6.QtCore import QSettings

    from _qt import wait_until
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow

    path = path or str(ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm")
    make_app()
    cfg = Path(tempfile.mkdtemp()) / "s.ini"
    w = MainWindow(settings=QSettings(str(cfg), QSettings.IniFormat))
    w.resize(1920, 1080)
    w.show()
    w.open_path(path)
    assert wait_until(lambda: w.load_state == "done", 60), w.last_error
    panel = w.model_panel
    w.show_model_panel()
    panel.refresh()
    assert wait_until(lambda: panel._catalog_loaded, 60)
    for model, method in (("cxr-lung-seg", None), ("cxr-pneumonia", "gradcam")):
        e = next(e for e in panel.entries if e.card is not None and e.card.id == model)
        panel.tree.setCurrentItem(panel._item(str(e.folder)))
        panel.set_method(method)
        panel.override.setChecked(not panel.matches[str(e.folder)].ok)
        assert panel.run(), panel.last_error
        assert wait_until(lambda: not panel.running, 300), model
        print(model, panel.state, panel.status.text())
    wait_until(lambda: False, 0.5)
    heat = [l for l in w.doc.layers if l.kind == "heatmap"]
    if flagged_out and any(getattr(l, "flags", None) for l in heat):
        w.save_screenshot(flagged_out)  # as the reader first sees it: the flagged map hidden, and why
        print("flagged:", [l.flags for l in heat], "saved", flagged_out)
    for layer in heat:  # the reader ticks the map to look at it anyway
        layer.visible = True
    wait_until(lambda: False, 0.3)
    ok = w.save_screenshot(out)
    print("saved" if ok else "not saved", out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
