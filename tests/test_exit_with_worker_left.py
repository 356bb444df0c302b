"""`imaging-assist view --screenshot` on a busy machine exited with SIGABRT (134) now and then:
a worker thread (the model catalogue, in torch) was still inside a C++ function when Python
finalised; on its way back it was ended with pthread_exit, and the unwind through torch's C++
frames called std::terminate ("terminate called without an active exception").  The console
script now ends the process at once, with its exit code and its output flushed, when a thread
is still running after the window closed.  Here a daemon thread spins in torch the whole time,
which made the old exit abort every time."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import CT_PHANTOM, ROOT, need

CHILD = r"""
import sys, threading, torch
big = torch.rand(5_000_000)
def spin():
    while True:
        torch.isfinite(big)
threading.Thread(target=spin, name="stuck-in-torch", daemon=True).start()
from imaging_assist_ui.launcher import main
sys.exit(main(sys.argv[1:]))
"""


def test_view_screenshot_exits_cleanly_with_a_thread_left_in_torch(tmp_path):
    shot = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "IMAGING_ASSIST_DATA_DIR": str(tmp_path / "ia")}
    p = subprocess.run([sys.executable, "-c", CHILD, "view", str(need(CT_PHANTOM)), "--screenshot", str(shot),
                        "--size", "1280x720"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "terminate called" not in p.stderr
    assert shot.stat().st_size > 0


def test_a_headless_command_is_left_alone(tmp_path):
    # no window ran: the normal exit (and its finalisation) is kept
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data")}
    (tmp_path / "empty").mkdir()
    code = ("import sys, threading, time; threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); "
            "from imaging_assist_ui.launcher import main; r = main(['scan', sys.argv[1]]); print('after', r)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "empty")], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=env)
    assert p.returncode == 0 and "after" in p.stdout, p.stderr
