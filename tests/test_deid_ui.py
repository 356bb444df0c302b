"""File → Export de-identified… (issue 16) in the real main window (offscreen): the dialog opens
on the shown folder, runs the engine on a worker thread and shows the summary; the output holds
de-identified files only."""

from __future__ import annotations

import os
import shutil

import pydicom
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from conftest import CT_PHANTOM, need  # noqa: E402

pytestmark = pytest.mark.gui


def test_export_deidentified_from_the_file_menu(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    src = tmp_path / "study"
    src.mkdir()
    for f in sorted(need(CT_PHANTOM).glob("*.dcm"))[:4]:
        ds = pydicom.dcmread(f)
        ds.PatientName = "PHIGUI^PATIENT"
        ds.PatientID = "PHI-GUI-77"
        ds.save_as(src / f.name)
    w = open_window(tmp_path_factory, str(src))
    from imaging_assist_ui.shared.deid_dialog import DeidDialog

    file_menu = next(a.menu() for a in w.menuBar().actions() if a.menu() is not None and a.text() == "&File")
    act = next(a for a in file_menu.actions() if a.text() == "Export de-identified…")
    act.trigger()
    dlg = w._deid_dialog
    assert isinstance(dlg, DeidDialog) and dlg.isVisible()
    assert dlg.src.text() == str(src)
    out = tmp_path / "out"
    dlg.out.setText(str(out))
    dlg.boxes["patient_characteristics"].setChecked(True)
    dlg.grab().save(str(tmp_path / "dialog.png"))
    dlg.run()
    assert wait_until(lambda: dlg.summary is not None or dlg.error, 60), dlg.report.toPlainText()
    assert not dlg.error, dlg.error
    text = dlg.report.toPlainText()
    assert "de-identified 4 file(s)" in text and "Retain Patient Characteristics" in text
    assert "site key fingerprint" in text
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 4
    for p in files:
        b = p.read_bytes()
        assert b"PHIGUI" not in b and b"PHI-GUI-77" not in b
    if os.environ.get("DEID_UI_SHOT"):  # for a look at the dialog before and after the run
        shutil.copy(tmp_path / "dialog.png", os.environ["DEID_UI_SHOT"])
        dlg.grab().save(os.environ["DEID_UI_SHOT"].replace(".png", "_after.png"))
    dlg.close()
    w.close()
