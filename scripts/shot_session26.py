"""Screenshots of session 26's changed screens, into docs/screenshots/:

* ``model_panel_region_not_meaningful.png``: the AI model panel after cxr-pneumonia with a
  Grad-CAM map on a child's film (Kermany person100_bacteria_475) whose lungs cxr-lung-seg finds
  as slivers: the region line says the share is NOT MEANINGFUL (before, the panel said "6% of the
  pneumonia heat map lies inside the lungs" as a normal figure and flagged the map "mostly
  outside the lungs" on it; the region's quality checks were made only in analyze's results.json).
* ``feedback_box_review.png``: the reader-feedback box under the AI panel after us-breast on a
  benign BUSI image (benign_022): malignant 0.20 is above its rule-out threshold while benign is
  more likely: "review (most likely: benign)" as the panel says (before: "malignant: POSITIVE").
* ``overlays_reopened_flagged_pm.png``: the Overlays panel after opening a folder with the demo's
  child AP film and the Parametric Map that ``analyze --explain gradcam --dicom`` wrote of it: the
  map comes back hidden and flagged with its reasons (before: shown, unflagged).
* ``card_sanity_other_weights.png``: taken again; the card dialog's stale-sanity line now takes its
  reason from ``explain.sanity.other_weights_reason`` (the same words).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_session26.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, open_and_wait as _open, panel_on_model, small_png, wait  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
OUT = HERE.parent / "docs" / "screenshots"
MODEL = "cxr-pneumonia"
CHILD = SHARED / "cxr" / "pneumonia_kermany" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"


def main() -> int:
    app, w, home = fresh_window("ia-shot26-")
    panel = panel_on_model(app, w, Path(home) / "film", MODEL, CHILD)
    panel.method.setCurrentIndex(panel.method.findData("gradcam"))
    done = []
    panel.runFinished.connect(done.append)
    print("run:", panel.run(), "|", panel.error_text())
    wait(app, lambda: bool(done), 180)
    wait(app, lambda: False, 0.5)
    print("status:", done)
    # the result text: scrolled to its Heat maps section (the panel is taller than the window)
    res = panel.results
    res.resize(res.width(), 520)
    doc = res.toPlainText()
    cur = res.textCursor()
    cur.setPosition(max(0, doc.find("Heat maps")))
    res.setTextCursor(cur)
    res.ensureCursorVisible()
    bar = res.verticalScrollBar()
    bar.setValue(min(bar.maximum(), res.cursorRect().top() + bar.value() - 200))
    wait(app, lambda: False, 0.5)
    print(small_png(res.grab().toImage(), OUT / "model_panel_region_not_meaningful.png"))

    # --- the feedback box on a rule-out "review"
    w.close()
    app, w, home = fresh_window("ia-shot26-")
    panel = panel_on_model(app, w, Path(home) / "us", "us-breast",
                           SHARED / "ultrasound" / "breast_busi" / "benign" / "benign_022.jpg")
    panel.method.setCurrentIndex(panel.method.count() - 1)  # no heat map
    done = []
    panel.runFinished.connect(done.append)
    print("run:", panel.run(), "|", panel.error_text())
    wait(app, lambda: bool(done), 180)
    wait(app, lambda: False, 0.8)
    print("feedback:", [r["text"] for r in panel.feedback_box.rows.values()])
    print(small_png(panel.feedback_box.grab().toImage(), OUT / "feedback_box_review.png"))

    # --- a flagged map's Parametric Map, reopened
    import shutil

    from imaging_assist.cli.main import main as cli

    pmview = Path(home) / "pmview"
    pmview.mkdir()
    shutil.copy(HERE.parent / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_01_ap.dcm", pmview)
    cli(["analyze", str(pmview), "--model", "cxr-pneumonia", "--explain", "gradcam", "--dicom",
         "--out", str(Path(home) / "out")])
    for f in (Path(home) / "out" / "dicom").glob("*_PM_*.dcm"):
        shutil.copy(f, pmview)
    w.close()
    app, w, home = fresh_window("ia-shot26-")
    _open(app, w, pmview)
    wait(app, lambda: any(getattr(x, "flags", None) for x in w.doc.layers), 30)
    wait(app, lambda: False, 1.0)
    print("layers:", [(x.name, x.visible, getattr(x, "flags", None)) for x in w.doc.layers])
    w.layers_panel.tree.expandAll()
    wait(app, lambda: False, 0.5)
    print(small_png(w.layers_panel.grab().toImage(), OUT / "overlays_reopened_flagged_pm.png"))

    from shot_session25 import card_sanity_shot

    card_sanity_shot(app, w, home)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
