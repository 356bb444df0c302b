"""Session 22, command-line inputs: files that are not regular files (a named pipe, /dev/zero)
are refused at once by nodule-growth, analyze --points/--prior and batch; --ig-steps has an upper
bound; an unwritable config folder is one line for `pacs`; the count after a Ctrl-C in analyze.

A named pipe nobody writes to is made by :func:`_fifo`: should a reader block on it (the defect),
a watchdog lets it go after a few seconds (it opens and closes the writing end), so the test fails
on what it checks instead of hanging.  /dev/zero is read in a subprocess whose address space is
capped at 3 GB: a reader without a bound fails fast there instead of eating the machine's memory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import need
from test_cli_nodule_growth import CENTRE, SLAB
from test_cli_walk_signal_fixes import FILM, _cli

#: a subprocess: address space capped (GB), then the command line (argv) or the code (-c) given
CAPPED = ("import resource, sys\n"
          "cap = int(sys.argv.pop(1)) << 30\n"
          "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
          "if sys.argv[1] == '-c':\n"
          "    exec(sys.argv[2])\n"
          "else:\n"
          "    from imaging_assist.cli.main import main\n"
          "    sys.exit(main(sys.argv[1:]))\n")


def _capped(args: list[str], timeout: float = 90, gb: int = 3) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, "-c", CAPPED, str(gb), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@contextlib.contextmanager
def _fifo(path: Path, after: float = 8.0):
    """A named pipe at ``path``; yields a dict whose "released" says whether a reader had to be let go."""
    os.mkfifo(path)
    state = {"released": False}
    done = threading.Event()

    def watchdog():
        wait = after
        while not done.wait(wait):
            wait = 0.1
            try:  # only succeeds while a reader has it open (or is blocked opening it)
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                state["released"] = True
            except OSError:
                pass

    t = threading.Thread(target=watchdog, daemon=True)
    t.start()
    try:
        yield state
    finally:
        done.set()
        t.join(5)


# ------------------------------------------------------------ 1. nodule-growth, analyze --points/--prior
def test_nodule_growth_refuses_a_named_pipe_at_once(tmp_path, capsys):
    with _fifo(tmp_path / "pipe") as fifo:
        t0 = time.monotonic()
        rc, out, err = _cli(["nodule-growth", str(tmp_path / "pipe"), str(tmp_path / "pipe")], capsys)
    assert not fifo["released"] and time.monotonic() - t0 < 8, "blocked on the pipe"
    assert rc == 2 and err.strip() == f"error: {tmp_path / 'pipe'}: not a regular file (named pipe)", err


def test_nodule_growth_refuses_dev_zero_without_reading_it():
    r = _capped(["nodule-growth", "/dev/zero", "/dev/zero"])
    assert r.returncode == 2 and r.stderr.strip() == "error: /dev/zero: not a regular file (character device)", \
        r.stderr[-2000:]


def test_points_csv_refuses_dev_zero_without_reading_it():
    r = _capped(["-c", "from imaging_assist.nodules.run import read_points_csv\n"
                       "from imaging_assist.errors import UserError\n"
                       "try:\n    read_points_csv('/dev/zero')\nexcept UserError as e:\n    print(e)\n"])
    assert r.returncode == 0 and r.stdout.strip() == "--points /dev/zero: not a regular file (character device)", \
        r.stdout + r.stderr[-2000:]


def test_points_csv_still_refuses_a_file_larger_than_the_limit_after_reading_the_limit(tmp_path):
    from imaging_assist.errors import UserError
    from imaging_assist.nodules.run import MAX_POINTS_BYTES, read_points_csv

    p = tmp_path / "big.csv"
    p.write_bytes(b"x,y,z\n" + b"1,2,3\n" * (MAX_POINTS_BYTES // 6 + 1))
    with pytest.raises(UserError, match="more than a points file holds"):
        read_points_csv(p)
    p.write_text("x,y,z,id\n1,2,3,N1\n")
    assert read_points_csv(p) == [("N1", [1.0, 2.0, 3.0])]


@pytest.mark.parametrize("option", ["--points", "--prior"])
def test_analyze_points_and_prior_refuse_a_named_pipe_at_once(tmp_path, capsys, option):
    pipe = tmp_path / "pipe"
    with _fifo(pipe) as fifo:
        t0 = time.monotonic()
        rc, out, err = _cli(["analyze", str(need(SLAB)), "--model", "ct-nodule-malignancy", "--at", CENTRE,
                             option, str(pipe), "--out", str(tmp_path / "out")], capsys)
    assert not fifo["released"] and time.monotonic() - t0 < 8, "blocked on the pipe"
    assert rc == 2 and "not a regular file (named pipe)" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "results.json").exists()


# ------------------------------------------------------------ 2. batch SOURCE that is a pipe or a device
def test_batch_fails_a_named_pipe_source_at_once(tmp_path, capsys):
    pipe = tmp_path / "pipe"
    with _fifo(pipe) as fifo:
        t0 = time.monotonic()
        rc, out, err = _cli(["batch", str(pipe), "--model", "cxr-pneumonia", "--out", str(tmp_path / "out")],
                            capsys)
    assert not fifo["released"] and time.monotonic() - t0 < 8, "blocked on the pipe"
    assert rc == 1 and f"error: {pipe}: not a regular file (named pipe)" in out + err, out + err


def test_batch_file_hash_does_not_read_a_device_or_a_pipe(tmp_path):
    """/dev/zero was hashed for ever, a pipe waited on; both are named in the failed row."""
    from imaging_assist.batch.run import _file_hash

    r = _capped(["-c", "from imaging_assist.batch.run import _file_hash\nprint(_file_hash('/dev/zero')[1])"], 30)
    assert r.returncode == 0 and r.stdout.strip() == "not a regular file (character device)", r.stderr[-2000:]
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    (tmp_path / "d").mkdir()
    assert _file_hash(str(f))[1] is None and _file_hash(str(tmp_path / "d"))[1] is None
    assert _file_hash(str(f))[0] != _file_hash(str(tmp_path / "g"))[0]  # a regular file: its content
    with _fifo(tmp_path / "pipe") as fifo:
        h, why = _file_hash(str(tmp_path / "pipe"))
    assert not fifo["released"] and len(h) == 64 and why == "not a regular file (named pipe)"


# ------------------------------------------------------------ 3. --ig-steps bound
@pytest.mark.parametrize("command", ["analyze", "batch"])
def test_ig_steps_beyond_the_bound_is_refused_on_the_command_line(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as e:
        _cli([command, str(tmp_path), "--model", "cxr-pneumonia", "--explain", "ig", "--ig-steps", "10000",
              "--out", str(tmp_path / "out")], capsys)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--ig-steps" in err and "must be at most 1024 (got 10000)" in err, err
    assert len(err.strip().splitlines()) == 1


def test_ig_steps_bound_in_the_engine():
    import numpy as np

    from imaging_assist.errors import UserError
    from imaging_assist.explain.methods import ExplainConfig

    assert ExplainConfig("ig", ig_steps=1024).ig_steps == ExplainConfig("ig", ig_steps=np.int64(1024)).ig_steps
    for bad in (10_000, 1_000_000, 0, 2.5):
        with pytest.raises(UserError, match="integrated-gradients steps must be a whole number from 1 to 1024"):
            ExplainConfig("ig", ig_steps=bad)
    from imaging_assist.cli.common import MAX_IG_STEPS as CLI_MAX  # the same bound (no torch there)
    from imaging_assist.explain.methods import MAX_IG_STEPS

    assert CLI_MAX == MAX_IG_STEPS == 1024


def test_ig_steps_set_after_the_config_is_made_is_refused_before_captum():
    """Captum would ask for n² * 8 bytes (7.28 TiB) for the weights of 10⁶ steps: in a subprocess
    capped at 8 GB (torch alone takes 3), so that a regression is a quick MemoryError."""
    code = ("import torch\n"
            "from imaging_assist.errors import UserError\n"
            "from imaging_assist.explain.methods import ExplainConfig, attribute\n"
            "cfg = ExplainConfig('ig')\n"
            "cfg.ig_steps = 1_000_000\n"
            "net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
            "try:\n"
            "    attribute(net, torch.zeros(1, 1, 2, 2), cfg, target=0)\n"
            "except UserError as e:\n"
            "    print(e)\n")
    r = _capped(["-c", code], 120, gb=8)
    assert r.returncode == 0 and "from 1 to 1024 (got 1000000)" in r.stdout, r.stdout + r.stderr[-2000:]


# ------------------------------------------------------------ 4. unwritable config folder
@pytest.mark.parametrize("args", [["pacs", "add-node", "x", "--dimse", "AE@host:104"],
                                  ["pacs", "settings", "--ae-title", "FOO"]])
def test_pacs_with_an_unwritable_config_folder_is_one_line(tmp_path, monkeypatch, capsys, args):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "afile" / "cfg"))  # below a plain file
    rc, out, err = _cli(args, capsys)
    assert rc == 2 and err.strip() == f"error: cannot write {tmp_path / 'afile' / 'cfg' / 'pacs.json'}: Not a directory", \
        err


# ------------------------------------------------------------ 5. the count after Ctrl-C
def test_analyze_interrupted_counts_the_inputs_it_never_reached(tmp_path, monkeypatch, capsys):
    import shutil

    import imaging_assist.inference.pipelines as pipelines

    src = tmp_path / "films"
    src.mkdir()
    for i in range(3):
        shutil.copy(need(FILM), src / f"film{i}.jpeg")
    real, calls = pipelines.run_model, []

    def run_model(*a, **k):  # the first film analysed, Ctrl-C during the second
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipelines, "run_model", run_model)
    rc, out, err = _cli(["analyze", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "o")], capsys)
    assert rc == 1, out + err
    assert f"wrote {tmp_path / 'o' / 'results.json'} (1 of 3 input(s) analysed: interrupted)" in out, out
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert len(doc["items"]) == 1 and not doc["items"][0].get("error")
    assert "interrupted by the user: results are partial" in doc["notes"]


def test_finish_run_counts_from_the_items(tmp_path, capsys):
    """Interrupted before any item: 0 of N (it printed "-1 of 0"); not interrupted: as before."""
    from types import SimpleNamespace

    from imaging_assist.cli.common import finish_run

    args = SimpleNamespace(json=False)
    assert finish_run(args, tmp_path, tmp_path, [], {}, [], {}, None, 0, inputs=5) == 1
    assert "(0 of 5 input(s) analysed: interrupted)" in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    items = [{"source": "a", "error": "cannot be analysed"}]
    assert finish_run(args, tmp_path, tmp_path / "b", items, {}, [], {}, None, 1) == 1
    assert "(0 of 1 item(s) analysed)" in capsys.readouterr().out


def test_models_add_with_an_unwritable_config_folder_is_one_line(tmp_path, monkeypatch, capsys):
    from test_demo import build_models

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg0"))
    lib = build_models(tmp_path / "lib")
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "afile" / "cfg"))  # below a plain file
    rc, out, err = _cli(["models", "add", str(lib)], capsys)
    assert rc == 2 and err.strip() == f"error: cannot write {tmp_path / 'afile' / 'cfg' / 'model_folders.json'}: " \
                                      "Not a directory", err


def test_the_trust_store_in_an_unwritable_config_folder_is_one_line(tmp_path, monkeypatch):
    from imaging_assist.errors import UserError
    from imaging_assist.models import trust

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "afile" / "cfg"))
    with pytest.raises(UserError, match="cannot write .*: Not a directory"):
        trust._write_store({})
