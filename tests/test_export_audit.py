"""DICOM result objects that were valid but said something wrong, or were invalid for one
source (an audit of the writers): a withheld decision written as "Absent", frame references to
another stack of an enhanced object, characters outside the declared character set, an ellipse
whose minor axis came first, "not for clinical use" missing from most objects, one object that
could not be built taking the others with it."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest

from conftest import DICOM, need
from imaging_assist.dicom import load_series, scan
from imaging_assist.export.dicom import write_dicom_results
from imaging_assist.measure import Measurement
from test_export_dicom import CR, CXR, MINI_PDF, _by_kind, _decisions, _named, _results, dciodvfy_errors

ENHANCED_MR = DICOM / "mr_enhanced_multiframe_philips"


def _load(path, stack=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_series(scan(str(need(path))).image_series()[0], stack)


def test_a_withheld_decision_is_neither_present_nor_absent(tmp_path):
    """A research override withholds the decision (positive None): the SR wrote "Absent" next
    to a probability of 0.999."""
    vol = _load(CXR)
    _, cl = _results(vol)
    cl.probabilities = {"normal": 0.001, "pneumonia": 0.999}
    cl.decisions["pneumonia"] = {"threshold": 0.7477, "positive": None,
                                 "withheld": "research override: the model card does not fit this series"}
    notes: list[str] = []
    objs = write_dicom_results(vol, [cl], tmp_path / "dicom", warnings=notes)
    sr = pydicom.dcmread(_by_kind(objs, "SR")[0].path)
    assert _decisions(sr) == []
    withheld = _named(sr, "Model decision")
    assert [it.ConceptCodeSequence[0].CodeMeaning for it in withheld] == ["Withheld"]
    assert _named(sr, "Probability")
    assert any("decision withheld (research override" in n for n in notes), notes
    assert dciodvfy_errors(_by_kind(objs, "SR")[0].path) == []


def test_results_on_a_later_stack_of_an_enhanced_object_reference_its_frames(tmp_path):
    """Stack 2 of the Philips enhanced MR is frames 33-64: the SEG, the Parametric Map and the
    SR referenced frames 1-32 (the first stack's at the same positions)."""
    vol = _load(ENHANCED_MR, stack=1)
    assert vol.frames[0] == 32
    seg, cl = _results(vol)
    k = 10
    m = Measurement("ruler", [(10, 10), (40, 40)], index=k)
    m.compute_on(vol)
    objs = write_dicom_results(vol, [seg, cl], tmp_path / "dicom", measurements=[m])
    want = {int(f) + 1 for f in vol.frames}
    for kind in ("SEG", "PM"):
        ds = pydicom.dcmread(_by_kind(objs, kind)[0].path)
        per_frame = [[int(src.ReferencedFrameNumber) for der in fg.DerivationImageSequence
                      for src in der.SourceImageSequence] for fg in ds.PerFrameFunctionalGroupsSequence]
        # one source frame each (highdicom listed the frame of every stack at that position)
        assert per_frame and all(len(r) == 1 and r[0] in want for r in per_frame), (kind, per_frame[:3])
    sr = pydicom.dcmread(_by_kind(objs, "SR")[0].path)

    def frames(ds):
        for it in ds.get("ContentSequence", []):
            for r in it.get("ReferencedSOPSequence", []):
                if "ReferencedFrameNumber" in r:
                    yield int(r.ReferencedFrameNumber)
            yield from frames(it)
    got = set(frames(sr))
    assert got == {vol.frames[k] + 1}, got


def test_non_ascii_labels_and_notes_get_utf8_in_every_object(tmp_path):
    """"Area 2356.2 px²" in a GSPS of a source without SpecificCharacterSet was invalid
    (dciodvfy: character invalid for the repertoire); a note "✓" in the SR of a Latin-1 source
    became "?"."""
    from imaging_assist.export.presentation_state import write_presentation_state

    vol = _load(CR)
    k = 0
    ms = [Measurement("ellipse", [(100, 100), (130, 200)], index=k),
          Measurement("text", [(50, 50)], index=k, text="note ✓ é")]
    for m in ms:
        m.compute_on(vol)
    assert any("²" in t for t in ms[0].result["text"])
    gsps = write_presentation_state(vol, ms, tmp_path / "ps.dcm")
    objs = write_dicom_results(vol, [], tmp_path / "dicom", measurements=ms)
    sr_path = _by_kind(objs, "SR")[0].path
    for p in (gsps, sr_path):
        ds = pydicom.dcmread(p)
        assert ds.SpecificCharacterSet == "ISO_IR 192", p
        assert dciodvfy_errors(p) == [], p
    texts = [it.TextValue for it in _walk(pydicom.dcmread(sr_path)) if "TextValue" in it]
    assert any("note ✓ é" in t for t in texts), texts


def _walk(ds):
    for it in ds.get("ContentSequence", []):
        yield it
        yield from _walk(it)


def test_an_ellipse_taller_than_wide_gives_its_major_axis_first(tmp_path):
    """PS3.3 C.10.5.1.2 / C.18.6.1.2: ELLIPSE = major axis end points, then minor."""
    from imaging_assist.export.presentation_state import write_presentation_state

    vol = _load(CR)
    m = Measurement("ellipse", [(100, 100), (130, 200)], index=0)  # 30 wide, 100 tall
    m.compute_on(vol)
    ps = pydicom.dcmread(write_presentation_state(vol, [m], tmp_path / "ps.dcm"))
    data = [np.array(g.GraphicData, float).reshape(-1, 2) for ann in ps.GraphicAnnotationSequence
            for g in ann.get("GraphicObjectSequence", []) if g.GraphicType == "ELLIPSE"][0]
    objs = write_dicom_results(vol, [], tmp_path / "dicom", measurements=[m])
    sr = pydicom.dcmread(_by_kind(objs, "SR")[0].path)
    scoord = [np.array(it.GraphicData, float).reshape(-1, 2) for it in _walk(sr)
              if it.get("ValueType") == "SCOORD" and it.GraphicType == "ELLIPSE"][0]
    for pts in (data, scoord):
        major, minor = np.linalg.norm(pts[1] - pts[0]), np.linalg.norm(pts[3] - pts[2])
        assert major == pytest.approx(100) and minor == pytest.approx(30), pts


def test_every_object_says_not_for_clinical_use_in_its_series_description(tmp_path):
    vol = _load(CXR)
    seg, cl = _results(vol)
    seg.model_id = "a-model-with-a-very-long-name-that-would-push-the-warning-out-of-64"
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(MINI_PDF)
    m = Measurement("ruler", [(2, 3), (9, 7)], index=0)
    m.compute_on(vol)
    objs = write_dicom_results(vol, [seg, cl], tmp_path / "dicom", report_pdf=pdf, measurements=[m])
    assert {o.kind for o in objs} >= {"SEG", "PM", "SR", "PDF"}
    for o in objs:
        ds = pydicom.dcmread(o.path)
        assert ds.SeriesDescription.endswith("(NOT FOR CLINICAL USE)") and len(ds.SeriesDescription) <= 64, o


def test_an_object_that_cannot_be_built_leaves_the_others_when_failures_are_collected(tmp_path, monkeypatch):
    """analyze --dicom: a SEG highdicom refuses (an XA cine without a frame of reference) took
    the SR, the Parametric Map and the PDF with it."""
    from imaging_assist.export.dicom_common import DicomExportError

    def refuse(*a, **k):
        raise DicomExportError("SEG not written: highdicom refused it")
    import imaging_assist.export.seg as seg_mod
    monkeypatch.setattr(seg_mod, "build_seg", refuse)
    vol = _load(CXR)
    seg, cl = _results(vol)
    failures: list[str] = []
    objs = write_dicom_results(vol, [seg, cl], tmp_path / "a", failures=failures)
    assert failures == ["SEG not written: highdicom refused it"]
    assert {o.kind for o in objs} == {"PM", "SR"}
    with pytest.raises(DicomExportError, match="highdicom refused it"):
        write_dicom_results(vol, [seg, cl], tmp_path / "b")


def test_frames_of_slices_of_another_thickness_say_their_own(tmp_path):
    """The GE series changes from 4 to 7 mm slices: the SEG and Parametric Map said 4 mm for
    every frame (one shared Pixel Measures)."""
    from test_export_dicom import TILT

    vol = _load(TILT)
    seg, cl = _results(vol)
    objs = write_dicom_results(vol, [seg, cl], tmp_path / "dicom")
    src = {}
    for h in vol.headers:
        ds = pydicom.dcmread(h.path, stop_before_pixels=True)
        src[tuple(round(float(x), 3) for x in ds.ImagePositionPatient)] = float(ds.SliceThickness)
    assert len(set(src.values())) > 1
    for kind in ("SEG", "PM"):
        path = _by_kind(objs, kind)[0].path
        ds = pydicom.dcmread(path)
        assert "PixelMeasuresSequence" not in ds.SharedFunctionalGroupsSequence[0]
        for fg in ds.PerFrameFunctionalGroupsSequence:
            key = tuple(round(float(x), 3) for x in fg.PlanePositionSequence[0].ImagePositionPatient)
            assert float(fg.PixelMeasuresSequence[0].SliceThickness) == src[key], (kind, key)
        assert dciodvfy_errors(path) == [], kind
