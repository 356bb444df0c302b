"""A process stopped with SIGTERM (kill, timeout, systemctl stop) removes its temporary
de-identified copies and identified PACS originals: atexit did not run on SIGTERM, and the
identified files stayed in the temporary folder."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import DICOM, need

CHILD = r"""
import sys, time
from imaging_assist.privacy.deid import deidentified_input
p = deidentified_input(sys.argv[1])
print(p, flush=True)
time.sleep(120)
"""


def test_sigterm_removes_the_de_identified_copy(tmp_path):
    src = need(DICOM / "cr_chest_monochrome1_fuji")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        copy = Path(proc.stdout.readline().strip())
        assert copy.exists() and tmp_path in copy.parents
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    assert not copy.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("imaging-assist-deid-")]
