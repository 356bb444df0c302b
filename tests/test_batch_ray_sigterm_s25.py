"""``batch --engine ray`` stopped with SIGTERM to its main process (``kill PID``, a supervisor's
``terminate()``): ``ray.init`` had replaced the command's handler with Ray's own
(``sys.exit(15)``), so the run was recorded ``failed`` and the command exited 15, where the
local engine (and Ctrl-C) record ``interrupted``, exit 130 and say how to resume.  The handler is
put back after ``ray.init``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from test_batch_sigterm_s24 import ROOT, _alive_in_session, _films, _kill_session, _rows, _wait_gone


def test_sigterm_to_a_ray_batch_records_interrupted_and_exits_130(tmp_path):
    src = tmp_path / "films"
    src.mkdir()
    for f in _films(40):
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    db = out / "batch.sqlite"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    err = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-P", "-m", "imaging_assist", "batch", str(src), "--model", "cxr-pneumonia",
           "--out", str(out), "--engine", "ray"]
    with open(err, "wb") as e, open(tmp_path / "stdout.txt", "wb") as o:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (_rows(db, "SELECT count(*) FROM results") or [(0,)])[0][0] >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before it could be stopped:\n" + err.read_text()
        proc.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` does
        rc = proc.wait(timeout=120)
        text = err.read_text()
        assert rc == 130, (rc, text[-3000:])
        assert "Traceback" not in text and "run the same command again to resume" in text, text[-3000:]
        assert _rows(db, "SELECT state FROM runs") == [("interrupted",)]
        assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
        left = _wait_gone(proc.pid, 30)
        assert not left, f"Ray's processes left running after SIGTERM: {left}"
        done = _rows(db, "SELECT count(*) FROM results WHERE status = 'ok'")[0][0]
        assert 2 <= done < 40
    finally:
        _kill_session(proc)
    assert not _alive_in_session(proc.pid)
