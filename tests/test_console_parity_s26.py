"""The same verdict on every surface (session 26's parity audit):

* ``analyze`` on a terminal printed no line per item (only when stderr was not a terminal): the
  decision with its figures, the OOD note and a flagged map's warning were never seen there;
* a research override withheld the decision in results.json, but the prediction log had the run
  as positive (logged at run time, before the override was applied), and the viewer's feedback
  box said POSITIVE under the panel's "Decisions withheld";
* the feedback box called a rule-out "review" (above the threshold, another class more likely)
  POSITIVE;
* the demo's console and the batch table did not say that a map is flagged.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from types import SimpleNamespace

from conftest import ROOT

DEMO_CXR = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray"


def test_analyze_on_a_terminal_prints_each_items_line(tmp_path, monkeypatch, capsys):
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the progress bar is shown
    assert main(["analyze", str(DEMO_CXR / "cxr_01_ap.dcm"), "--model", "cxr-pneumonia", "--explain",
                 "gradcam", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "pneumonia 0.782 >= threshold 0.7477: positive [" in err, err
    assert "warning: " in err and "the Grad-CAM map of pneumonia is flagged (the viewer hides it)" in err


def _pa_copy(tmp_path):
    """The demo's child AP film said to be PA: cxr-pneumonia (trained on AP) does not fit it."""
    import pydicom

    ds = pydicom.dcmread(DEMO_CXR / "cxr_02_ap.dcm")
    ds.ViewPosition = "PA"
    d = tmp_path / "pa"
    d.mkdir()
    ds.save_as(d / "pa.dcm")
    return d


def test_a_research_override_is_withheld_in_the_prediction_log(tmp_path, monkeypatch, capsys):
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    src = _pa_copy(tmp_path)
    assert main(["analyze", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "refused")]) == 2
    assert main(["analyze", str(src), "--model", "cxr-pneumonia", "--research-override",
                 "--out", str(tmp_path / "o")]) == 0
    (item,) = json.loads((tmp_path / "o" / "results.json").read_text())["items"]
    assert item["decision"]["withheld"] and item["decisions"]["pneumonia"]["positive"] is None
    from imaging_assist.monitoring import log as plog

    plog.close_all()
    con = sqlite3.connect(tmp_path / "data" / plog.DB_NAME)
    rows = con.execute("SELECT model_id, score, positive FROM runs").fetchall()
    con.close()
    assert [(m, p) for m, _, p in rows] == [("cxr-pneumonia", None)], rows  # not logged positive
    assert rows[0][1] > 0.7477  # the score above the threshold: it would have been


def test_the_feedback_box_words_withheld_and_review_as_the_engine_decides():
    from imaging_assist.inference.checks import withhold_overridden
    from imaging_assist_ui.monitor.feedback_box import FeedbackBox

    res = SimpleNamespace(probabilities={"benign": 0.8, "malignant": 0.2},
                          decisions={"malignant": {"threshold": 0.1346, "positive": True}})
    assert FeedbackBox._findings(res, None) == [("malignant", "malignant: review (most likely: benign) (0.20)")]
    res = SimpleNamespace(probabilities={"pneumonia": 0.99, "normal": 0.01},
                          decisions={"pneumonia": {"threshold": 0.7477, "positive": True}})
    assert FeedbackBox._findings(res, None) == [("pneumonia", "pneumonia: POSITIVE (0.99)")]
    assert withhold_overridden(res, ["view position PA"])  # the viewer's run does this at once
    assert FeedbackBox._findings(res, None) == [("pneumonia", "pneumonia: withheld (0.99)")]
    assert withhold_overridden(res, []) == ""


def test_the_demo_console_and_the_batch_table_say_a_flagged_map(tmp_path):
    from imaging_assist.batch.item import _row_from_item
    from imaging_assist.demo import analysis_lines

    d = {"probabilities": {"pneumonia": 0.78, "normal": 0.22}, "warnings": ["w"],
         "heatmaps": [{"label": "pneumonia", "method": "gradcam", "file": "h.npy",
                       "flags": ["negative faithfulness (-0.14): removing ..."]}]}
    said = "the Grad-CAM map of pneumonia is flagged (the viewer hides it): negative faithfulness (-0.14)"
    assert any(x.startswith(said) for x in analysis_lines(d))
    row = _row_from_item(d, tmp_path)
    assert row["warnings"][0] == "w" and row["warnings"][1].startswith(said)


def test_the_viewers_run_keeps_what_the_card_could_not_check(qapp, tmp_path, monkeypatch):
    """A child's JPEG film (no age, view or body part): analyze writes "... not checked" for each;
    the viewer's run (its exports: report, SR) left them out."""
    import shutil
    import time

    from PySide6.QtCore import QSettings

    from conftest import SHARED, need
    from imaging_assist_ui.ai.model_panel import FOLDER_ROLE
    from imaging_assist_ui.ai.session_runs import session_runs
    from imaging_assist_ui.main_window import MainWindow

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))

    def wait(cond, timeout):
        end = time.time() + timeout
        while time.time() < end and not cond():
            qapp.processEvents()
            time.sleep(0.02)
        return cond()

    film = tmp_path / "film"
    film.mkdir()
    shutil.copy(need(SHARED / "cxr" / "pneumonia_kermany" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"), film)
    win = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    win.resize(1400, 900)
    win.show()
    try:
        win.open_path(str(film))
        assert wait(lambda: win.load_state == "done" and win.doc.volume is not None, 60)
        win.show_model_panel()
        panel = win.model_panel
        assert wait(lambda: panel._catalog_loaded, 60)
        for n in range(panel.tree.topLevelItemCount()):
            it = panel.tree.topLevelItem(n)
            e = panel._entry(it.data(0, FOLDER_ROLE))
            if e is not None and e.card is not None and e.card.id == "cxr-pneumonia" and not e.shadowed_by:
                panel.tree.setCurrentItem(it)
        panel.method.setCurrentIndex(panel.method.count() - 1)  # "None": no heat map (a faster run)
        done = []
        panel.runFinished.connect(done.append)
        assert panel.method.currentData() is None
        assert panel.run(), panel.error_text()
        assert wait(lambda: bool(done), 120) and done == ["done"]
        assert wait(lambda: bool(session_runs(win).runs), 10)
        (run,) = session_runs(win).runs.values()
        ws = run.item["warnings"]
        assert any("patient age not given" in w and "not checked" in w for w in ws), ws
        assert any("view position not given" in w for w in ws), ws
    finally:
        win.close()
        win.deleteLater()
