"""``analyze --dicom`` stopped with SIGTERM (``kill``, ``timeout``, a supervisor) while it builds
the per-study reports of a run over several studies: the default SIGTERM ended the process at
once and the temporary report (the patient's name, ID, birth date and the film, as a PDF) stayed
in the temporary folder.  Now SIGTERM ends it through SystemExit, as Ctrl-C does, and the folder
goes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pydicom
from pydicom.uid import generate_uid

from conftest import DICOM, ROOT, need

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def test_sigterm_while_the_study_reports_are_built_leaves_no_report_in_the_temporary_folder(tmp_path):
    src, tmp, out = tmp_path / "in", tmp_path / "tmp", tmp_path / "out"
    src.mkdir()
    tmp.mkdir()
    for i in range(6):  # six studies: one report each, built one after the other
        ds = pydicom.dcmread(need(CR), force=True)  # a file without File Meta, as it is shared
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.PatientName, ds.PatientID = f"ZZSECRET^PAT{i}", "PHIID98765"
        ds.save_as(src / f"s{i}.dcm", enforce_file_format=False)
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "imaging_assist", "analyze", str(src), "--model", "cxr-pneumonia",
         "--research-override", "--dicom", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    seen = []
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        seen = list(tmp.glob("imaging-assist-report-*/report_*.pdf"))
        if seen:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=120)
    assert seen, "the run ended before its reports were built: nothing was tested\n" + err.decode()[-2000:]
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err.decode()[-2000:])
    assert b"Traceback" not in err
    left = [p for p in tmp.rglob("*")]
    assert left == [], f"left in the temporary folder after SIGTERM: {left}"
