"""Unreadable subfolders are reported (anonymize, find_images, batch), the viewer without a
display, Ctrl-C in the viewer, and the small one-line errors (view's own, finetune --out FILE).

An unreadable folder is made by making ``os.scandir`` (what ``os.walk`` and ``Path.rglob`` list a
folder with) raise PermissionError for it: chmod 000 does not stop root, and the suite may run
as root."""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CT_PHANTOM, DICOM, SHARED, need

ROOT = Path(__file__).resolve().parents[1]
GANTRY = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"
FILM = SHARED / "cxr" / "pneumonia_kermany" / "test" / "NORMAL" / "IM-0001-0001.jpeg"
CR = DICOM / "cr_chest_monochrome1_fuji"


def _unreadable(monkeypatch, *folders: Path) -> None:
    """os.scandir of these folders raises PermissionError, as for a folder mode 000 and a non-root user."""
    real = os.scandir
    bad = {os.path.abspath(f) for f in folders}

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)) in bad:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _cli(args, capsys) -> tuple[int, str, str]:
    from imaging_assist.cli.main import main

    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------ unreadable subfolders
def test_anonymize_lists_an_unreadable_subfolder_as_left_out_and_exits_1(tmp_path, monkeypatch, capsys):
    src = tmp_path / "dcm"
    (src / "sub").mkdir(parents=True)
    shutil.copy(need(GANTRY / "11.dcm"), src / "11.dcm")
    shutil.copy(need(GANTRY / "12.dcm"), src / "sub" / "12.dcm")
    _unreadable(monkeypatch, src / "sub")
    rc, out, err = _cli(["anonymize", str(src), str(tmp_path / "anon"), "--workers", "1"], capsys)
    assert rc == 1, out + err
    assert f"left out: {src / 'sub'}: cannot read folder: Permission denied" in out
    assert "de-identified 1 file(s)" in out and "left out 1" in out
    import json

    summary = json.loads((tmp_path / "anon" / "deidentification_summary.json").read_text())
    assert summary["files_left_out"] == 1
    left = summary["left_out"][0]
    assert left["reason"] == "cannot read folder: Permission denied"
    assert "sub" not in left["file"] and not left["file"].endswith(".dcm")  # a pseudonym, of a folder


def test_anonymize_of_an_unreadable_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    src = tmp_path / "dcm"
    src.mkdir()
    shutil.copy(need(GANTRY / "11.dcm"), src / "11.dcm")
    _unreadable(monkeypatch, src)
    rc, out, err = _cli(["anonymize", str(src), str(tmp_path / "anon")], capsys)
    assert rc == 2 and err.strip() == f"error: cannot read folder {src}: Permission denied", err
    assert not (tmp_path / "anon").exists()


def test_find_images_reports_unreadable_folders(tmp_path, monkeypatch):
    from imaging_assist.inference.images import find_images

    for d in ("a", "a/sub", ".hidden", "b"):
        (tmp_path / d).mkdir()
    for f in ("top.png", "a/one.jpg", "a/sub/two.png", ".hidden/three.png", "a/.four.png", "b/notes.txt"):
        (tmp_path / f).write_bytes(b"x")
    _unreadable(monkeypatch, tmp_path / "a" / "sub", tmp_path / ".hidden")
    unreadable: list = []
    assert find_images(tmp_path, unreadable) == [tmp_path / "a" / "one.jpg", tmp_path / "top.png"]
    # a hidden folder is left out by rule (never entered), not unreadable
    assert unreadable == [(str(tmp_path / "a" / "sub"), "cannot read folder: Permission denied")]
    assert find_images(tmp_path) == [tmp_path / "a" / "one.jpg", tmp_path / "top.png"]  # as before
    _unreadable(monkeypatch, tmp_path)
    got: list = []
    assert find_images(tmp_path, got) == [] and got == [(str(tmp_path), "cannot read folder: Permission denied")]


def test_batch_makes_an_unreadable_subfolder_a_failed_row(tmp_path, monkeypatch, capsys):
    src = tmp_path / "img"
    (src / "sub").mkdir(parents=True)
    shutil.copy(need(FILM), src / "sub" / "film.jpeg")
    (src / "notes.txt").write_text("not an image")
    _unreadable(monkeypatch, src / "sub")
    from imaging_assist.batch.sources import collect
    from imaging_assist.models.registry import Registry

    cands, notes, problems = collect([str(src)], [Registry().get("cxr-pneumonia").card])
    assert cands == [] and problems == [(str(src / "sub"), "cannot read folder: Permission denied")]
    rc, out, err = _cli(["batch", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "bt")], capsys)
    assert rc == 1, out + err
    assert f"error: {src / 'sub'}: cannot read folder: Permission denied" in out + err
    assert "1 failed" in out + err


def test_analyze_names_an_unreadable_subfolder_and_exits_1(tmp_path, monkeypatch, capsys):
    """analyze of a folder of films with one subfolder it cannot read: the films it can read are
    analysed, the folder is named in a note (and results.json) and the run exits 1, not 0."""
    src = tmp_path / "img"
    (src / "sub").mkdir(parents=True)
    shutil.copy(need(FILM), src / "film.jpeg")
    shutil.copy(need(FILM), src / "sub" / "film2.jpeg")
    _unreadable(monkeypatch, src / "sub")
    rc, out, err = _cli(["analyze", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "o")], capsys)
    assert rc == 1, out + err
    assert f"note: {src / 'sub'}: cannot read folder: Permission denied" in err
    assert "(1 of 1 item(s) analysed)" in out
    import json

    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert any("cannot read folder" in n for n in doc["notes"])


