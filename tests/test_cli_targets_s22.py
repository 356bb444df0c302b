"""Output targets that destroyed files (audit s22):

1. ``view --screenshot``: a name Qt cannot write (``.dcm``) emptied the file, an image name
   replaced it, even a file of the series being opened; the screenshot is now an image name
   outside what is opened, written under a temporary name and renamed over the target (the
   GUI's File ▸ Save view as PNG too);
2. ``demo --headless --out DIR`` deleted the files that any ``report.json`` in DIR listed and
   replaced another tool's report: it records its own files in ``.imaging-assist-demo.json``,
   removes only those (unchanged), and refuses a folder holding anything else;
3. ``annotations --export-sr/--export-gsps`` wrote over an image of the series being read, and a
   folder as target was an internal error leaving ``FILE.partial``;
4. ``annotations --stack 0`` was taken as stack 1.

The series are small copies in the test's folder; the demo runs use test_demo_fixes_s21's
one-film demo folder and stand-ins."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import DICOM, SHARED, need
from imaging_assist.cli.main import main
from imaging_assist.errors import UserError
from test_demo_fixes_s21 import _fake_analyse, _lung_seg_registry, no_pdf, small_demo  # noqa: F401

CT = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"
FILM = SHARED / "cxr" / "pneumonia_kermany" / "test" / "NORMAL" / "IM-0001-0001.jpeg"


def _copy(files, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(need(f), folder / Path(f).name)  # writable copies, as a user's files are
    return folder


def _ct(tmp_path: Path) -> Path:
    return _copy([CT / f"{n}.dcm" for n in (11, 12, 13, 14)], tmp_path / "ser")


def _digest(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- 1. view --screenshot
def test_a_screenshot_name_qt_cannot_write_is_refused_before_loading(tmp_path, capsys):
    from imaging_assist_ui.app import run_gui

    ser = _ct(tmp_path)
    other = tmp_path / "notes.dcm"
    other.write_bytes(b"not to be emptied")
    assert run_gui(str(ser), screenshot=str(other)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write the screenshot {other}: the name must end in an image type (.png"), err
    assert "\n" not in err and other.read_bytes() == b"not to be emptied"
    assert run_gui(str(ser), screenshot=str(tmp_path / "shot")) == 2  # no type at all
    assert "must end in an image type" in capsys.readouterr().err


def test_a_screenshot_among_the_files_being_opened_is_refused(tmp_path, capsys):
    from imaging_assist_ui.app import run_gui

    ser = _ct(tmp_path)
    films = _copy([FILM], tmp_path / "films")
    before = {**_digest(ser), **_digest(films)}
    # a file of the opened folder (the audit's case: the source film replaced), a new name in it
    for path, target in ((films, films / FILM.name), (ser, ser / "shot.png"), (films / FILM.name, films / FILM.name)):
        assert run_gui(str(path), screenshot=str(target)) == 2, target
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --screenshot {target} is ") and "choose" in err and "\n" not in err, err
    assert {**_digest(ser), **_digest(films)} == before
    assert sorted(p.name for p in ser.iterdir()) == ["11.dcm", "12.dcm", "13.dcm", "14.dcm"]


class _FailingImage:
    """A grab() that Qt cannot write: it opens the file it is given, writes part, gives up."""

    def save(self, path, fmt=None):
        Path(path).write_bytes(b"half")
        return False


def test_a_screenshot_replaces_an_existing_file_only_with_the_finished_image(tmp_path, monkeypatch):
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QFileDialog

    from imaging_assist_ui.main_window import screenshots

    target = tmp_path / "shot.png"
    target.write_bytes(b"the user's picture")
    win = type("Win", (), {})()
    win.grab = lambda: _FailingImage()
    assert screenshots.save_screenshot(win, str(target)) is False
    assert target.read_bytes() == b"the user's picture"
    # File > Save view as PNG goes the same way
    win.view_area = type("Area", (), {"grab": lambda self: _FailingImage()})()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    screenshots.save_view_dialog(win)
    assert target.read_bytes() == b"the user's picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.png"]  # no temporary file left
    image = QImage(32, 16, QImage.Format_RGB32)
    image.fill(0x336699)
    win.grab = lambda: image
    assert screenshots.save_screenshot(win, str(target)) is True
    assert QImage(str(target)).size().toTuple() == (32, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.png"]


# --------------------------------------------------------------------------- 2. demo --out
def _no_models(tmp_path):
    from imaging_assist.models.registry import Registry

    empty = tmp_path / "no-models"
    empty.mkdir(exist_ok=True)
    return Registry(sources=[(empty, "added")])


def test_the_demo_refuses_a_folder_holding_files_it_did_not_write(small_demo, no_pdf, tmp_path):  # noqa: F811
    from imaging_assist import demo

    out = tmp_path / "out"
    out.mkdir()
    (out / "measurements.csv").write_text("my measurements")
    (out / "thesis.txt").write_text("my thesis")
    (out / "report.json").write_text(json.dumps({"tool": "someone else",
                                                 "files": ["measurements.csv", "thesis.txt"]}))
    before = _digest(out)
    with pytest.raises(UserError, match=r"holds files the demo did not write \(measurements.csv, report.json, "
                                        r"thesis.txt\): choose a new or empty folder"):
        demo.run_headless(str(out), registry=_no_models(tmp_path), device="cpu")
    assert _digest(out) == before and sorted(os.listdir(out)) == sorted(before)


def test_the_demo_reruns_over_its_own_files_and_removes_only_those(small_demo, no_pdf, tmp_path,  # noqa: F811
                                                                   monkeypatch):
    from imaging_assist import demo

    out = tmp_path / "out"
    written = []
    monkeypatch.setattr(demo, "_analyse", _fake_analyse(written))
    demo.run_headless(str(out), registry=_lung_seg_registry(), device="cpu")
    manifest = json.loads((out / demo.MANIFEST).read_text())
    assert written and set(manifest["files"]) == {"report.json", "report.pdf", "series_01_cr.png", *written}
    for name, rec in manifest["files"].items():
        st = (out / name).stat()
        assert rec == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    # a manifest edited to name a file elsewhere (with that file's real size and time) removes nothing
    outside = tmp_path / "outside.txt"
    outside.write_text("not the demo's")
    st = outside.stat()
    manifest["files"]["../outside.txt"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    (out / demo.MANIFEST).write_text(json.dumps(manifest))
    demo.run_headless(str(out), registry=_no_models(tmp_path), device="cpu")  # the label file is not written again
    assert sorted(os.listdir(out)) == [demo.MANIFEST, "report.json", "report.pdf", "series_01_cr.png"]
    assert outside.read_text() == "not the demo's"
    # a demo file the user changed since is no longer the demo's: refused, nothing removed
    (out / "report.pdf").write_bytes(b"%PDF annotated by the user")
    with pytest.raises(UserError, match=r"holds files the demo did not write \(report.pdf\)"):
        demo.run_headless(str(out), registry=_no_models(tmp_path), device="cpu")
    assert (out / "report.pdf").read_bytes() == b"%PDF annotated by the user"


def test_an_interrupted_demo_run_still_records_what_it_wrote(small_demo, no_pdf, tmp_path, monkeypatch):  # noqa: F811
    from imaging_assist import demo

    out = tmp_path / "out"
    inner = _fake_analyse()

    def interrupted(*a, **k):
        inner(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_analyse", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.run_headless(str(out), registry=_lung_seg_registry(), device="cpu")
    assert set(json.loads((out / demo.MANIFEST).read_text())["files"]) == set(os.listdir(out)) - {demo.MANIFEST}
    demo.run_headless(str(out), registry=_no_models(tmp_path), device="cpu")  # not refused: its own files
    assert sorted(os.listdir(out)) == [demo.MANIFEST, "report.json", "report.pdf", "series_01_cr.png"]


# --------------------------------------------------------------------------- 3./4. annotations
@pytest.fixture
def saved_ruler(tmp_path, monkeypatch):
    """A four-slice CT copy with one saved ruler on its second image."""
    from imaging_assist.annotations import AnnotationStore
    from imaging_assist.dicom import scan
    from imaging_assist.measure import Measurement

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    ser = _ct(tmp_path)
    (s,) = scan(str(ser)).image_series()
    path, warns = AnnotationStore().save(s.study_uid, s.key, [Measurement("ruler", [(10, 10), (100, 100)], 0, 1)])
    assert path is not None and not warns
    return ser


def _partials(folder: Path) -> list:
    return sorted(str(p) for p in folder.rglob("*partial*"))


def test_an_export_onto_the_series_being_read_or_a_folder_is_refused(saved_ruler, tmp_path, capsys):
    ser = saved_ruler
    before = _digest(ser)
    (tmp_path / "folder_target").mkdir()
    real = _copy([ser / "12.dcm"], tmp_path / "real")  # a series read through links: its real file
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(real / "12.dcm", links / "12.dcm")
    cases = [([str(ser), "--export-sr", str(ser / "12.dcm")], f"--export-sr {ser / '12.dcm'} is inside the input"),
             ([str(ser), "--export-gsps", str(ser / "new.dcm")], "is inside the input"),
             ([str(ser / "12.dcm"), "--export-sr", str(ser / "12.dcm")], "is the input"),
             ([str(links), "--export-sr", str(real / "12.dcm")], "one of the files being read"),
             ([str(ser), "--export-gsps", str(tmp_path / "folder_target")], "is a folder: name the file to write")]
    for argv, says in cases:
        assert main(["annotations", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and says in err and "\n" not in err, (argv, err)
    assert _digest(ser) == before and (real / "12.dcm").read_bytes() == before["12.dcm"]
    assert _partials(tmp_path) == [] and os.listdir(tmp_path / "folder_target") == []
    # outside the input: written
    assert main(["annotations", str(ser), "--export-sr", str(tmp_path / "m.dcm")]) == 0
    assert "wrote" in capsys.readouterr().out and _digest(ser) == before


@pytest.mark.parametrize("kind", ["sr", "gsps"])
def test_a_failed_export_leaves_the_existing_file_and_no_partial_file(saved_ruler, tmp_path, monkeypatch, kind):
    import pydicom

    from imaging_assist.annotations import AnnotationStore
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.export.dicom_common import DicomExportError
    from imaging_assist.export.presentation_state import write_presentation_state
    from imaging_assist.export.sr_measurements import write_measurement_sr

    (s,) = scan(str(saved_ruler)).image_series()
    vol = load_series(s)
    items, _ = AnnotationStore().load(s.study_uid, s.key, volume=vol)
    for m in items:
        m.compute_on(vol)  # as the command does
    write = write_measurement_sr if kind == "sr" else write_presentation_state
    target = tmp_path / "exports" / "m.dcm"
    target.parent.mkdir()
    target.write_bytes(b"an earlier export")
    real_save = pydicom.dataset.Dataset.save_as

    def half_then_full_disk(self, filename, *a, **k):
        Path(filename).write_bytes(b"half")
        raise ValueError("No space left on device")

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", half_then_full_disk)
    with pytest.raises(DicomExportError, match="not written: No space left on device"):
        write(vol, items, target)
    assert target.read_bytes() == b"an earlier export" and os.listdir(target.parent) == ["m.dcm"]
    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", real_save)
    # a folder as target: an OSError (the GUI's banner, the CLI's one line) and nothing left beside it
    (tmp_path / "exports" / "dir.dcm").mkdir()
    with pytest.raises(OSError):
        write(vol, items, tmp_path / "exports" / "dir.dcm")
    assert sorted(os.listdir(target.parent)) == ["dir.dcm", "m.dcm"]
    assert write(vol, items, target) == target  # a complete object replaces the earlier export
    assert pydicom.dcmread(target).Modality in ("SR", "PR")
    assert sorted(os.listdir(target.parent)) == ["dir.dcm", "m.dcm"]


def test_annotations_stack_0_is_refused_as_info_refuses_it(saved_ruler, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own refusal, as for `info --stack 0`
        main(["annotations", str(saved_ruler), "--stack", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --stack: must be at least 1 (got 0)") and "\n" not in err, err
    assert main(["annotations", str(saved_ruler), "--stack", "1"]) == 0
