"""Session 23 DICOM export fixes:

1. ``analyze --dicom`` over two patients: each study's Encapsulated PDF holds that study's report
   only (it held the whole run's report, every patient's, under each patient);
2. the GSPS of a MONOCHROME1 image says Presentation LUT Shape INVERSE (IDENTITY showed it
   inverted in other viewers: dcmtk renders it like the image without a presentation state);
3. a Parametric Map of a US/XA cine without functional groups is written (highdicom needs them
   on the source), valid, one frame per source frame; the nominal-plane note only once written;
4. the app's own Parametric Map of a CR/US image with a Frame of Reference UID is read back onto
   the image (placed by its source references; the map has a frame of reference of its own),
   and the viewer shows it."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import highdicom
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import DICOM, ROOT, need
from test_export_dicom import dciodvfy_errors

from imaging_assist.dicom import load_series, scan
from imaging_assist.dicom.result_objects import ResultObjectError, read_parametric_map
from imaging_assist.export.dicom_common import DicomExportError
from imaging_assist.export.parametric_map import build_parametric_map
from imaging_assist.export.presentation_state import write_presentation_state
from imaging_assist.measure import Measurement

US_DEMO = ROOT / "imaging_assist" / "data" / "demo" / "breast_us"
CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_series(scan(str(path)).image_series()[0])


def _pdf_text(path, tmp) -> str:
    ds = pydicom.dcmread(path)
    pdf = tmp / (path.stem + ".pdf")
    pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength])
    assert shutil.which("pdftotext"), "pdftotext (poppler-utils) is needed: scripts/test installs it"
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout


# ----------------------------------------------------------------------------- 1. PDF per study
def test_each_patients_encapsulated_pdf_holds_only_that_patients_report(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(US_DEMO.glob("us_0*.dcm")):
        shutil.copy(f, src / f.name)
    ids = {str(pydicom.dcmread(f, stop_before_pixels=True).PatientID) for f in src.iterdir()}
    assert len(ids) == 2
    out = tmp_path / "out"
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "imaging_assist", "analyze", str(src),
                        "--model", "us-breast", "--dicom", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert "Traceback" not in r.stderr and r.returncode in (0, 1), r.stderr
    whole = subprocess.run(["pdftotext", str(out / "report.pdf"), "-"], capture_output=True, text=True).stdout
    assert all(i in whole for i in ids)  # the run's report.pdf for the user: every item, as before
    pdfs = sorted((out / "dicom").glob("report_PDF*.dcm"))
    assert len(pdfs) == 2
    for p in pdfs:
        mine = str(pydicom.dcmread(p, stop_before_pixels=True).PatientID)
        text = _pdf_text(p, tmp_path)
        (other,) = ids - {mine}
        assert mine in text and other not in text, (p.name, mine)
        assert dciodvfy_errors(p) == []


# ----------------------------------------------------------------------------- 2. GSPS of MONOCHROME1
def _with_meta(src, dst, **attrs):
    ds = pydicom.dcmread(src, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    for k, v in attrs.items():
        setattr(ds, k, v)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _render(tmp, image, ps=None) -> np.ndarray:
    out = tmp / f"{image.stem}_{ps.stem if ps else 'plain'}.pgm"
    exe = shutil.which("dcmp2pgm")
    assert exe, "dcmp2pgm (dcmtk) is needed: scripts/test installs it"
    subprocess.run([exe, *(["-p", str(ps)] if ps else []), str(image), str(out)], check=True,
                   capture_output=True, timeout=60)
    return np.asarray(Image.open(out), float)


def test_gsps_of_a_monochrome1_image_renders_like_the_image_in_dcmtk(tmp_path):
    cr = _with_meta(need(CR), tmp_path / "cr" / "cr.dcm")
    vol = _load(cr.parent)
    assert vol.photometric == "MONOCHROME1"
    m = Measurement("ruler", [(100, 120), (300, 320)], index=0)
    m.compute_on(vol)
    ps = write_presentation_state(vol, [m], tmp_path / "cr_gsps.dcm")
    assert pydicom.dcmread(ps).PresentationLUTShape == "INVERSE"
    assert dciodvfy_errors(ps) == []
    plain, shown = _render(tmp_path, cr), _render(tmp_path, cr, ps)
    assert np.corrcoef(plain.ravel(), shown.ravel())[0, 1] > 0.99  # IDENTITY gave -1: inverted
    # read back by the viewer (which shows MONOCHROME1 inverted): INVERSE is what it shows, so no
    # "presentation LUT is not applied" warning; IDENTITY on the same image asks for what it does not show
    from imaging_assist.dicom.presentation_state import read_presentation_state
    assert not any("presentation LUT" in w for w in read_presentation_state(str(ps), vol).warnings)
    ident = pydicom.dcmread(ps)
    ident.PresentationLUTShape = "IDENTITY"
    assert any("presentation LUT" in w for w in read_presentation_state(ident, vol).warnings)
    # a MONOCHROME2 image keeps IDENTITY, and renders as itself too
    us = _with_meta(US_DEMO / "us_01_breast.dcm", tmp_path / "us" / "us.dcm")
    uvol = _load(us.parent)
    m2 = Measurement("ruler", [(10, 12), (60, 70)], index=0)
    m2.compute_on(uvol)
    ps2 = write_presentation_state(uvol, [m2], tmp_path / "us_gsps.dcm")
    assert pydicom.dcmread(ps2).PresentationLUTShape == "IDENTITY"
    a, b = _render(tmp_path, us), _render(tmp_path, us, ps2)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


# ----------------------------------------------------------------------------- 3. PM of a cine
def _cine(path, sop_class: str, modality: str, frames: int = 3, rows: int = 24, cols: int = 30):
    rng = np.random.default_rng(5)
    px = rng.integers(0, 255, (frames, rows, cols), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Cine^Carla", "MRN-CINE-1", "19800101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240601", "090000", "ACC-CINE", "S1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = modality, 5, 1, ""
    ds.Manufacturer, ds.ImageType = "ACME", ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.NumberOfFrames = 1, "MONOCHROME2", frames
    ds.FrameIncrementPointer, ds.FrameTime = (0x0018, 0x1063), 33.3
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = px.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


CINES = {"us": ("1.2.840.10008.5.1.4.1.1.3.1", "US"), "xa": ("1.2.840.10008.5.1.4.1.1.12.1", "XA")}


@pytest.mark.parametrize("kind", list(CINES))
def test_parametric_map_of_a_cine_without_functional_groups_is_written_and_valid(tmp_path, kind):
    src = _cine(tmp_path / "src" / "cine.dcm", *CINES[kind])
    vol = _load(src.parent)
    assert vol.shape[:3] == (3, 24, 30) and not vol.has_geometry
    heat = np.random.default_rng(1).random(vol.shape[:3]).astype(np.float32)
    heat[1, 0, :4] = np.nan
    notes: list[str] = []
    pm = build_parametric_map(vol, heat, label="malignant", method="gradcam", model_id="us-breast",
                              model_version="1", warnings=notes)
    assert len(notes) == 1 and "nominal plane" in notes[0]
    out = tmp_path / "pm.dcm"
    pm.save_as(out)
    assert dciodvfy_errors(out) == []
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    back = pydicom.dcmread(out)
    refs = []
    for item in back.PerFrameFunctionalGroupsSequence:
        (s,) = [s for d in item.DerivationImageSequence for s in d.SourceImageSequence]
        assert s.ReferencedSOPInstanceUID == uid
        refs.append(int(s.ReferencedFrameNumber))
    assert sorted(refs) == [1, 2, 3]  # every frame on its own source frame
    a = read_parametric_map(out, vol).array
    assert np.array_equal(np.isnan(a), np.isnan(heat)) and np.allclose(a[~np.isnan(a)], heat[~np.isnan(heat)])


def test_map_of_several_cine_files_in_one_stack_is_refused_in_one_line(tmp_path):
    """The index makes each loop a part of its own; a stack of several (put together by hand, as
    tests/test_sr_multiframe_refs_s22.py does) is refused: highdicom maps one such file only."""
    import dataclasses

    d = tmp_path / "runs"
    a, b = (_cine(d / f"run{n}.dcm", *CINES["xa"]) for n in (1, 2))
    first = pydicom.dcmread(a)
    second = pydicom.dcmread(b)
    second.StudyInstanceUID, second.SeriesInstanceUID, second.InstanceNumber = \
        first.StudyInstanceUID, first.SeriesInstanceUID, 2
    second.save_as(b)
    parts = scan(str(d)).image_series()
    s = dataclasses.replace(parts[0], key=parts[0].uid, part=0, split_reason="",
                            instances=sorted((r for p in parts for r in p.instances),
                                             key=lambda r: int(r.get("InstanceNumber"))))
    vol = load_series(s)
    assert vol.n_slices == 6
    notes: list[str] = []
    with pytest.raises(DicomExportError, match="2 multi-frame files without patient geometry") as e:
        build_parametric_map(vol, np.ones(vol.shape[:3], np.float32), label="m", method="gradcam",
                             model_id="x", model_version="1", warnings=notes)
    assert "\n" not in str(e.value) and notes == []


def test_nominal_plane_note_only_for_a_map_that_was_written(tmp_path, monkeypatch):
    vol = _load(_cine(tmp_path / "src" / "cine.dcm", *CINES["us"]).parent)

    def refuse(*a, **k):
        raise ValueError("highdicom refused it")

    monkeypatch.setattr(highdicom.pm, "ParametricMap", refuse)
    notes: list[str] = []
    with pytest.raises(DicomExportError, match="Parametric Map not written"):
        build_parametric_map(vol, np.ones(vol.shape[:3], np.float32), label="m", method="gradcam",
                             model_id="x", model_version="1", warnings=notes)
    assert notes == []


def test_cli_writes_the_parametric_map_of_a_us_cine(tmp_path):
    src = _cine(tmp_path / "src" / "cine.dcm", *CINES["us"], rows=64, cols=80)
    out = tmp_path / "out"
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "imaging_assist", "analyze", str(src),
                        "--model", "us-breast", "--explain", "--dicom", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert "Traceback" not in r.stderr and "Parametric Map not written" not in r.stderr, r.stderr
    (pm,) = (out / "dicom").glob("*_PM_*.dcm")
    assert dciodvfy_errors(pm) == []
    assert read_parametric_map(pm, _load(src.parent)).array.shape == (3, 64, 80)


# ----------------------------------------------------------------------------- 4. PM read back, FoR
def _with_for(tmp, which: str):
    if which == "cr":
        return _with_meta(need(CR), tmp / "cr_for" / "cr.dcm", FrameOfReferenceUID=generate_uid())
    return _with_meta(US_DEMO / "us_01_breast.dcm", tmp / "us_for" / "us.dcm", FrameOfReferenceUID=generate_uid())


def _own_map(vol, path):
    heat = np.random.default_rng(2).random(vol.shape[:3]).astype(np.float32)
    build_parametric_map(vol, heat, label="normal", method="gradcam", model_id="m",
                         model_version="1", series_number=77).save_as(path)
    return heat


@pytest.mark.parametrize("which", ["cr", "us"])
def test_own_map_of_a_projection_or_us_image_with_a_frame_of_reference_reads_back(tmp_path, which):
    src = _with_for(tmp_path, which)
    vol = _load(src.parent)
    assert not vol.has_geometry and vol.headers[0].get("FrameOfReferenceUID")
    out = tmp_path / "pm.dcm"
    heat = _own_map(vol, out)
    own_for = pydicom.dcmread(out, stop_before_pixels=True).FrameOfReferenceUID
    assert own_for != vol.headers[0].get("FrameOfReferenceUID")
    assert np.array_equal(read_parametric_map(out, vol).array, heat)
    # placed by its references: one that references no image of the series is still refused
    ds = pydicom.dcmread(out)
    del ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence
    ds.save_as(tmp_path / "noref.dcm")
    with pytest.raises(ResultObjectError, match="another frame of reference"):
        read_parametric_map(tmp_path / "noref.dcm", vol)


def test_viewer_shows_the_own_map_of_a_us_image_with_a_frame_of_reference(tmp_path_factory):
    from _qt import open_window, wait_until

    from imaging_assist.layers import HeatmapLayer

    tmp = tmp_path_factory.mktemp("us_for_view")
    src = _with_for(tmp, "us")
    heat = _own_map(_load(src.parent), src.parent / "pm.dcm")
    w = open_window(tmp_path_factory, str(src.parent))
    try:
        assert wait_until(lambda: any(isinstance(la, HeatmapLayer) for la in w.doc.layers.layers), 20), \
            w.results.messages
        (layer,) = [la for la in w.doc.layers.layers if isinstance(la, HeatmapLayer)]
        assert np.array_equal(np.asarray(layer.array), heat)
        assert not any("frame of reference" in m for m in w.results.messages)
    finally:
        w.close()


# ----------------------------------------------------------------------------- a full disk
def test_a_failed_write_leaves_no_object_under_its_name_and_says_why_in_one_line(tmp_path, monkeypatch):
    """pydicom writes the file as it goes and, on a full disk, re-raises the OSError with the
    formatted traceback as its message: the object was left truncated under its final name and
    the traceback shown to the reader."""
    import errno

    from pydicom.dataset import Dataset as _DS

    from imaging_assist.dicom import load_series, scan
    from imaging_assist.export.dicom import DicomExportError, write_dicom_results
    from test_charset_fixes_s21 import _results, _source

    src = _source(tmp_path / "src", "ISO_IR 192", "Doe^Jane", "Chest", None, None)
    vol = load_series(scan(str(src.parent)).image_series()[0])
    seg, _ = _results(vol)

    def disk_full(self, filename, *a, **k):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)  # what pydicom had written when the disk filled up
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise OSError("With tag (7FE0,0010) got exception: [Errno 28] No space left on device\n"
                          "Traceback (most recent call last):\n  File ...") from e

    monkeypatch.setattr(_DS, "save_as", disk_full)
    out = tmp_path / "dicom"
    with pytest.raises(DicomExportError) as e:
        write_dicom_results(vol, [seg], out)
    msg = str(e.value)
    assert "No space left on device" in msg and "\n" not in msg and "Traceback" not in msg, msg
    assert list(out.glob("*")) == []  # no truncated object, no temporary file
