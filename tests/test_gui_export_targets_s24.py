"""Session 24: export targets that were not checked against the inputs.

- File > Export measurements (DICOM SR / GSPS) wrote over a file of the open series when it was
  picked in the save dialog (Qt only asks "replace?"): the image became an SR without pixels.
  The CLI and Save view as PNG refuse that target; the dialog now does too, in its banner.
- The slide page's Export GeoJSON wrote over the slide itself (or a DICOM WSI instance read
  with it), and a name typed without a type was written without ".geojson".
- ``anonymize --keep-names`` with an input named deidentification_summary.json: a DICOM file of
  that name was de-identified and then replaced by the summary; a folder of that name ended the
  run with "internal error (IsADirectoryError)".  The input is now written under another name."""

import hashlib
import json
import os
import shutil

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, pump_until  # noqa: E402
from conftest import DICOM, need  # noqa: E402

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
PALETTE = DICOM / "palette_color_testpattern" / "TestPattern_Palette.dcm"


def _md5(p) -> str:
    return hashlib.md5(open(p, "rb").read()).hexdigest()


# ------------------------------------------------------------------ DICOM SR / GSPS export
@pytest.fixture
def cr_win(qapp, tmp_path_factory):
    """A window on a fresh copy of a study folder of two series, the CR shown (a copy: the old
    code wrote over the target): (window, the CR file, the other series' file)."""
    folder = tmp_path_factory.mktemp("study")
    shutil.copy(need(CR), folder / CR.name)
    shutil.copy(need(PALETTE), folder / PALETTE.name)
    w = open_window(tmp_path_factory, str(folder))
    from imaging_assist.measure import Measurement

    cr = next(s for s in w.index.image_series() if s.instances[0].path.endswith(CR.name))
    if w.doc.series is None or w.doc.series.key != cr.key:
        w.load_series(cr.key)
        assert pump_until(lambda: w.load_state == "done" and w.doc.series.key == cr.key), w.last_error
    m = Measurement("ruler", [(10.0, 10.0), (100.0, 100.0)])
    w.doc.add_measurement(m)
    w.doc.compute_measurement(m)
    yield w, folder / CR.name, folder / PALETTE.name
    w.close()


def _dialog_to(win, monkeypatch, target, kind="sr") -> str:
    from PySide6.QtWidgets import QFileDialog

    from imaging_assist_ui.radiology.annotation_tools import export_sr_dialog

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    export_sr_dialog(win, kind)
    return win.banner_text()


@pytest.mark.parametrize("kind", ["sr", "gsps"])
def test_export_dialog_refuses_a_file_of_the_series(cr_win, monkeypatch, kind):
    win, src, _ = cr_win
    before = _md5(src)
    text = _dialog_to(win, monkeypatch, src, kind)
    assert _md5(src) == before  # the image is still the image
    assert text == (f"Measurements not exported: the file {src} is one of the files being read: "
                    "it would be replaced; choose a file outside the input"), text


def test_export_dialog_refuses_a_file_of_another_series_read(cr_win, monkeypatch):
    win, _, other = cr_win
    before = _md5(other)
    text = _dialog_to(win, monkeypatch, other)
    assert _md5(other) == before
    assert text.startswith("Measurements not exported: ") and "one of the files being read" in text, text


def test_export_sr_refuses_the_series_file_by_any_name(cr_win, tmp_path):
    """Without the window's list (a caller that passes none): the series' own files, also
    through a link of another name elsewhere."""
    from imaging_assist.errors import UserError
    from imaging_assist_ui.radiology.annotation_tools import export_sr

    win, src, _ = cr_win
    before = _md5(src)
    link = tmp_path / "elsewhere.dcm"
    link.symlink_to(src)
    for target in (src, link):
        with pytest.raises(UserError, match="one of the files being read"):
            export_sr(win.doc, target)
    assert _md5(src) == before
    assert link.is_symlink()


def test_export_dialog_still_writes_a_new_file_in_the_study_folder_or_elsewhere(cr_win, monkeypatch, tmp_path):
    """A new SR saved into the opened study folder joins the study (docs/annotations.md): allowed."""
    import pydicom

    win, src, _ = cr_win
    for out in (src.parent / "measurements_SR.dcm", tmp_path / "m.dcm"):
        text = _dialog_to(win, monkeypatch, out)
        assert text.startswith(f"Measurements written to {out}"), text
        assert pydicom.dcmread(out).Modality == "SR"


# ------------------------------------------------------------------ slide GeoJSON export
def _slide_page(path, qapp):
    from imaging_assist.layers import LayerStack
    from imaging_assist.slides.annotations import Annotation
    from imaging_assist_ui.slides.slide_page import SlidePage

    page = SlidePage(layers=LayerStack())
    page.show()
    page.open(str(path))
    assert pump_until(lambda: page.slide is not None and page.tools.key, 30)
    page.tools.add(Annotation("ruler", [(0, 0), (40, 0)]))
    return page


