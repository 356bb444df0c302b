"""``batch --engine local`` with worker processes, stopped by a signal to its main process only
(``kill PID``, a supervisor's ``Popen.terminate()``, ``docker stop`` with it as PID 1): SIGTERM
did what Ctrl-C does (workers stopped, run marked ``interrupted``, exit 130) instead of ending the
main process alone, whose workers (a model loaded each) and resource tracker then stayed as
orphans for ever, the run ``running``; and a worker never outlives a main process killed
outright (SIGKILL), whose cleanup cannot run."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import SHARED, need

ROOT = Path(__file__).resolve().parents[1]
PNEUMONIA = SHARED / "cxr" / "pneumonia_kermany"


def _films(n: int) -> list[Path]:
    rows = need(PNEUMONIA / "labels.csv").read_text().splitlines()[1:]
    return [PNEUMONIA / r.split(",")[0] for r in rows if r.split(",")[3] == "test"][::7][:n]


def _procs() -> list[tuple[int, str, int, int, str]]:
    """(pid, state, ppid, session, command line) of every process."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append((int(p), fields[0], int(fields[1]), int(fields[3]), cmd))
    return out


def _alive_in_session(sid: int) -> list[tuple[int, str]]:
    """The living processes of session ``sid`` (a zombie has ended: only its exit status is left)."""
    return [(pid, cmd[:100]) for pid, state, _, s, cmd in _procs() if s == sid and state != "Z"]


def _rows(db_path: Path, sql: str) -> list:
    """Read-only, never waiting on the batch's lock (the poll must not sleep through the run)."""
    if not db_path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.05)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return []


def _torch_loaded(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtorch" in f.read()
    except OSError:
        return False


def _start_batch(tmp_path: Path):
    """The command in its own session with two worker processes, once both have loaded torch:
    they are in their initializer then, past the parent-death guard, loading their model (the
    first row would take a minute more on a busy machine).  Returns (process, table, stderr file)."""
    src = tmp_path / "films"
    src.mkdir()
    for f in _films(40):
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    err = tmp_path / "stderr.txt"
    # -P: the imaging_assist of PYTHONPATH / the installed one, never the current folder's;
    # output into files, not pipes: orphaned workers would hold a pipe open
    with open(err, "wb") as e, open(tmp_path / "stdout.txt", "wb") as o:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "imaging_assist", "batch", str(src), "--model", "cxr-pneumonia",
             "--out", str(out), "--engine", "local", "--processes", "2"],
            stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True)
    workers: list = []
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        workers = [pid for pid, state, ppid, _, cmd in _procs()
                   if ppid == proc.pid and "spawn_main" in cmd and state != "Z"]
        if len(workers) == 2 and all(map(_torch_loaded, workers)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be stopped:\n" + err.read_text()
    assert len(workers) == 2 and all(map(_torch_loaded, workers)), (workers, err.read_text())
    return proc, out / "batch.sqlite", err


def _wait_gone(sid: int, seconds: float) -> list:
    end = time.time() + seconds
    left = _alive_in_session(sid)
    while left and time.time() < end:
        time.sleep(0.1)
        left = _alive_in_session(sid)
    return left


def _kill_session(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of it, orphans included
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


def test_sigterm_to_the_main_process_stops_the_workers_and_records_interrupted(tmp_path):
    proc, db, err = _start_batch(tmp_path)
    try:
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` does
        rc = proc.wait(timeout=20)
        left = _wait_gone(proc.pid, max(1.0, 20 - (time.time() - t0)))
        assert not left, f"left running after SIGTERM (rc {rc}): {left}"
        assert rc == 130, (rc, err.read_text())
        text = err.read_text()
        assert "Traceback" not in text and "run the same command again to resume" in text, text
        assert _rows(db, "SELECT state FROM runs") == [("interrupted",)]
    finally:
        _kill_session(proc)


def test_workers_end_when_the_main_process_is_killed_outright(tmp_path):
    proc, _, err = _start_batch(tmp_path)
    try:
        proc.kill()  # SIGKILL: no cleanup of the main process runs
        proc.wait(timeout=10)
        left = _wait_gone(proc.pid, 10)
        assert not left, f"left running after the main process was killed: {left}"
    finally:
        _kill_session(proc)


def _fallback_worker(ready) -> None:
    """A worker where prctl is not to be had (macOS, Windows): a thread waits on the parent."""
    from imaging_assist.batch.engines import flush_audit_on_sigterm, stop_with_parent

    flush_audit_on_sigterm()
    real, sys.platform = sys.platform, "darwin"  # this process only: the branch without prctl
    try:
        stop_with_parent()
    finally:
        sys.platform = real
    ready.set()
    time.sleep(60)


PARENT = r"""
import multiprocessing as mp, sys, time
sys.path.insert(0, sys.argv[1])
import test_batch_sigterm_s24 as t
ctx = mp.get_context("spawn")
ready = ctx.Event()
w = ctx.Process(target=t._fallback_worker, args=(ready,))
w.start()
end = time.time() + 60
while not ready.wait(0.1) and w.is_alive() and time.time() < end:
    pass
print(w.pid if ready.is_set() else f"not ready (exit code {w.exitcode})", flush=True)
time.sleep(60)
"""


def test_without_prctl_a_thread_ends_the_worker_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-P", "-c", PARENT, str(Path(__file__).parent)],
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True)
    try:
        line = parent.stdout.readline().strip()
        assert line.isdigit(), f"the worker did not start: {line!r}"
        worker = int(line)
        parent.kill()
        parent.wait(timeout=10)
        end = time.time() + 30  # at once here; a loaded machine (the suite on two workers) was slower once
        while time.time() < end and any(p == worker and s != "Z" for p, s, *_ in _procs()):
            time.sleep(0.1)
        assert not any(p == worker and s != "Z" for p, s, *_ in _procs()), "the worker outlived its parent"
    finally:
        _kill_session(parent)
