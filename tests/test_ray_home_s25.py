"""``batch --engine ray`` and the user's home: Ray 2.60 writes a token for the cluster
``ray.init`` starts into ``~/.ray/auth_token``, outside the user's folders and left after the
run; with a read-only home (locked-down workstations, containers) the batch ended in "internal
error (OSError: Read-only file system)".  The run's cluster now gets its own token in its
temporary folder (removed with it); a token the user set is used as before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from test_batch_sigterm_s24 import _films


def test_a_ray_batch_with_a_read_only_home_runs_and_writes_nothing_there(tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the read-only home test")
    home, films, out = tmp_path / "home", tmp_path / "films", tmp_path / "out"
    home.mkdir()
    films.mkdir()
    for f in _films(2):
        shutil.copy(f, films / f.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["HOME"] = str(home)
    cmd = (f"mount --bind {home} {home} && mount -o remount,bind,ro {home} || exit 9; "
           f"{sys.executable} -P -m imaging_assist batch {films} --model cxr-pneumonia --out {out} --engine ray")
    flags = [] if os.geteuid() == 0 else ["-r"]
    r = subprocess.run(["unshare", *flags, "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=600,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert "2 ok, 0 failed" in r.stdout, r.stdout
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert list(home.iterdir()) == []


def test_the_token_is_the_runs_own_unless_the_user_set_one(tmp_path, monkeypatch):
    from imaging_assist.batch import engines as E

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    # an earlier run's token path in this process, its folder removed since: replaced
    gone = str(tmp_path / "ia-ray-old" / "auth_token")
    monkeypatch.setattr(E, "_token_path_set", gone)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", gone)
    run = tmp_path / "ia-ray-new"
    run.mkdir()
    E._own_auth_token(str(run))
    p = run / "auth_token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(p)
    assert len(p.read_text()) == 64 and (p.stat().st_mode & 0o777) == 0o600
    # the user's own: left to Ray
    other = tmp_path / "ia-ray-other"
    other.mkdir()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-users-token")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    E._own_auth_token(str(other))
    assert not (other / "auth_token").exists() and "RAY_AUTH_TOKEN_PATH" not in os.environ
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    (tmp_path / "home" / ".ray" / "auth_token").write_text("x" * 64)
    E._own_auth_token(str(other))
    assert not (other / "auth_token").exists() and "RAY_AUTH_TOKEN_PATH" not in os.environ


def test_a_ray_started_and_stopped_in_this_process_leaves_no_token_path_behind():
    """A driver that starts its own Ray, stops it, then joins a cluster (bench_batch does) must not
    carry RAY_AUTH_TOKEN_PATH of a removed folder into the join."""
    from imaging_assist.batch.engines import init_ray, stop_ray

    before = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    started, tmp = init_ray(None, num_cpus=1)
    try:
        assert started and tmp
        if not any(before.values()) and not os.path.isfile(os.path.expanduser("~/.ray/auth_token")):
            assert os.environ.get("RAY_AUTH_TOKEN_PATH") == os.path.join(tmp, "auth_token")
    finally:
        stop_ray(tmp)
    assert not os.path.exists(tmp)
    assert os.environ.get("RAY_AUTH_TOKEN_PATH") == before["RAY_AUTH_TOKEN_PATH"]
