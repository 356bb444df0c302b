"""Engine maths for reading series side by side (imaging_assist.viewing): linked scrolling by
mm, reference lines as plane intersections, the image a series opens on."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED
from imaging_assist import viewing
from imaging_assist.layers import Plane, standard_planes
from imaging_assist.volume import Volume

CT = SHARED / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"


def _axial(n=20, dz=1.0, z0=0.0, for_uid="1.2.3", positions=None, shape=(32, 40)):
    vol = Volume(np.zeros((n,) + shape, np.int16), spacing=(0.5, 0.5, dz), origin=(-10.0, -8.0, z0),
                 direction=np.eye(3), modality="CT")
    vol.slice_positions = np.asarray(positions, float) if positions is not None else z0 + dz * np.arange(n)
    vol.headers = [{"FrameOfReferenceUID": for_uid, "InstanceNumber": k + 1} for k in range(n)]
    return vol


def test_linked_index_lands_on_the_same_mm_not_the_same_index():
    a = _axial(n=40, dz=1.0, z0=0.0)
    b = _axial(n=12, dz=2.5, z0=0.7)  # other spacing and offset, same frame of reference
    for ka in (0, 5, 13, 27):
        kb, dist = viewing.linked_index(a, ka, b)
        want = int(np.argmin(np.abs(b.slice_positions - a.slice_positions[ka])))
        assert kb == want and dist == pytest.approx(abs(b.slice_positions[kb] - ka), abs=1e-9)
        assert dist <= 1.25 + 1e-9
    # beyond the end of b: the last slice, and the distance tells how far
    kb, dist = viewing.linked_index(a, 39, b)
    assert kb == 11 and dist == pytest.approx(39 - (0.7 + 27.5))


def test_uneven_spacing_uses_each_slice_position():
    pos = [0.0, 4.22, 8.44, 12.66, 13.8, 21.18, 28.56]
    b = _axial(n=7, dz=float(np.mean(np.diff(pos))), positions=pos)
    a = _axial(n=30, dz=1.0)
    assert viewing.linked_index(a, 14, b)[0] == 4   # 14 mm: 13.8 is nearest, the mean step says 5
    geo = viewing.slice_geometry(b, Plane.native(), 4)
    assert geo.origin @ b.normal == pytest.approx(13.8)


def test_a_position_in_a_gap_or_beyond_the_ends_is_said():
    """A linked series with a missing run of slices (a gap of 10 mm in 2 mm steps): a position in
    the gap shows the nearest slice and says how far it is; within half a step it says nothing."""
    a = _axial(n=40, dz=1.0)
    b = _axial(n=10, positions=[0, 2, 4, 6, 8, 18, 20, 22, 24, 26])
    notes = {}
    for ka in (3, 12, 13, 19, 30, 39):
        kb, dist = viewing.linked_index(a, ka, b)
        notes[ka] = viewing.gap_note(b, dist)
    assert notes[3] == notes[19] == ""        # 1 mm from a slice: half the step
    assert notes[12] == "no slice at this position: the nearest shown, 4.0 mm away"
    assert notes[13].endswith("5.0 mm away")  # the middle of the gap
    assert notes[30].endswith("4.0 mm away") and notes[39].endswith("13.0 mm away")  # beyond the last
    assert viewing.gap_note(b, float("nan")) == ""


def test_reference_line_is_the_plane_intersection():
    vol = _axial(n=30, dz=1.0, shape=(32, 40))
    ax, cor, sag = standard_planes(vol.direction)
    # the sagittal slice at column i=12 cuts the axial image along the column u = 12
    seg = viewing.reference_line(vol, sag, 12, vol, ax, 7)
    (u0, v0), (u1, v1) = seg
    assert u0 == pytest.approx(12) and u1 == pytest.approx(12)
    assert sorted((v0, v1)) == pytest.approx([-0.5, 31.5])
    # the axial slice k=7 cuts the coronal image along one row; which row depends on the flip
    seg = viewing.reference_line(vol, ax, 7, vol, cor, 16)
    (u0, v0), (u1, v1) = seg
    k_at = cor.to_voxel(u0, v0, 16, vol.array.shape)[0]
    assert v0 == pytest.approx(v1) and k_at == pytest.approx(7)
    # across two series: the prior's axial plane at z = 10 mm on the current's sagittal
    prior = _axial(n=8, dz=2.5, z0=0.0)
    seg = viewing.reference_line(prior, Plane.native(), 4, vol, sag, 3)
    (u0, v0), (u1, v1) = seg
    kji = sag.to_voxel(u0, v0, 3, vol.array.shape)
    assert viewing._lps(vol, kji)[2] == pytest.approx(10.0)
    # parallel planes: no line
    assert viewing.reference_line(prior, Plane.native(), 4, vol, ax, 3) is None


def test_reference_line_outside_the_image_is_none():
    vol = _axial(n=30, dz=1.0)
    other = _axial(n=5, dz=1.0)
    other.direction = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # sagittal slices
    other.origin = (500.0, 0.0, 0.0)  # x = 500 mm: far outside vol
    other.slice_positions = 500.0 + np.arange(5)
    assert viewing.reference_line(other, Plane.native(), 0, vol, Plane.native(), 3) is None


def test_link_check_needs_the_same_frame_of_reference():
    a, b = _axial(for_uid="1.2.3"), _axial(for_uid="1.2.3")
    assert viewing.link_check(a, b) == (True, "")
    c = _axial(for_uid="9.9.9")
    ok, why = viewing.link_check(a, c)
    assert not ok and "different frames of reference" in why
    ok, why = viewing.link_check(a, c, manual=True)
    assert ok and "need not be the same anatomy" in why
    d = _axial(for_uid="1.2.3")
    d.direction = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    ok, why = viewing.link_check(a, d, manual=True)
    assert not ok and "degrees" in why


def test_start_index_is_the_first_image_in_series_order():
    vol = _axial(n=10)
    assert viewing.start_index(vol) == 0
    for k, h in enumerate(vol.headers):  # scanned the other way: instance 1 is the top slice
        h["InstanceNumber"] = 10 - k
    assert viewing.start_index(vol) == 9
    vol.is_cine = True
    assert viewing.start_index(vol) == 0


def test_real_ct_frame_of_reference_and_start():
    assert CT.is_dir(), f"missing test data {CT}"
    from imaging_assist.dicom import SeriesLoader, scan
    series = scan([str(CT)]).image_series()[0]
    loader = SeriesLoader(series)
    vol = loader.volume
    assert viewing.frame_of_reference(vol) == "1.3.46.670589.33.1.28113183791790987842.26931358731677349446"
    k = viewing.start_index(vol)
    assert int(vol.headers[k].get("InstanceNumber")) == 1
    loader.start_k = k
    assert k in loader._units()[0][1]  # the loader reads the start slice first
    # the slice geometry agrees with the file's ImagePositionPatient
    ipp = np.array([float(x) for x in vol.headers[37].get("ImagePositionPatient")])
    assert viewing.slice_geometry(vol, Plane.native(), 37).origin == pytest.approx(ipp, abs=1e-3)


def test_same_space_for_reference_lines_ignores_orientation():
    a = _axial(for_uid="1.2.3")
    sag = _axial(for_uid="1.2.3")
    sag.direction = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    assert viewing.same_space(a, sag) and not viewing.link_check(a, sag)[0]
    assert not viewing.same_space(a, _axial(for_uid="7.7"))
    assert viewing.same_space(a, _axial(for_uid="7.7"), manual=True)
    a.has_geometry = False
    assert not viewing.same_space(a, sag, manual=True)


def test_priors_are_other_studies_of_the_same_patient_id():
    from types import SimpleNamespace as NS
    from imaging_assist.dicom.index import PatientInfo, SeriesInfo, StudyIndex, StudyInfo

    def ser(uid, mod, desc, n):
        s = SeriesInfo(uid, uid)
        s.instances = [NS(get=lambda kw, d=None, m=mod, de=desc: {"Modality": m, "SeriesDescription": de}.get(kw, d),
                          has_pixels=True, frames=1) for _ in range(n)]
        return s
    cur = ser("c", "CT", "AX 1MM", 100)
    st_now = StudyInfo("s1", date="20240301", series=[cur])
    old = StudyInfo("s0", date="20220115", series=[ser("p1", "CT", "AX 5MM", 30), ser("p2", "CT", "ax 1mm", 90),
                                                   ser("p3", "CR", "CHEST", 1)])
    older = StudyInfo("s-1", date="20190101", series=[ser("q", "MR", "T1", 20)])
    other_patient = StudyInfo("x", date="20230101", series=[ser("z", "CT", "AX 1MM", 100)])
    # the same PatientID may come as two patient entries (e.g. another name spelling): still a prior
    idx = StudyIndex("/", patients=[PatientInfo("P1", "A^B", studies=[st_now, older]),
                                    PatientInfo("P1", "A B", studies=[old]),
                                    PatientInfo("P2", "C^D", studies=[other_patient])])
    pri = viewing.prior_studies(idx, cur)
    assert [st.uid for st in pri] == ["s0", "s-1"]  # most recent first, never another patient's
    assert viewing.matching_series(old, cur).uid == "p2"  # same modality and description
    idx.patients[0].id = ""
    assert viewing.prior_studies(idx, cur) == []  # no ID: no matching by guess


def test_manual_link_keeps_the_gap_with_a_feet_first_prior():
    """Linked by hand (other Frame of Reference) to a prior scanned feet-first: scrolling either
    series keeps the distance the reader set. Applying one subtracted number along the other
    series' normal sent the current series to the mirrored position when the prior scrolled."""
    cur = _axial(n=60, dz=1.0, z0=0.0)  # head first: z = k
    prior = Volume(np.zeros((31, 32, 40), np.int16), spacing=(0.5, 0.5, 2.0), origin=(10.0, -8.0, 60.0),
                   direction=np.diag([-1.0, 1.0, -1.0]), modality="CT")  # feet first: z = 60 - 2k
    prior.slice_positions = -60.0 + 2.0 * np.arange(31)  # along its own normal (-z)
    z_prior = lambda k: 60.0 - 2.0 * k  # noqa: E731
    # linked with the current at z = 30 and the prior at z = 48: the prior's distance along its normal
    c30 = viewing.slice_geometry(cur, Plane.native(), 30).center
    p6 = viewing.slice_geometry(prior, Plane.native(), 6).center
    off = float((p6 - c30) @ prior.normal)
    assert off == pytest.approx(-18.0)
    # the current scrolls to z = 40: the prior goes to z = 58
    k, _ = viewing.manual_linked_index(cur, 40, prior, 0.0, off)
    assert z_prior(k) == pytest.approx(58.0)
    # the prior scrolls to z = 42: the current goes to z = 24 (the gap kept), not to z = 60
    k, dist = viewing.manual_linked_index(prior, 9, cur, off, 0.0)
    assert k == 24 and dist == pytest.approx(0.0)
