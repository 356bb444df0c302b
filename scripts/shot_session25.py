"""Screenshots of session 25's changed screens, into docs/screenshots/:

* ``model_panel_version_changed.png``: the AI model panel on a chest film, its list read while
  a site fine-tune of cxr-pneumonia (1.0.0+site.1) was the promoted version; the version is
  then rolled back as `imaging-assist models rollback` does in a terminal beside the viewer, and
  Run is pressed: the panel says the version in use changed and reads the list again (before,
  it ran the rolled-back version).
* ``card_sanity_other_weights.png``: the model card dialog of a model whose sanity.json was
  made with other weights: the section says the explanation check is not of these weights
  (before, the section was left out as if no check had been made).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/shot_session25.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _screens import fresh_window, panel_on_model, small_png, wait  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
OUT = HERE.parent / "docs" / "screenshots"
SHIPPED = HERE.parent / "weights" / "cxr-pneumonia"
MODEL = "cxr-pneumonia"


def _site_version(home: Path) -> Path:
    """A promoted site version of the shipped model (its weights, a passing metrics.json)."""
    from imaging_assist.monitoring import versions as V

    cand = home / "site1"
    cand.mkdir()
    for n in ("model.safetensors", "ood.safetensors"):
        shutil.copy(SHIPPED / n, cand / n)
    card = json.loads((SHIPPED / "model.json").read_text())
    card.update(version="1.0.0+site.1", name=card["name"] + " — site fine-tune 1.0.0+site.1",
                training={"base_version": "1.0.0"})
    (cand / "model.json").write_text(json.dumps(card))
    (cand / "metrics.json").write_text(json.dumps({"non_inferiority": {
        "metric": "AUC", "margin": 0.05, "comparisons": {"local_holdout": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}}}}))
    V.register_candidate(MODEL, "1.0.0+site.1", cand, "1.0.0", {})
    V.promote(MODEL, "1.0.0+site.1")
    return cand


def main() -> int:
    from PySide6.QtCore import QPoint, QRect

    app, w, home = fresh_window("ia-shot25-")
    _site_version(Path(home))
    panel = panel_on_model(app, w, Path(home) / "film", MODEL,
                           SHARED / "dicom" / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm")
    wait(app, lambda: False, 1.0)
    print("listed:", panel.current_entry().card.version, panel.current_entry().folder)
    from imaging_assist.monitoring import versions as V

    V.rollback(MODEL)
    print("run:", panel.run(), "|", panel.error_text())
    wait(app, lambda: False, 0.3)
    img = w.grab().toImage()
    r = QRect(panel.mapTo(w, QPoint(0, 0)), panel.size())
    print(small_png(img.copy(r), OUT / "model_panel_version_changed.png"))

    card_sanity_shot(app, w, home)
    return 0



def card_sanity_shot(app, w, home) -> None:
    """The model card dialog of a model whose sanity.json was made with other weights."""
    from imaging_assist.models.card import load_card
    from imaging_assist_ui.ai.model_card_dialog import ModelCardDialog

    f = Path(home) / "retrained" / MODEL
    shutil.copytree(SHIPPED, f)
    doc = json.loads((f / "sanity.json").read_text())
    doc["weights_sha256"] = "5f1c" + "0" * 60  # made with other weights
    (f / "sanity.json").write_text(json.dumps(doc))
    dlg = ModelCardDialog(load_card(f), parent=w)
    dlg.resize(900, 900)
    dlg.show()
    wait(app, lambda: False, 0.8)
    bar = dlg.text.verticalScrollBar()
    anchor = dlg.text.toPlainText().find("Explanation sanity check")
    cur = dlg.text.textCursor()
    cur.setPosition(anchor)
    dlg.text.setTextCursor(cur)
    dlg.text.ensureCursorVisible()
    bar.setValue(min(bar.maximum(), dlg.text.cursorRect().top() + bar.value() - 40))
    wait(app, lambda: False, 0.5)
    print(small_png(dlg.grab().toImage(), OUT / "card_sanity_other_weights.png"))
    dlg.close()


if __name__ == "__main__":
    raise SystemExit(main())
