"""Fixes of ``imaging-assist demo`` (audit s21):

1. a DISPLAY (or WAYLAND_DISPLAY) that names no answering server is no display: the demo runs
   headless with a note, the viewer gives its one-line error (Qt would abort the process);
2. the output folder may not be the demo folder or inside it;
3. the headless console says each analysis' OOD flag and warnings, as ``analyze`` does;
4. a damaged model folder list is one warning; the shipped models stay;
5. a demo run into a folder removes the files an earlier demo run wrote there and this one did
   not write again (and nothing else: a folder holding other files is refused, audit s22);
6. the prediction log's "one warning per process" is said once, not again by Python's warnings;
7. README: the demo CT is cropped around the left lung.

The headless runs here use a one-film copy of the demo folder and stand-ins for the models and
the PDF report: they test the demo's own bookkeeping in a second or two, never writing into
the repository."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from _fuzz_json import check_reader, mutations
from conftest import ROOT, need
from imaging_assist.errors import UserError
from test_config_fuzz import dirs  # noqa: F401

DEMO = ROOT / "imaging_assist" / "data" / "demo"
LUNG_SEG = ROOT / "weights" / "cxr-lung-seg"
NO_SERVER = 7391  # an X display number no test machine runs a server on


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def small_demo(tmp_path, monkeypatch):
    """A copy of the demo folder with one film (cxr_04_pa), used as the demo folder."""
    from imaging_assist import demo

    root = tmp_path / "pkg" / "data" / "demo"
    (root / "chest_xray").mkdir(parents=True)
    shutil.copy2(need(DEMO / "chest_xray" / "cxr_04_pa.dcm"), root / "chest_xray")
    monkeypatch.setattr(demo, "demo_root", lambda: str(root))
    return root


@pytest.fixture
def no_pdf(monkeypatch):
    """The PDF report stood in for (its own tests are elsewhere): a small file."""
    from imaging_assist.export import report_pdf

    monkeypatch.setattr(report_pdf, "capture", lambda *a, **k: {})
    monkeypatch.setattr(report_pdf, "build_report", lambda *a, **k: None)

    def write(rep, path):
        Path(path).write_bytes(b"%PDF-1.4 stand-in")
        return path

    monkeypatch.setattr(report_pdf, "write_report_pdf", write)


def _fake_analyse(written: list | None = None, warn=None):
    """A stand-in for demo._analyse: writes one label file per call (names kept in ``written``)."""
    def analyse(models, entry, series, vol, out, stem):
        if warn is not None:
            warn()
        name = f"{stem}_labels.nii.gz"
        (out / name).write_bytes(b"labels")
        if written is not None:
            written.append(name)
        return {"model": entry.card.id, "model_version": entry.card.version, "task": "segmentation",
                "label_map": name, "key_images": [], "heatmaps": [], "warnings": []}, []
    return analyse


def _lung_seg_registry():
    from imaging_assist.models.registry import Registry

    return Registry(sources=[(need(LUNG_SEG), "added")])


def _display_env(monkeypatch, display=None, wayland=None, runtime=None):
    for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (("DISPLAY", display), ("WAYLAND_DISPLAY", wayland), ("XDG_RUNTIME_DIR", runtime)):
        if v is not None:
            monkeypatch.setenv(k, v)


def _listening(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(address)
    s.listen(1)
    return s


# --------------------------------------------------------------------------- 1. display
def test_a_display_counts_only_when_its_server_answers(tmp_path, monkeypatch):
    from imaging_assist import demo

    assert not Path(f"/tmp/.X11-unix/X{NO_SERVER}").exists()
    _display_env(monkeypatch, display=f":{NO_SERVER}")
    t0 = time.perf_counter()
    assert demo.has_display() is False
    assert demo.display_problem() == f"DISPLAY=:{NO_SERVER} does not answer"
    assert time.perf_counter() - t0 < 1.0  # no multi-second probe
    # an X server on the local (abstract, Linux) socket of that number answers
    with _listening(socket.AF_UNIX, f"\0/tmp/.X11-unix/X{NO_SERVER}"):
        assert demo.display_problem() is None and demo.has_display() is True
        monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
        assert demo.has_display() is False
        monkeypatch.delenv("QT_QPA_PLATFORM")
    # host:n is TCP port 6000+n (ssh -X forwards localhost:10 and up)
    for n in range(7400, 7500):
        try:
            srv = _listening(socket.AF_INET, ("127.0.0.1", 6000 + n))
        except OSError:
            continue
        break
    _display_env(monkeypatch, display=f"127.0.0.1:{n}.0")
    with srv:
        assert demo.display_problem() is None
    assert demo.display_problem() == f"DISPLAY=127.0.0.1:{n}.0 does not answer"
    # Wayland: a socket named in XDG_RUNTIME_DIR, or by its path
    _display_env(monkeypatch, wayland="wayland-7", runtime=str(tmp_path))
    assert demo.display_problem() == "WAYLAND_DISPLAY=wayland-7 does not answer"
    with _listening(socket.AF_UNIX, str(tmp_path / "wayland-7")):
        assert demo.display_problem() is None
        _display_env(monkeypatch, wayland=str(tmp_path / "wayland-7"), display=f":{NO_SERVER}")
        assert demo.display_problem() is None  # one of the two answers
    _display_env(monkeypatch)
    assert demo.display_problem() == "DISPLAY and WAYLAND_DISPLAY are not set"


def test_demo_runs_headless_with_a_note_when_the_display_does_not_answer(tmp_path, monkeypatch, capsys):
    from imaging_assist import demo

    _display_env(monkeypatch, display=f":{NO_SERVER}")
    opened = []
    report = {"series": [], "notes": [], "attribution": "A.md", "report_path": str(tmp_path / "report.json")}
    monkeypatch.setattr(demo, "run_headless", lambda out, **k: report)
    args = SimpleNamespace(headless=False, run_gui=lambda *a, **k: opened.append(a) or 0,
                           out=str(tmp_path / "out"), device="auto", models=None, own_process=False)
    assert demo.run_demo(args) == 0
    out = capsys.readouterr().out
    assert opened == []  # Qt would abort the process here
    notes = [ln for ln in out.splitlines() if "no display" in ln.lower()]
    assert notes[0] == (f"note: no display (DISPLAY=:{NO_SERVER} does not answer): "
                        "running the headless demo instead"), out
    assert len(notes) == 2 and notes[1].startswith("No display: ran the headless demo"), out


def test_viewer_with_a_display_that_does_not_answer_is_one_error_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update(DISPLAY=f":{NO_SERVER}", IMAGING_ASSIST_SETTINGS=str(tmp_path / "s.ini"))
    p = subprocess.run([sys.executable, "-m", "imaging_assist_ui"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert lines == [f"error: no display (DISPLAY=:{NO_SERVER} does not answer): open the viewer in a "
                     "desktop session, or save a picture with `view PATH --screenshot OUT.png`"], p.stderr


# --------------------------------------------------------------------------- 2. --out inside the demo
def test_demo_refuses_an_output_folder_inside_the_demo_folder(small_demo, monkeypatch, tmp_path):
    from imaging_assist import demo

    before = sorted(p.name for p in small_demo.rglob("*"))
    with pytest.raises(UserError, match="is inside the input .*choose an output folder outside it"):
        demo.run_headless(str(small_demo / "out2"))
    # from inside the demo folder without --out (./imaging-assist-demo)
    monkeypatch.chdir(small_demo / "chest_xray")
    args = SimpleNamespace(headless=True, run_gui=None, out=None, device="auto", models=None, own_process=False)
    with pytest.raises(UserError, match="is inside the input"):
        demo.run_demo(args)
    assert sorted(p.name for p in small_demo.rglob("*")) == before  # nothing written there


# --------------------------------------------------------------------------- 3. console
def test_console_says_the_ood_flag_and_each_analysis_warning(tmp_path, monkeypatch, capsys):
    from imaging_assist import demo

    series_warning = "no pixel spacing in the file: distances and areas are in pixels"
    edge = "the nodule reaches the edge of the models' 32 mm window: its size may be underestimated"
    seg = {"model": "cxr-lung-seg", "model_version": "1.0.0", "task": "segmentation",
           "area_px": {"background": 1, "right_lung": 16885, "left_lung": 13707},
           "quality": {"passed": True, "text": "quality checks passed"}, "key_images": [],
           "ood": {"flagged": True, "reasons": ["image statistics far from the training data"]},
           "warnings": [series_warning]}
    ood_warning = "outside what this model was trained on: OOD score 7.99 > threshold 3.11 (decision withheld)"
    failed_quality = {"model": "cxr-lung-seg", "task": "segmentation", "key_images": [],
                      "quality": {"passed": False, "text": "right_lung is in 3 pieces"},
                      "ood": {"flagged": True, "reasons": ["OOD score 7.99 > threshold 3.11"]},
                      "warnings": ["right_lung is in 3 pieces", ood_warning]}
    nodule = {"model": "ct-nodule-malignancy", "task": "nodule", "key_images": [], "warnings": [],
              "nodules": [{"id": "N1", "point_lps": [56.0, 10.0, -120.0], "found": True, "volume_mm3": 5000.0,
                           "long_axis_mm": 30.0, "short_axis_mm": 20.0, "warnings": [edge]}]}
    report = {"series": [{"modality": "CR", "description": "film", "shape": [1, 256, 256], "key_image": "k.png",
                          "warnings": [series_warning], "analyses": [seg, failed_quality, nodule], "notes": []}],
              "notes": [], "out": str(tmp_path), "attribution": "A.md", "report_path": str(tmp_path / "r.json")}
    monkeypatch.setattr(demo, "run_headless", lambda out, **k: report)
    args = SimpleNamespace(headless=True, run_gui=None, out=str(tmp_path), device="auto", models=None,
                           own_process=False)
    assert demo.run_demo(args) == 0
    out = capsys.readouterr().out
    assert ("      outside what this model was trained on (image statistics far from the training data)"
            in out.splitlines()), out
    assert f"      warning: {edge}" in out.splitlines(), out
    assert out.count(series_warning) == 1 and out.count("right_lung is in 3 pieces") == 1, out
    # a flag the item's warnings say already is said once, with them
    assert f"      warning: {ood_warning}" in out.splitlines() and out.count("OOD score 7.99") == 1, out


# --------------------------------------------------------------------------- 4. model folder list
def test_a_damaged_model_folder_list_is_one_warning_and_the_shipped_models_stay(dirs, monkeypatch, caplog,  # noqa: F811
                                                                               capsys):
    from imaging_assist.cli import main
    from imaging_assist.models import registry as R

    monkeypatch.setattr(R, "_warned", set(), raising=False)
    p = dirs.cfg / R.FOLDERS_FILE
    p.write_text('{"folders": ["/tmp/x"')  # truncated (a full disk, a crash)
    with caplog.at_level(logging.WARNING):
        reg = R.Registry()
        ids = {e.card.id: e.source for e in reg.entries() if e.card is not None}
        R.Registry().sources()
        assert main(["models", "list", "--no-verify"]) == 0
    assert ids.get("cxr-lung-seg") == "project", ids
    said = [r.getMessage() for r in caplog.records if R.FOLDERS_FILE in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and str(p) in said[0], said
    assert said[0].startswith(f"warning: cannot read the model folder list {p}") and reg.warning
    assert "cxr-lung-seg" in capsys.readouterr().out
    # `models add` does not write over a list it could not read
    with pytest.raises(UserError, match="cannot read the model folder list"):
        R.Registry().add_folder(need(LUNG_SEG))
    assert p.read_text() == '{"folders": ["/tmp/x"'

    def write(data: bytes):
        p.write_bytes(data)

    def check(folders):
        if not (isinstance(folders, list) and all(isinstance(f, Path) and str(f).strip() for f in folders)):
            return f"folders {folders!r}"[:200]
    bad = check_reader(mutations({"folders": ["/tmp/x", "/tmp/y"]}), write,
                       lambda: R.Registry().added_folders(strict=False), (), check)
    bad += ["strict: " + b for b in check_reader(mutations({"folders": ["/tmp/x"]}), write,
                                                   R.Registry().added_folders, (UserError,), check)]
    assert not bad, "\n".join(bad[:20])


# --------------------------------------------------------------------------- 5. re-run into --out
def test_a_second_run_removes_what_the_first_wrote_and_nothing_else(small_demo, no_pdf, tmp_path, monkeypatch):
    from imaging_assist import demo
    from imaging_assist.models.registry import Registry

    out = tmp_path / "out"
    (tmp_path / "outside.txt").write_text("not the demo's")
    written = []
    monkeypatch.setattr(demo, "_analyse", _fake_analyse(written))
    rep1 = demo.run_headless(str(out), registry=_lung_seg_registry(), device="cpu")
    assert written and all((out / f).is_file() for f in written), rep1["series"][0]["notes"]
    files1 = json.loads((out / "report.json").read_text()).get("files")
    empty = tmp_path / "none"
    empty.mkdir()
    demo.run_headless(str(out), registry=Registry(sources=[(empty, "added")]), device="cpu")
    left = sorted(p.name for p in out.iterdir())
    assert left == [demo.MANIFEST, "report.json", "report.pdf", "series_01_cr.png"], left
    assert (tmp_path / "outside.txt").is_file()
    assert set(written) < set(files1) and "report.pdf" in files1
    assert json.loads((out / "report.json").read_text())["files"] == ["report.json", "report.pdf",
                                                                     "series_01_cr.png"]
    # a file the demo did not write is never removed or overwritten: the folder is refused
    # (audit s22: tests/test_cli_targets_s22.py)
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(UserError, match=r"holds files the demo did not write \(mine.txt\)"):
        demo.run_headless(str(out), registry=Registry(sources=[(empty, "added")]), device="cpu")
    assert (out / "mine.txt").read_text() == "the user's"


# --------------------------------------------------------------------------- 6. warnings said once
def test_the_prediction_log_warning_is_said_once(small_demo, no_pdf, tmp_path, monkeypatch, caplog):
    from imaging_assist import demo
    from imaging_assist.monitoring import log as plog

    monkeypatch.setattr(plog, "_warned", False)
    msg = "the prediction log could not record this run (UserError: cannot create the site key); runs go on"
    monkeypatch.setattr(demo, "_analyse", _fake_analyse(warn=lambda: plog.warn_once(msg)))
    args = SimpleNamespace(headless=True, run_gui=None, out=str(tmp_path / "out"), device="cpu",
                           models=str(need(LUNG_SEG)), own_process=False)
    with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert demo.run_demo(args) == 0
    assert [r.getMessage() for r in caplog.records if "prediction log" in r.getMessage()] == [msg]
    assert [str(w.message) for w in shown if "prediction log" in str(w.message)] == []


# --------------------------------------------------------------------------- 7. README
def test_readme_says_the_demo_ct_is_cropped_around_the_left_lung():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "cropped in-plane to 256² around the left lung" in text
    assert "around the right lung" not in text
