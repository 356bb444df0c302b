"""Stopping a Ray started on this machine for a test or a benchmark, and only that one.

``ray stop`` would stop every Ray on the machine (a user's own cluster included), so the
processes are found by their command line, which names the temporary folder the Ray was
started with (``--temp-dir``), plus their children (workers rename themselves "ray::...").
Used by tests/test_batch.py and scripts/bench_batch.py.
"""

from __future__ import annotations


def pids_of(tag: str) -> set[int]:
    """Processes whose command line names ``tag``, and their descendants."""
    import psutil

    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(tag in a for a in (p.info["cmdline"] or [])):
                pids.add(p.pid)
                pids.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return pids


def stop(tag: str) -> None:
    """Terminate the processes of :func:`pids_of`, killing those still alive after 10 s."""
    import psutil

    procs = []
    for pid in pids_of(tag):
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
