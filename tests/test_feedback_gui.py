"""Reader feedback through the GUI into the prediction log (issue 18, pytest-qt offscreen):
a real cxr-pneumonia run in the model panel, a verdict by keyboard shortcut and by button,
shown next to the finding; a cxr-lung-seg run corrected with brush / undo / redo / fill and
saved as a correction linked to the run; the Monitor panel's plots from the same log."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from _qt import open_window, wait_until  # noqa: E402
from conftest import ROOT, need  # noqa: E402

DEMO = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray"
CHILD = DEMO / "cxr_01_ap.dcm"  # a 4-year-old's film: fits cxr-pneumonia
ADULT = DEMO / "cxr_03_pa.dcm"  # adult PA: fits cxr-lung-seg

pytestmark = pytest.mark.gui
SHOTS = os.environ.get("IMAGING_ASSIST_SHOTS")  # folder for screenshots, when set


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    h = tmp_path_factory.mktemp("feedback_home")
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(h / "data"))
    mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(h / "config"))
    mp.delenv("IMAGING_ASSIST_PREDICTION_LOG", raising=False)
    yield h
    from imaging_assist.monitoring.log import close_all

    close_all()
    mp.undo()


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, home):
    w = open_window(tmp_path_factory, str(need(CHILD)))
    w.show_model_panel()
    assert wait_until(lambda: w.model_panel._catalog_loaded, 60)
    yield w
    w.close()


def _run(panel, model_id, timeout=120.0) -> str:
    got = []
    assert panel.select_model(model_id), [e.id for e in panel.entries]
    panel.runFinished.connect(got.append)
    try:
        assert panel.run(), panel.error_text()
        assert wait_until(lambda: bool(got), timeout), panel.status.text()
    finally:
        panel.runFinished.disconnect(got.append)
    return got[0]


def _shot(widget, name):
    if SHOTS:
        widget.grab().save(os.path.join(SHOTS, name))


def test_feedback_round_trip_through_the_gui_into_the_log(win):
    from imaging_assist.monitoring.feedback import implied_label, latest_feedback
    from imaging_assist.monitoring.log import open_log

    panel = win.model_panel
    assert _run(panel, "cxr-pneumonia") == "done", panel.error_text()
    box = panel.feedback_box
    rid = panel.last_result.prediction_log_id
    assert rid is not None and box.run_id == rid
    assert list(box.rows) == ["pneumonia"]
    run = open_log().run(rid)
    said = implied_label(run, "pneumonia", "agree")  # what the model said (decision, or top label if withheld)
    # keyboard: Ctrl+Shift+D on the selected finding, with the focus on the image view
    from PySide6.QtWidgets import QApplication

    win.activateWindow()
    with warnings.catch_warnings():  # deprecated, but offscreen windows have no window manager to activate them
        warnings.simplefilter("ignore", DeprecationWarning)
        QApplication.setActiveWindow(win)
    target = QApplication.focusWidget() or win
    QTest.keyClick(target, Qt.Key_D, Qt.ControlModifier | Qt.ShiftModifier)
    assert wait_until(lambda: "pneumonia" in latest_feedback(rid), 5)
    fb = latest_feedback(rid)["pneumonia"]
    assert fb["verdict"] == "disagree"
    assert fb["correct_label"] == ({"normal", "pneumonia"} - {said}).pop()
    assert box.status_of("pneumonia").startswith("✗ disagreed")
    # the reader changes their mind with the button; the latest verdict counts, both are kept
    box.rows["pneumonia"]["buttons"]["agree"].click()
    assert latest_feedback(rid)["pneumonia"]["verdict"] == "agree"
    assert box.status_of("pneumonia").startswith("✓ agreed")
    assert len(open_log().query("SELECT id FROM feedback WHERE run_id = ?", (rid,))) == 2
    # a new run of the panel clears the box; the old verdict is shown again for the same run
    box.set_result(panel.last_result, box.card, box.volume)
    assert box.status_of("pneumonia").startswith("✓ agreed")
    # each result's button groups go with it (session 24: three per study stayed until the window closed)
    from PySide6.QtCore import QCoreApplication, QEvent
    from PySide6.QtWidgets import QButtonGroup

    for _ in range(3):
        box.set_result(panel.last_result, box.card, box.volume)
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert len(box.findChildren(QButtonGroup)) == len(box.rows) > 0
    _shot(panel, "feedback_controls.png")


def test_segmentation_correction_with_brush_undo_redo_fill(win):
    from imaging_assist.monitoring.feedback import corrections

    panel = win.model_panel
    win.open_path(str(need(ADULT)))
    assert wait_until(lambda: win.load_state == "done" and panel._volume_ready(), 30), win.last_error
    assert _run(panel, "cxr-lung-seg") == "done", panel.error_text()
    box = panel.feedback_box
    rid = panel.last_result.prediction_log_id
    assert box.edit_btn.isVisible() and box.edit_btn.isEnabled()
    ed = box.open_editor()
    assert wait_until(lambda: ed.isVisible(), 5)
    pred = ed.edit.array.copy()
    c = ed.canvas
    ed.set_tool("eraser")
    ed.size.setValue(12)
    jj, ii = np.nonzero(pred[0] > 0)
    j, i = int(np.median(jj)), int(ii[np.argmin(np.abs(jj - np.median(jj)))])  # inside a lung
    assert pred[0, j, i] > 0
    QTest.mouseClick(c, Qt.LeftButton, Qt.NoModifier, c.to_widget(j, i).toPoint())
    assert ed.edit.array[0, j, i] == 0
    erased = ed.edit.changed
    assert erased > 50
    ed.undo()
    assert ed.edit.changed == 0 and np.array_equal(ed.edit.array, pred)
    ed.redo()
    assert ed.edit.changed == erased
    # a brush stroke with a drag: one undo step
    ed.set_tool("brush")
    ed.size.setValue(4)
    a, b = c.to_widget(5, 5).toPoint(), c.to_widget(5, 60).toPoint()  # a stroke in the corner
    QTest.mousePress(c, Qt.LeftButton, Qt.NoModifier, a)
    QTest.mouseMove(c, b)
    QTest.mouseRelease(c, Qt.LeftButton, Qt.NoModifier, b)
    assert ed.edit.changed > erased and ed.edit.array[0, 5, 5] == 1
    ed.undo()  # the whole stroke is one step
    assert ed.edit.changed == erased
    ed.redo()
    # fill: the background region around the corner stroke becomes label 1, undone again
    ed.set_tool("fill")
    n_before = ed.edit.changed
    ed.apply_at(0, pred.shape[2] - 1)
    assert ed.edit.changed > n_before
    ed.undo()
    assert ed.edit.changed == n_before
    _shot(ed, "label_editor.png")
    assert ed.save() is not None
    cs = corrections(run_id=rid)
    assert len(cs) == 1 and cs[0]["changed_voxels"] == ed.edit.changed
    saved = np.load(cs[0]["label_map_file"])
    assert np.array_equal(saved["label_map"], ed.edit.array)
    # a DICOM input: also a DICOM SEG, marked as a reader's correction, on the film's grid
    import pydicom

    seg = pydicom.dcmread(cs[0]["seg_file"])
    assert seg.Modality == "SEG" and seg.ContentLabel == "READER_EDIT"
    assert {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}


def test_monitor_panel_plots_the_log(win):
    box = win.model_panel.feedback_box
    dlg = box.open_monitor()
    try:
        rep = dlg.report
        assert rep is not None and rep["models"][0]["model_id"] == box.card.id
        assert len(dlg.figure.axes) == 4
        assert dlg.alerts.count() >= 1
        dlg.model.setCurrentText("cxr-pneumonia")
        dlg.refresh()
        assert dlg.report["models"][0]["n_runs"] >= 1
        _shot(dlg, "monitor_panel.png")
    finally:
        dlg.close()


def test_drift_alert_shown_in_the_banner_at_start(win):
    """The start-up check (run again here, as at app start) on a log holding a shifted stream
    (rows drawn from the model's own reference, the second half shifted as another scanner)."""
    import sys

    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring.log import open_log
    from imaging_assist.monitoring.reference import load_reference
    from imaging_assist_ui.monitor.feedback_box import _start_alert_check

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_log import synthetic_rows

    card = Registry().get("cxr-pneumonia").card
    open_log().add_runs(synthetic_rows(load_reference(card), card, 400, 3.0))
    win.model_panel.monitor_alerts = None
    _start_alert_check(win.model_panel)
    assert wait_until(lambda: win.model_panel.monitor_alerts is not None, 60)
    assert isinstance(win.model_panel.monitor_alerts, list) and win.model_panel.monitor_alerts
    assert "Drift monitor: cxr-pneumonia" in win.banner_text()


def test_feedback_after_the_log_was_moved_aside_is_refused_not_put_on_another_run(win):
    """A result on screen, the log moved aside and a new one filled to the same run number with
    another film's runs: the reader's verdict on the old result is not saved (one line), and the
    result shown again says it is no longer in the log, instead of showing that run's verdicts."""
    from imaging_assist.monitoring import log as plog
    from imaging_assist.monitoring.feedback import latest_feedback

    panel = win.model_panel
    win.open_path(str(need(CHILD)))
    assert wait_until(lambda: win.load_state == "done" and panel._volume_ready(), 30), win.last_error
    assert _run(panel, "cxr-pneumonia") == "done", panel.error_text()
    box, old = panel.feedback_box, panel.last_result
    rid = old.prediction_log_id
    row = dict(plog.open_log().run(rid))
    plog.db_path().rename(plog.db_path().with_name("moved_aside.sqlite"))
    for n in range(rid):  # another film's runs, up to the same number
        r = {**row, "input_key": f"{n:032x}"}
        r.pop("id", None)
        plog.open_log().add_run(r)
    assert plog.open_log().run(rid)["input_key"] != row["input_key"]
    assert not box.give("pneumonia", "agree")
    assert box.note.text().startswith("not saved: run ") and "another run now" in box.note.text()
    assert latest_feedback(rid) == {}
    box.set_result(old, box.card, box.volume)
    assert box.run_id is None and "no longer in the prediction log" in box.note.text()
    assert not box.rows and not box.edit_btn.isEnabled()


def test_monitor_panel_on_a_damaged_log_says_so_in_one_line(qapp, tmp_path, monkeypatch):
    """The Monitor panel opened on a prediction log damaged on disk: its summary line says so
    (the constructor raised LogError before, and the panel never appeared)."""
    from imaging_assist.monitoring import log as plog
    from imaging_assist_ui.monitor.monitor_panel import MonitorDialog

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    plog.close_all()
    p = plog.db_path()
    p.parent.mkdir(parents=True)
    p.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    try:
        dlg = MonitorDialog(model_id="cxr-pneumonia")
        text = dlg.summary.text()
        assert text.startswith("error: prediction log ") and "cannot be opened" in text, text
        assert "\n" not in text and dlg.report is None
        dlg.close()
    finally:
        plog.close_all()