def _export(page, monkeypatch, target) -> list[str]:
    from imaging_assist_ui.slides import slide_page

    said: list[str] = []
    monkeypatch.setattr(slide_page.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    monkeypatch.setattr(slide_page.QMessageBox, "warning", staticmethod(lambda *a: said.append(a[2])))
    page.export_annotations_dialog()
    return said


@pytest.fixture
def tif_page(qapp, tmp_path, monkeypatch):
    from imaging_assist.slides import synth

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    levels = synth.make_levels(synth.pattern_rgb(512, 512, smooth=True), 256)
    tif = synth.write_pyramid_tiff(tmp_path / "s.tif", levels, tile=256, compression="zlib", mpp=0.5)
    page = _slide_page(tif, qapp)
    yield page, tif
    page.close_slide()
    page.close()


def test_geojson_export_refuses_the_slide(tif_page, tmp_path, monkeypatch):
    page, tif = tif_page
    before = _md5(tif)
    said = _export(page, monkeypatch, tif)  # the slide picked in the save dialog
    assert _md5(tif) == before
    assert not (tmp_path / "s.tif.geojson").exists()
    assert len(said) == 1 and said[0].startswith("The annotations were not exported: the file ") \
        and "is the input" in said[0] and "\n" not in said[0], said


def test_geojson_export_adds_the_suffix(tif_page, tmp_path, monkeypatch):
    """A name typed without a type is written as .geojson (Import reads .geojson / .json only)."""
    page, _ = tif_page
    assert _export(page, monkeypatch, tmp_path / "notes") == []
    assert not (tmp_path / "notes").exists()
    doc = json.loads((tmp_path / "notes.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
    # the dialog asked about "notes", not "notes.geojson": asked here before replacing it
    from PySide6.QtWidgets import QMessageBox

    from imaging_assist_ui.slides import slide_page
    asked = []
    monkeypatch.setattr(slide_page.QMessageBox, "question",
                        staticmethod(lambda *a: asked.append(a[2]) or QMessageBox.No))
    (tmp_path / "notes.geojson").write_text("mine")
    assert _export(page, monkeypatch, tmp_path / "notes") == []
    assert asked == ["notes.geojson already exists. Do you want to replace it?"]
    assert (tmp_path / "notes.geojson").read_text() == "mine"


@pytest.mark.parametrize("opened", ["file", "folder"])
def test_geojson_export_refuses_an_instance_of_a_dicom_wsi(qapp, tmp_path, monkeypatch, opened):
    import numpy as np

    from imaging_assist.slides.dicom_writer import save_dicom_wsi

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    img = np.random.default_rng(3).integers(0, 255, (256, 384, 3), dtype=np.uint8)
    levels = [img, img[::2, ::2]]
    files = sorted(save_dicom_wsi(tmp_path / "wsi", [(a.shape[1], a.shape[0]) for a in levels],
                                  lambda lv, x, y, t: levels[lv][y:y + t, x:x + t], (0.5, 0.5), tile_size=128))
    # opened by one file, its folder's instances are read with it
    page = _slide_page(files[0] if opened == "file" else tmp_path / "wsi", qapp)
    try:
        before = _md5(files[1])
        said = _export(page, monkeypatch, files[1])
        assert _md5(files[1]) == before
        assert len(said) == 1 and "one of the files being read" in said[0], said
        assert not [n for n in os.listdir(tmp_path / "wsi") if n.endswith(".geojson")]
        # a new file beside the instances replaces nothing: written
        assert _export(page, monkeypatch, tmp_path / "wsi" / "notes.geojson") == []
        assert json.loads((tmp_path / "wsi" / "notes.geojson").read_text())["type"] == "FeatureCollection"
    finally:
        page.close_slide()
        page.close()


# ------------------------------------------------------------------ anonymize: the summary's name
def test_keep_names_input_named_like_the_summary_is_kept(tmp_path, capsys):
    import pydicom

    from imaging_assist.cli.main import main

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(need(CR), src / "deidentification_summary.json")  # a DICOM file of that name
    shutil.copy(need(CR), src / "b.dcm")
    out = tmp_path / "out"
    assert main(["anonymize", "--keep-names", "--workers", "1", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["b.dcm", "deidentification_summary-input.json",
                                       "deidentification_summary.json"]
    assert pydicom.dcmread(out / "deidentification_summary-input.json").Modality == "CR"  # the image, kept
    summary = json.loads((out / "deidentification_summary.json").read_text())
    assert summary["files_written"] == 2
    assert sorted(w["file"] for w in summary["written"]) == ["b.dcm", "deidentification_summary-input.json"]
    note = ("deidentification_summary.json of the input is written as deidentification_summary-input.json: "
            "that name is kept for this summary")
    assert summary["notes"] == [note]
    assert note in printed.splitlines()


def test_keep_names_folder_named_like_the_summary_is_no_crash(tmp_path, capsys):
    from imaging_assist.cli.main import main

    src = tmp_path / "in"
    (src / "deidentification_summary.json").mkdir(parents=True)
    shutil.copy(need(CR), src / "deidentification_summary.json" / "a.dcm")
    out = tmp_path / "out"
    rc = main(["anonymize", "--keep-names", "--workers", "1", str(src), str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "internal error" not in captured.err
    assert (out / "deidentification_summary-input.json" / "a.dcm").is_file()
    summary = json.loads((out / "deidentification_summary.json").read_text())
    assert [w["file"] for w in summary["written"]] == ["deidentification_summary-input.json/a.dcm"]


def test_the_summary_never_replaces_a_file(tmp_path, monkeypatch):
    """Written with O_EXCL: a file already on the summary's name (nothing of the run may put one
    there now) is kept, and the run says so in one line."""
    from imaging_assist.errors import UserError
    from imaging_assist.privacy import deid

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(need(CR), src / "a.dcm")
    out = tmp_path / "out"
    real = deid.deidentify_file

    def plant(*a, **k):  # what any writer racing the run would leave
        r = real(*a, **k)
        (out / "deidentification_summary.json").write_text("theirs")
        return r

    monkeypatch.setattr(deid, "deidentify_file", plant)
    with pytest.raises(UserError, match="was not written") as e:
        deid.deidentify_tree(src, out, keep_names=True, audit=False)
    assert "\n" not in str(e.value)
    assert (out / "deidentification_summary.json").read_text() == "theirs"
    assert (out / "a.dcm").is_file()
