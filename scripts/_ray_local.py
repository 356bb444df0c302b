"""A Ray head started on this machine for a test or a benchmark, and stopped: only that one.

:func:`start_head` runs ``ray start --head`` on 127.0.0.1 in its own temporary folder with a
token of its own and no dashboard.  ``ray stop`` would stop every Ray on the machine (a user's
own cluster included), so :func:`stop` finds the processes by their command line, which names
that folder (``--temp-dir``), plus their children (workers rename themselves "ray::...").
Used by tests/test_batch.py and scripts/bench_batch.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def start_head(tmp: str, args: list[str]) -> tuple[str, dict, dict]:
    """``ray start --head`` on a free 127.0.0.1 port with ``--temp-dir tmp`` (keep it short:
    Ray's socket paths must fit) plus ``args``; returns (address, the token-authentication
    variables a client needs, the environment the head was started with).  Raises
    RuntimeError with Ray's last lines when it does not start."""
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    token = Path(tmp) / "auth_token"  # token authentication with a token of its own
    token.write_text(os.urandom(32).hex())
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **auth)
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(port),
                        "--include-dashboard=false", "--node-ip-address", "127.0.0.1", "--temp-dir", tmp,
                        "--disable-usage-stats"] + list(args),
                       env=dict(env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"), capture_output=True, text=True,
                       timeout=180)
    if p.returncode:
        raise RuntimeError(f"ray start --head failed: {p.stderr[-2000:]}")
    return f"127.0.0.1:{port}", auth, env


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
