"""A series of several multi-frame files (two XA cine runs, 2 x 96 frames): the SR and the GSPS
reference, for a measurement on volume slice k, the file that slice comes from and its frame
(slice 50 = frame 51 of run1, slice 116 = frame 21 of run2), not "dataset k" of the series."""

import dataclasses

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import DICOM, need
from test_export_dicom import dciodvfy_errors

from imaging_assist.dicom import load_series, scan
from imaging_assist.dicom.presentation_state import read_presentation_state
from imaging_assist.export import dicom_common as dc
from imaging_assist.export.presentation_state import write_presentation_state
from imaging_assist.export.sr_measurements import write_measurement_sr
from imaging_assist.measure import Measurement


def _runs(folder, window1=None, slope2=None, orientation=("R", "F"), n_runs=2):
    """Two copies of the real XA cine in one series (run1, run2), with the Imager Pixel Spacing and
    Patient Orientation the SR's image library needs of them: run1 with its own window, run2 with
    its own rescale slope when given."""
    src = need(DICOM / "xa_multiframe_cine_jpeg_baseline" / "HasFragmentSequence.dcm")
    folder.mkdir()
    uids = {}
    for n in range(1, n_runs + 1):
        ds = pydicom.dcmread(str(src))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n
        ds.ImagerPixelSpacing, ds.PatientOrientation = [0.3, 0.3], list(orientation)
        if n == 1 and window1:
            ds.WindowCenter, ds.WindowWidth = window1
        if n == 2 and slope2:
            ds.RescaleSlope, ds.RescaleIntercept = slope2, 0
        ds.save_as(str(folder / f"run{n}.dcm"))
        uids[n] = str(ds.SOPInstanceUID)
    parts = scan(str(folder)).image_series()
    # The index makes each cine loop without patient positions a part of its own (each plays at its
    # own frame rate); the references are tested on one stack made of several multi-frame files, as a
    # series of positioned multi-frame files loads: the runs' records put together by hand.
    s = dataclasses.replace(parts[0], key=parts[0].uid, part=0, split_reason="",
                            instances=sorted((r for p in parts for r in p.instances),
                                             key=lambda r: int(r.get("InstanceNumber"))))
    return load_series(s), uids


@pytest.fixture(scope="module")
def xa2(tmp_path_factory):
    vol, uids = _runs(tmp_path_factory.mktemp("xa2") / "series", window1=(100, 180))
    assert vol.n_slices == 192 and len(dc.source_datasets(vol)) == 2
    return vol, uids


def _refs(items, out):
    for it in items or []:
        for ref in it.get("ReferencedSOPSequence") or []:
            out.append((str(ref.ReferencedSOPInstanceUID), ref.get("ReferencedFrameNumber")))
        _refs(it.get("ContentSequence"), out)
    return out


def test_sr_of_viewer_measurements_references_the_file_and_frame_of_their_slice(xa2, tmp_path):
    vol, uids = xa2
    items = [Measurement("ruler", [(100, 100), (200, 100)], 0, 50),
             Measurement("ellipse", [(120, 120), (160, 150)], 0, 116),
             Measurement("polygon", [(50, 50), (90, 50), (90, 80)], 0, 116)]
    for m in items:
        m.compute_on(vol)
    path = write_measurement_sr(vol, items, tmp_path / "sr.dcm", warnings=[])
    sr = pydicom.dcmread(str(path))
    groups = sr.ContentSequence[-1].ContentSequence  # Imaging Measurements: one group per item
    by_item = {}
    for g in groups:
        tid = next(str(c.TextValue) for c in g.ContentSequence if c.ValueType == "TEXT")
        by_item[tid] = {(u, int(f) if f is not None else None) for u, f in _refs(g.ContentSequence, [])}
    assert by_item[f"viewer ruler {items[0].id}"] == {(uids[1], 51)}
    assert by_item[f"viewer ellipse {items[1].id}"] == {(uids[2], 21)}
    assert by_item[f"viewer polygon {items[2].id}"] == {(uids[2], 21)}
    # the image library lists the images the measurements lie on (both runs here)
    library = next(c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeMeaning == "Image Library")
    assert sorted(u for u, _ in _refs(library.ContentSequence, [])) == sorted(uids.values())
    assert dciodvfy_errors(path) == []
    # read back by our own SR reader onto the slices they were drawn on
    from imaging_assist.dicom.result_objects import read_sr
    from imaging_assist.dicom.sr_regions import place_regions

    layer, _w = place_regions(read_sr(str(path)), vol)
    assert sorted({int(round(s.points[0, 0])) for s in layer.shapes if s.kind == "path"}) == [50, 116]


def test_model_result_axis_lines_reference_the_file_and_frame_of_their_slice(xa2, monkeypatch):
    """A nodule's long/short axis lines (model results) on slice 116: run2, frame 21."""
    from imaging_assist.export import sr

    vol, uids = xa2
    # the reference is what is tested; the XA cine itself has no patient geometry for the lines
    monkeypatch.setattr(dc, "has_patient_geometry", lambda volume, datasets: True)
    ends = np.array([vol.index_to_lps(100, 100, 116), vol.index_to_lps(140, 100, 116)])
    nd = {"id": "N1", "long_axis_mm": 10.0,
          "measurements": {"largest_slice": 116, "long_axis_ends_lps": ends.tolist()}}
    groups = sr._axis_groups(nd, generate_uid(), vol, dc.source_datasets(vol), sr._algo("nodule-seg", "1"))
    assert len(groups) == 1
    refs = {(u, None if f is None else int(f)) for u, f in _refs(groups[0][0].ContentSequence, [])}
    assert refs == {(uids[2], 21)}


