"""The viewer and what it leaves behind: SIGTERM (logout, ``kill``, a supervisor) quits it as
Ctrl-C does (it ended the process at once, and a DICOM export's temporary report stayed in the
temporary folder); a one-off ``view --screenshot`` does not add the study to the recent list; and
with IMAGING_ASSIST_CONFIG_DIR the GUI's settings (the recent list names study folders) live
there, not in ~/.config beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import ROOT, need
from test_cli_walk_signal_fixes import viewer_stopped_by

CR = ROOT.parent / "shared" / "data" / "dicom" / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def test_sigterm_to_the_viewer_quits_it_as_ctrl_c_does(tmp_path):
    viewer_stopped_by(tmp_path, lambda p: p.send_signal(signal.SIGTERM))  # the process only, as `kill PID`


def test_a_screenshot_run_records_no_recent_study_and_settings_follow_the_config_dir(tmp_path):
    study = tmp_path / "ZZSECRET_PATIENT_study"
    study.mkdir()
    (study / "film.dcm").symlink_to(need(CR))
    cfg, xdg = tmp_path / "cfg", tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items() if k != "IMAGING_ASSIST_SETTINGS"}
    env.update(QT_QPA_PLATFORM="offscreen", IMAGING_ASSIST_CONFIG_DIR=str(cfg), XDG_CONFIG_HOME=str(xdg),
               HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-P", "-m", "imaging_assist_ui", "view", str(study), "--screenshot",
                        str(tmp_path / "shot.png")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    written = [f for f in tmp_path.rglob("*") if f.is_file() and f.suffix != ".png" and f.parent != study]
    for f in written:
        assert b"ZZSECRET_PATIENT" not in f.read_bytes(), f"the study folder is named in {f}"
    assert not any(xdg.rglob("*.conf")), "GUI settings written beside the relocated config folder"


def test_gui_settings_live_in_the_relocated_config_folder(tmp_path, monkeypatch):
    from imaging_assist_ui.app import _settings

    monkeypatch.delenv("IMAGING_ASSIST_SETTINGS", raising=False)
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    assert _settings().fileName() == str(tmp_path / "cfg" / "gui.ini")
    monkeypatch.setenv("IMAGING_ASSIST_SETTINGS", str(tmp_path / "mine.ini"))
    assert _settings().fileName() == str(tmp_path / "mine.ini")
