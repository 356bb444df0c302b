"""Races between the reader's dialogs / Cancel and what the app writes or keeps (s23).

File → Export results (DICOM)… and File → Export report… show a box or a file dialog, which run
nested event loops: another series may be shown, or a run may finish, before OK.  What is
written must be what was listed, of the series it was listed for (else nothing, in one line).
Cancel pressed after the engine's last cancel check must still add nothing.  The races are made
deterministic by doing the switch / the run inside the patched dialogs."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtWidgets import QFileDialog, QMessageBox

from _qt import wait_until
from test_ui_model_panel import DEMO, models, panel, run_and_wait, win  # noqa: F401

from conftest import ROOT

CXR = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm"  # another patient


def show(win, path):
    win.open_path(str(path))
    assert wait_until(lambda: win.load_state == "done" and win.doc.volume is not None
                      and win.model_panel._volume_ready(), 60), win.last_error


@pytest.fixture
def ct(win, panel):
    """The demo CT shown, with a finished demo-dense-cls run (Grad-CAM) on it."""
    if win.doc.volume is None or win.doc.volume.modality != "CT":
        show(win, DEMO)
    from imaging_assist_ui.ai.session_runs import series_key

    if (series_key(win.doc.volume), "demo-dense-cls") not in win.session_runs.runs:
        assert panel.select_model("demo-dense-cls")
        panel.set_method("gradcam")
        assert run_and_wait(panel) == "done", panel.error_text()
    return win


@pytest.fixture
def boxes(monkeypatch):
    """The warning / information boxes, recorded instead of shown."""
    said = []
    for name in ("warning", "information"):
        monkeypatch.setattr(QMessageBox, name,
                            staticmethod(lambda *a, **k: said.append(a[2]) or QMessageBox.Ok))
    return said


def test_series_shown_while_the_confirmation_box_is_open_writes_nothing(ct, boxes, monkeypatch, tmp_path):
    """The CR patient shown before OK: the old code wrote the CR patient's report into the CT
    study (and the CT's objects were listed)."""
    win = ct
    listed = []

    def switch_then_ok(box):
        listed.append(box.informativeText())
        show(win, CXR)
        return QMessageBox.Ok

    monkeypatch.setattr(QMessageBox, "exec", switch_then_ok)
    out = tmp_path / "dicom"
    written = win.dicom_exporter.export(str(out), confirm=True)
    assert "demo-dense-cls" in listed[0]
    assert written == [] and (not out.exists() or not any(out.iterdir()))
    err = win.dicom_exporter.last_error
    assert "series changed" in err and "\n" not in err and boxes == [err]


def test_series_shown_while_the_folder_dialog_is_open_writes_nothing(ct, boxes, monkeypatch, tmp_path):
    win = ct
    out = tmp_path / "dicom"
    out.mkdir()

    def switch_then_folder(*a, **k):
        show(win, CXR)
        return str(out)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(switch_then_folder))
    assert win.dicom_exporter.export(None, confirm=False) == []
    assert not list(out.iterdir())
    assert "series changed" in win.dicom_exporter.last_error


def test_a_run_that_finishes_while_the_box_is_open_is_not_written(ct, panel, boxes, monkeypatch, tmp_path):
    """Listed: the dense-cls objects and the report; a segmenter run that ends before OK adds
    neither a SEG nor an item in the report (the old code wrote 5 objects for 3 listed)."""
    import imaging_assist.export.report_pdf as report_pdf

    win = ct
    listed = []

    def run_then_ok(box):
        listed.extend(ln[2:] for ln in box.informativeText().splitlines())
        assert panel.select_model("demo-tissue-seg3d")
        panel.set_method(None)
        assert run_and_wait(panel) == "done", panel.error_text()
        return QMessageBox.Ok

    reports = []
    real = report_pdf.write_report_pdf
    monkeypatch.setattr(report_pdf, "write_report_pdf",
                        lambda rep, path, **k: reports.append(rep) or real(rep, path, **k))
    monkeypatch.setattr(QMessageBox, "exec", run_then_ok)
    written = win.dicom_exporter.export(str(tmp_path / "dicom"), confirm=True)
    assert sorted(ln.split(":")[0] for ln in listed) == sorted(o.kind for o in written), (listed, written)
    assert not any("seg3d" in o.path.name for o in written)
    items = [it["model"] for st in reports[0]["studies"] for it in st["items"]]
    assert items == ["demo-dense-cls"]
    # the run was kept: the next export lists and writes it
    assert any(ln.startswith("SEG") for ln in win.dicom_exporter.plan())


def test_pdf_report_not_written_when_another_series_is_shown_in_the_save_dialog(ct, boxes, monkeypatch,
                                                                               tmp_path):
    win = ct
    path = tmp_path / "report.pdf"

    def switch_then_path(*a, **k):
        show(win, CXR)
        return str(path), "PDF (*.pdf)"

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(switch_then_path))
    assert win.report_exporter.export(None, open_after=False) is None
    assert not path.exists()
    assert len(boxes) == 1 and "series changed" in boxes[0] and "\n" not in boxes[0]


def test_cancel_while_the_overlays_are_prepared_adds_nothing(ct, panel, monkeypatch):
    """Cancel pressed after the engine's last cancel check (the worker builds the overlays):
    "Cancelling…" then "Cancelled — nothing was added", no layer, nothing in the session's runs."""
    import imaging_assist_ui.ai.model_panel as mp
    from imaging_assist_ui.ai.session_runs import series_key

    win = ct
    entered, clicked = threading.Event(), threading.Event()
    real = mp.build_layers

    def held(res, card):
        entered.set()
        clicked.wait(20)
        return real(res, card)

    monkeypatch.setattr(mp, "build_layers", held)
    key = (series_key(win.doc.volume), "demo-dense-cls")
    before = win.session_runs.runs.get(key)
    assert before is not None
    assert panel.select_model("demo-dense-cls")
    panel.set_method("gradcam")
    n_layers = len(win.doc.layers)
    got = []
    panel.runFinished.connect(got.append)
    try:
        assert panel.run()
        job = panel.job
        assert wait_until(entered.is_set, 60)
        panel.cancel_btn.click()
        assert panel.status.text() == "Cancelling…"
        clicked.set()
        assert wait_until(lambda: bool(got), 30)
    finally:
        clicked.set()
        panel.runFinished.disconnect(got.append)
    assert got == ["cancelled"]
    assert panel.state == "cancelled" and panel.status.text() == "Cancelled — nothing was added."
    assert len(win.doc.layers) == n_layers and panel.last_result is None
    assert win.session_runs.runs.get(key) is before
    assert wait_until(job.done, 20) and job.status == "cancelled"  # the worker checked the flag too
    assert panel.run_btn.isEnabled()