def test_batch_source_folder_item_with_an_unreadable_subfolder_cannot_be_hashed(tmp_path, monkeypatch):
    """A folder item (a slide of several files): hashed short without a word before."""
    from imaging_assist.batch.sources import Candidate, content_hash
    from imaging_assist.errors import UserError

    (tmp_path / "slide" / "data").mkdir(parents=True)
    (tmp_path / "slide" / "index.dat").write_bytes(b"a")
    (tmp_path / "slide" / "data" / "tiles.dat").write_bytes(b"b")
    c = Candidate("slide", tmp_path / "slide", "slide", str(tmp_path / "slide"))
    assert [Path(f).name for f, _ in c.files()] == ["tiles.dat", "index.dat"]
    _unreadable(monkeypatch, tmp_path / "slide" / "data")
    with pytest.raises(UserError, match="cannot be read to hash it.*Permission denied"):
        content_hash(c)


# ------------------------------------------------------------------------ the viewer
def _env_without_display(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["IMAGING_ASSIST_SETTINGS"] = str(tmp_path / "s.ini")
    return env


@pytest.mark.parametrize("args", [[], ["view", "CR"]], ids=["no-argument", "view"])
def test_viewer_without_a_display_is_one_error_line(tmp_path, args):
    args = [str(need(CR)) if a == "CR" else a for a in args]
    p = subprocess.run([sys.executable, "-m", "imaging_assist_ui", *args], env=_env_without_display(tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no display"), p.stderr


def test_screenshot_without_a_display_renders_offscreen(tmp_path):
    out = tmp_path / "shot.png"
    p = subprocess.run([sys.executable, "-m", "imaging_assist_ui", "view", str(need(CR)), "--screenshot", str(out)],
                       env=_env_without_display(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert out.stat().st_size > 10_000


def test_view_errors_are_error_lines_and_an_unwritable_screenshot_is_refused_before_loading(tmp_path, capsys):
    from imaging_assist_ui.app import run_gui

    t0 = time.perf_counter()
    assert run_gui(str(need(CT_PHANTOM)), screenshot=str(tmp_path / "missing" / "shot.png")) == 2
    assert time.perf_counter() - t0 < 5  # refused at once, not after loading the series
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot write the screenshot {tmp_path / 'missing' / 'shot.png'}: no such folder " \
                  f"{tmp_path / 'missing'}"
    assert run_gui(str(need(CT_PHANTOM)), screenshot=str(tmp_path)) == 2
    assert capsys.readouterr().err.startswith("error: cannot write the screenshot")
    assert run_gui(str(tmp_path / "nothing")) == 2
    assert capsys.readouterr().err.strip() == f"error: no such file or folder: {tmp_path / 'nothing'}"
    assert run_gui(None, screenshot=str(tmp_path / "x.png")) == 2
    assert capsys.readouterr().err.startswith("error: --screenshot needs a PATH")


# Runs `imaging-assist view PATH --screenshot OUT` with the loader slowed (the screenshot would
# otherwise be written before the signal), prints READY once the event loop runs.
_CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts it (not ignored)
from PySide6.QtCore import QTimer
import imaging_assist_ui.app as A
real = A.make_app
def make(*a):
    app = real(*a)
    QTimer.singleShot(0, lambda: print("READY", flush=True))
    return app
A.make_app = make
from imaging_assist.dicom import loader as L
run_unit = L.SeriesLoader._run_unit
def slow(self, *a, **k):  # 140 slices: several seconds even on many loader threads
    time.sleep(0.2)
    return run_unit(self, *a, **k)
L.SeriesLoader._run_unit = slow
from imaging_assist_ui.launcher import main
sys.exit(main(sys.argv[1:]))
"""


def viewer_stopped_by(tmp_path, stop) -> None:
    """`view --screenshot` of the CT phantom, its loader slowed, is stopped by ``stop(process)``
    once its event loop runs: "interrupted", exit 130, no traceback, and no screenshot."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", IMAGING_ASSIST_SETTINGS=str(tmp_path / "s.ini"),
               PYTHONFAULTHANDLER="1")
    p = subprocess.Popen([sys.executable, str(script), "view", str(need(CT_PHANTOM)), "--screenshot", str(out)],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        seen, end = b"", time.monotonic() + 120
        while b"READY" not in seen and time.monotonic() < end and p.poll() is None:
            if select.select([p.stdout], [], [], 1.0)[0]:
                seen += os.read(p.stdout.fileno(), 4096)
        assert b"READY" in seen, (seen, p.poll())
        stop(p)
        so, se = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    err = se.decode(errors="replace")
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    assert not out.exists()


def test_ctrl_c_in_the_viewer_is_interrupted_130(tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C) while the series loads: "interrupted",
    exit 130, no traceback (before: a KeyboardInterrupt inside a Qt slot, ignored, or a SIGSEGV
    at exit), and no screenshot."""
    viewer_stopped_by(tmp_path, lambda p: os.killpg(p.pid, signal.SIGINT))


def test_finetune_out_naming_a_file_is_a_user_error(tmp_path):
    from imaging_assist.errors import UserError
    from imaging_assist.monitoring.finetune import finetune

    f = tmp_path / "afile.txt"
    f.write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        finetune("cxr-pneumonia", f, data=tmp_path, labels_csv=tmp_path / "lab.csv")
