"""The model panel runs the version the site uses now: a site version rolled back (or promoted)
from the command line while the viewer was open was still run from the panel's list until the
list was refreshed by hand -- the reader got results of a version the site had withdrawn."""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from test_ui_model_panel import DEMO, cls_card, density_classifier  # noqa: E402

pytestmark = pytest.mark.gui
MODEL = "demo-dense-cls"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The test classifier added as a folder, and a site version of it (its copy, promoted)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("site")
    mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(root / "cfg"))
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(root / "data"))
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring import versions as V

    base = save_model_folder(root / "lib" / "dense", cls_card(), density_classifier())
    Registry().add_folder(root / "lib")
    cand = root / "cand"
    shutil.copytree(base, cand)
    card = json.loads((cand / "model.json").read_text())
    card.update(version="1.0.0+site.1", training={"base_version": "1.0.0"})
    (cand / "model.json").write_text(json.dumps(card))
    (cand / "metrics.json").write_text(json.dumps({"non_inferiority": {
        "metric": "AUC", "margin": 0.05, "comparisons": {"local_holdout": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}}}}))
    V.register_candidate(MODEL, "1.0.0+site.1", cand, "1.0.0", {})
    V.promote(MODEL, "1.0.0+site.1")
    yield base, cand
    mp.undo()


def _listed(panel):
    return next(e for e in panel.entries if e.card is not None and e.card.id == MODEL and not e.shadowed_by)


def test_a_version_rolled_back_elsewhere_is_not_run_from_the_open_panel(qapp, tmp_path_factory, site):
    from imaging_assist.monitoring import versions as V

    base, cand = site
    w = open_window(tmp_path_factory, str(DEMO))
    try:
        w.show_model_panel()
        panel = w.model_panel
        assert wait_until(lambda: panel._catalog_loaded, 60)
        e = _listed(panel)
        assert e.card.version == "1.0.0+site.1" and e.folder == cand.resolve()
        assert panel.current_entry().id == MODEL

        V.rollback(MODEL)  # `imaging-assist models rollback` in a terminal beside the viewer

        assert panel.run() is False  # the withdrawn version never starts
        msg = panel.error_text()
        assert "the version in use changed since the list was read" in msg, msg
        assert "1.0.0+site.1" in msg and "-> 1.0.0 in" in msg and "\n" not in msg
        assert panel.job is None or panel.state != "running"
        # the list is read again by itself: the shipped-line version is listed and runs
        assert wait_until(lambda: panel._catalog_loaded and panel.state == "idle"
                          and _listed(panel).card.version == "1.0.0", 60)
        assert _listed(panel).folder == base.resolve()
        # the reader's choice stays selected (not the best fit of the new list) and the line stays
        assert panel.current_entry().card.id == MODEL and panel.current_entry().card.version == "1.0.0"
        assert "the version in use changed" in panel.error_text() and panel.error.isVisible()
        got = []
        panel.runFinished.connect(got.append)
        assert wait_until(lambda: all(panel.verify_state.get(str(x.folder)) for x in panel.entries
                                      if x.card is not None and not x.shadowed_by), 60)
        assert panel.run(), panel.error_text()
        assert wait_until(lambda: bool(got), 60)
        assert got[0] == "done", (got, panel.error_text())
    finally:
        w.close()
