"""Result objects of other software on this patient's images (session 20's audit):

1. a 3D outline of more than 5,460 points (GraphicData stored as UN bytes) lists its
   measurements at its first point, not at a point made of its first three bytes;
2. a SEG, parametric map, SR or presentation state of another patient naming this series is not
   drawn on it (one line); another study is drawn and said;
3. a SEG in another frame of reference is not laid on the series by its positions.
"""

from __future__ import annotations

import copy
import io
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from conftest import CT_PHANTOM, DICOM, need
from imaging_assist.dicom import load_series, scan
from imaging_assist.dicom.result_objects import ResultObjectError, read_segmentation, read_sr
from imaging_assist.dicom.sr_regions import place_regions


def _volume(path):
    return load_series(scan(str(need(path))).image_series()[0])


def _sources(vol) -> list:
    out, seen = [], set()
    for rec in vol.headers:
        if rec.path not in seen:
            seen.add(rec.path)
            out.append(pydicom.dcmread(rec.path))
    for ds in out:  # highdicom needs the Type 2 patient/study attributes present
        for kw, v in (("PatientID", "X"), ("StudyID", "1"), ("StudyDate", "20000101"), ("StudyTime", "120000"),
                      ("AccessionNumber", ""), ("ReferringPhysicianName", ""), ("PatientBirthDate", ""),
                      ("PatientSex", "")):
            if kw not in ds:
                setattr(ds, kw, v)
    return out


def _reread(ds):
    buf = io.BytesIO()
    ds.save_as(buf)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def ct():
    vol = _volume(CT_PHANTOM)
    return vol, _sources(vol)


@pytest.fixture(scope="module")
def seg(ct):
    vol, src = ct
    m = np.zeros(vol.array.shape, bool)
    m[60:64, 100:180, 50:300] = True
    desc = hd.seg.SegmentDescription(1, "a", codes.SCT.Tissue, codes.SCT.Tissue,
                                     hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = hd.seg.Segmentation(src, m[..., None], "BINARY", [desc], hd.UID(), 300, hd.UID(), 1, "Other",
                                "w", "1", "0", series_description="foreign seg")
    return _reread(s), m


def test_a_foreign_seg_of_this_patient_lands_on_its_voxels(ct, seg):
    vol, _ = ct
    ds, m = seg
    got = read_segmentation(_reread(ds), vol)
    assert np.array_equal(got.mask(1), m) and got.warnings == []


def test_another_patients_seg_naming_this_series_is_not_drawn(ct, seg):
    vol, _ = ct
    ds = copy.deepcopy(seg[0])
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID = "SOMEONE-ELSE", "Other^Patient", hd.UID()
    with pytest.raises(ResultObjectError, match="is of another patient .*'SOMEONE-ELSE'.*not shown") as e:
        read_segmentation(_reread(ds), vol)
    assert "\n" not in str(e.value)


def test_another_study_of_this_patient_is_drawn_and_said(ct, seg):
    vol, _ = ct
    ds = copy.deepcopy(seg[0])
    ds.StudyInstanceUID = hd.UID()
    got = read_segmentation(_reread(ds), vol)
    assert np.array_equal(got.mask(1), seg[1])
    assert any(w.startswith("it belongs to another study") for w in got.warnings)


@pytest.mark.parametrize("positions_only", [False, True])
def test_a_seg_in_another_frame_of_reference_is_not_placed(ct, seg, positions_only):
    vol, _ = ct
    ds = copy.deepcopy(seg[0])
    ds.FrameOfReferenceUID = hd.UID()
    if positions_only:
        for it in ds.PerFrameFunctionalGroupsSequence:
            del it.DerivationImageSequence
    with pytest.raises(ResultObjectError, match="another frame of reference"):
        read_segmentation(_reread(ds), vol)


def _long_3d_sr(vol, src, k: int, patient=None):
    """A TID 1500 SR with one 6,000-point 3D outline in the plane of slice k (GraphicData over
    65,534 bytes: written and read as UN)."""
    R, C = vol.array.shape[1:]
    t = np.linspace(0, 2 * np.pi, 6000, endpoint=False)
    ij = np.column_stack([C / 2 + C / 5 * np.cos(t), R / 2 + R / 6 * np.sin(t)])
    pts = np.array([vol.index_to_lps(i, j, k) for i, j in ij])
    pts = np.vstack([pts, pts[:1]])
    reg = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POLYGON, graphic_data=pts,
                              frame_of_reference_uid=src[0].FrameOfReferenceUID)
    g = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="big outline"),
        referenced_region=reg,
        measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=25000.0, unit=codes.UCUM.SquareMillimeter)])
    rep = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(),
                                  procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[g])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.Comprehensive3DSR(evidence=[src[min(k, len(src) - 1)]], content=rep[0], series_number=9,
                                     series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), instance_number=1,
                                     manufacturer="Other")
    ds = _reread(sr)
    if patient is not None:
        ds.PatientID = patient
    return _reread(ds), pts


def test_a_long_3d_outline_lists_its_measurement_on_its_own_slice():
    vol = _volume(DICOM / "mr_enhanced_multiframe_philips")
    src = _sources(vol)
    ds, pts = _long_3d_sr(vol, src, 12)
    report = read_sr(ds)
    (it,) = report.items
    assert np.allclose(it.point_lps, pts[0], atol=1e-3)  # was (165, 210, 79): three bytes
    assert report.slices_in(vol) == [12]
    layer, warns = place_regions(report, vol)
    assert sorted({round(float(v), 3) for v in layer.shapes[0].points[:, 0]}) == [12.0]


def test_another_patients_sr_regions_are_not_placed(ct):
    vol, src = ct
    ds, _ = _long_3d_sr(vol, src, 70, patient="SOMEONE-ELSE")
    layer, warns = place_regions(read_sr(ds), vol)
    assert layer is None and len(warns) == 1 and "is of another patient" in warns[0]
