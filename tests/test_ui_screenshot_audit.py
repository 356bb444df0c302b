"""A screenshot shows the patient's name and ID in the view's corners: it is an export, and the
audit trail records it (it recorded the study's opening only)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window  # noqa: E402
from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.gui

DEMO = ROOT / "imaging_assist" / "data" / "demo" / "ct_head_phantom"


def test_a_screenshot_is_an_export_in_the_audit_trail(tmp_path, tmp_path_factory, monkeypatch):
    from imaging_assist.privacy import audit

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    w = open_window(tmp_path_factory, str(DEMO))
    try:
        out = tmp_path / "shot.png"
        assert w.save_screenshot(str(out)) and out.is_file()
        ev = [e for e in audit.read_entries() if e.get("event") == "export"]
        assert ev and ev[-1]["fields"]["kind"] == "screenshot"
        assert ev[-1]["fields"]["sha256"] == audit.file_sha256(out)
        assert "patient_id" in ev[-1]["fields"]  # pseudonymised, as every export's
    finally:
        w.close()