def test_gsps_references_the_file_and_frame_of_each_slice_with_each_files_window(xa2, tmp_path):
    vol, uids = xa2
    items = [Measurement("ruler", [(100, 100), (200, 100)], 0, 50),
             Measurement("ruler", [(100, 150), (200, 150)], 0, 116)]
    for m in items:
        m.compute_on(vol)
    warn: list = []
    path = write_presentation_state(vol, items, tmp_path / "gsps.dcm", warnings=warn)
    ds = pydicom.dcmread(str(path))
    got = [(str(r.ReferencedSOPInstanceUID), int(r.ReferencedFrameNumber))
           for a in ds.GraphicAnnotationSequence for r in a.ReferencedImageSequence]
    assert got == [(uids[1], 51), (uids[2], 21)]
    # run1 has its own window, run2 none (the viewer's automatic one, said): one item each
    voi = {str(v.ReferencedImageSequence[0].ReferencedSOPInstanceUID): (float(v.WindowCenter), float(v.WindowWidth))
           for v in ds.SoftcopyVOILUTSequence}
    assert voi[uids[1]] == (100.0, 180.0) and voi[uids[2]] != (100.0, 180.0)
    assert any("no window of its own" in s for s in warn)
    assert dciodvfy_errors(path) == []
    ps = read_presentation_state(str(path), vol)
    paths = [s for s in ps.layer.shapes if s.kind == "path"]
    assert [int(round(s.points[0, 0])) for s in paths] == [50, 116]
    assert np.allclose(paths[1].points, [(116, 150, 100), (116, 150, 200)], atol=1e-4)


def test_gsps_on_one_file_of_the_series_and_files_with_different_rescales(xa2, tmp_path):
    """Measurements on one run only: that file alone is referenced (its frame, its LUTs); on
    two runs whose rescales differ: one line (a presentation state holds one rescale)."""
    vol, uids = xa2
    m = Measurement("ruler", [(100, 100), (200, 100)], 0, 150)
    m.compute_on(vol)
    ds = pydicom.dcmread(str(write_presentation_state(vol, [m], tmp_path / "one.dcm", warnings=[])))
    ref = ds.GraphicAnnotationSequence[0].ReferencedImageSequence[0]
    assert (str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedFrameNumber)) == (uids[2], 55)
    assert len(ds.SoftcopyVOILUTSequence) == 1 and "ReferencedImageSequence" not in ds.SoftcopyVOILUTSequence[0]
    m = Measurement("ruler", [(100, 100), (200, 100)], 0, 40)
    m.compute_on(vol)
    ds = pydicom.dcmread(str(write_presentation_state(vol, [m], tmp_path / "run1.dcm", warnings=[])))
    assert [(float(v.WindowCenter), float(v.WindowWidth)) for v in ds.SoftcopyVOILUTSequence] == [(100.0, 180.0)]
    assert dciodvfy_errors(tmp_path / "one.dcm") == []

    other, _ = _runs(tmp_path / "slopes", slope2=2)
    ms = [Measurement("ruler", [(100, 100), (200, 100)], 0, k) for k in (10, 100)]
    for x in ms:
        x.compute_on(other)
    with pytest.raises(dc.DicomExportError) as e:
        write_presentation_state(other, ms, tmp_path / "two.dcm")
    assert "different rescales" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "two.dcm").exists()


def test_an_xa_image_the_image_library_cannot_describe_is_left_out_not_the_whole_sr(tmp_path):
    """One XA cine with Imager Pixel Spacing and its own empty Patient Orientation: highdicom's
    image library entry fails on it (IndexError); the SR is written without the entry."""
    vol, uids = _runs(tmp_path / "one", orientation=(), n_runs=1)
    m = Measurement("ruler", [(100, 100), (200, 100)], 0, 50)
    m.compute_on(vol)
    path = write_measurement_sr(vol, [m], tmp_path / "sr.dcm", warnings=[])
    assert set(_refs(pydicom.dcmread(str(path)).ContentSequence, [])) == {(uids[1], 51)}
    assert dciodvfy_errors(path) == []


def test_gsps_luts_of_several_enhanced_images_are_refused_in_one_line():
    """highdicom reads the LUTs of one enhanced image only: measurements on two enhanced
    multi-frame files of a series are refused in one line, not written with one file's LUTs."""
    import copy

    from imaging_assist.export import presentation_state as ps

    vol = load_series(scan(str(need(DICOM / "mr_enhanced_siemens_series_jpeg2000_lossless_derived"))).image_series()[0])
    a = dc.source_datasets(vol)[0]
    b = copy.deepcopy(a)
    b.SOPInstanceUID = generate_uid()
    assert ps._lut_kwargs(vol, [a], True, [])  # one enhanced image: its own rescale, as before
    with pytest.raises(dc.DicomExportError) as e:
        ps._lut_kwargs(vol, [a, b], True, [])
    assert "2 enhanced multi-frame images" in str(e.value) and "\n" not in str(e.value)
