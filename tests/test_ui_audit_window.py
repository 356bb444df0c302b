"""Help → Audit trail…: the read-only window over the audit trail, in the real main window
(offscreen): the events of a real study open, the verify result, a broken trail shown as such."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.gui

DEMO = ROOT / "imaging_assist" / "data" / "demo" / "ct_head_phantom"


@pytest.fixture()
def trail(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _open_from_menu(w):
    from imaging_assist_ui.shared.audit_window import AuditWindow

    help_menu = next(a.menu() for a in w.menuBar().actions() if a.menu() is not None and a.text() == "&Help")
    act = next(a for a in help_menu.actions() if a.text().replace("&", "") == "Audit trail…")
    act.trigger()
    win = w._audit_window
    assert isinstance(win, AuditWindow) and win.isVisible()
    assert wait_until(lambda: win.result is not None, 20)
    return win


def test_audit_window_shows_the_study_open_and_a_holding_chain(trail, tmp_path_factory):
    from imaging_assist.privacy import audit

    w = open_window(tmp_path_factory, str(DEMO))
    try:
        win = _open_from_menu(w)
        assert win.result["ok"] and "chain holds" in win.status.text()
        rows = win.visible_rows()
        assert rows and rows[0][3] == "study.open"  # newest first: the demo CT the window loaded
        assert "modality=CT" in rows[0][4]
        n = len(audit.read_entries())
        assert [int(r[0]) for r in rows] == list(range(n, 0, -1))
        # read-only: no cell can be edited
        assert win.table.editTriggers() == win.table.EditTrigger.NoEditTriggers
        # find a patient by ID: the pseudonym is recomputed, rows of other patients hidden
        audit.record("test.other", patient_id="SOMEONE-ELSE")
        win.refresh()
        assert wait_until(lambda: win.refresh_btn.isEnabled() and len(win.visible_rows()) == n + 1, 20)
        win.patient.setText("SOMEONE-ELSE")
        win._find_patient()
        rows = win.visible_rows()
        assert len(rows) == 1 and rows[0][3] == "test.other" and "1 match the filter" in win.note.text()
        win.grab().save(str(trail / "audit_window.png"))
        # a broken trail: the window says where, in the error colour
        p = audit.log_path()
        lines = p.read_bytes().splitlines()
        del lines[0]
        p.write_bytes(b"".join(x + b"\n" for x in lines))
        win.refresh()
        assert wait_until(lambda: win.refresh_btn.isEnabled() and not win.result["ok"], 20)
        assert "BROKEN at line 1" in win.status.text() and "deleted" in win.status.text()
        assert not win.copy_btn.isEnabled()
        win.grab().save(str(trail / "audit_window_broken.png"))
        win.close()
    finally:
        w.close()


def test_audit_window_reads_a_trail_in_parts(trail, monkeypatch, qapp):
    from imaging_assist.privacy import audit
    from imaging_assist_ui.shared.audit_window import AuditWindow

    monkeypatch.setenv("IMAGING_ASSIST_AUDIT_ROTATE_BYTES", "4096")
    for i in range(30):
        audit.record("model.run", i=i)
    n_parts = len(audit.parts())
    assert n_parts >= 2
    win = AuditWindow()
    try:
        assert wait_until(lambda: win.result is not None, 20)
        assert win.result["ok"] and f"30 lines in {n_parts} closed part(s) and the live log" in win.status.text()
        assert f"and {n_parts} closed parts beside it, read first" in win.path_label.text()
        assert [int(r[0]) for r in win.visible_rows()] == list(range(30, 0, -1))
        # a long trail: only the newest rows are kept in memory and listed, and the note says so
        import imaging_assist_ui.shared.audit_window as A
        monkeypatch.setattr(A, "MAX_ROWS", 7)
        win.refresh()
        assert wait_until(lambda: win.refresh_btn.isEnabled() and win.table.rowCount() == 7, 20)
        assert [int(r[0]) for r in win.visible_rows()] == list(range(30, 23, -1))
        assert "30 event(s), newest first" in win.note.text() and "the newest 7 listed" in win.note.text()
    finally:
        win.close()
