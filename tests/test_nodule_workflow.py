"""CT lung nodule workflow (issue 21, part 2): reader XML, measurements, click-to-result on the
real LIDC-IDRI-0001 slab, CLI, exports.

Measurement known answers use synthetic ellipsoids built here on isotropic, anisotropic and
gantry-tilted grids; the workflow tests use the real DICOM slab and its readers' XML.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import SHARED, need
from imaging_assist.nodules import lidc_xml, measure
from imaging_assist.volume import Volume

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
XML = SLAB / "annotations_69.xml"
LABELS = SHARED / "ct" / "lidc_nodule_vois" / "labels.csv"


# --------------------------------------------------------------------------- synthetic
def _grid(shape, spacing, direction=None, origin=(0.0, 0.0, 0.0)):
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    v = Volume(array=np.full(shape, -900, np.int16), spacing=tuple(spacing), origin=tuple(origin),
               direction=d, modality="CT", units="HU")
    n = v.normal
    v.slice_positions = np.array([float(n @ v.index_to_lps(0, 0, k)) for k in range(shape[0])])
    return v


def _lps(v: Volume) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(s, dtype=float) for s in v.shape], indexing="ij")
    pts = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    return (v.affine @ pts)[:3].T.reshape(v.shape + (3,))


def _ellipsoid(v: Volume, centre, semi, angle_deg=0.0):
    """Mask of an ellipsoid with semi-axes (a, b, c) mm along (x rotated by angle in the axial
    plane, y rotated, z)."""
    p = _lps(v) - np.asarray(centre, float)
    t = math.radians(angle_deg)
    u = p[..., 0] * math.cos(t) + p[..., 1] * math.sin(t)
    w = -p[..., 0] * math.sin(t) + p[..., 1] * math.cos(t)
    a, b, c = semi
    return (u / a) ** 2 + (w / b) ** 2 + (p[..., 2] / c) ** 2 <= 1.0


SEMI = (6.0, 4.0, 5.0)  # mm: long axis 12, short 8 on the central axial slice
TRUE_VOLUME = 4.0 / 3.0 * math.pi * np.prod(SEMI)


@pytest.mark.parametrize("name,shape,spacing,direction,vol_tol", [
    ("isotropic 0.5 mm", (30, 30, 34), (0.5, 0.5, 0.5), None, 0.03),
    ("anisotropic 0.7 x 0.7 x 2.5 mm", (7, 24, 24), (0.7, 0.7, 2.5), None, 0.10),
    ("flipped rows and slices", (24, 30, 30), (0.6, 0.6, 0.6), np.diag([1.0, -1.0, -1.0]), 0.03),
])
def test_measure_ellipsoid_known_answers(name, shape, spacing, direction, vol_tol):
    v = _grid(shape, spacing, direction)
    mid = v.index_to_lps((shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2)
    for angle in (0.0, 30.0):
        mask = _ellipsoid(v, mid, SEMI, angle)
        m = measure.measure(mask, v)
        px = max(spacing[:2])
        assert abs(m.volume_mm3 - TRUE_VOLUME) / TRUE_VOLUME < vol_tol, (name, angle, m.volume_mm3)
        assert abs(m.long_axis_mm - 12.0) <= px, (name, angle, m.long_axis_mm)
        assert abs(m.short_axis_mm - 8.0) <= px, (name, angle, m.short_axis_mm)
        # the short axis is perpendicular to the long axis
        lu = np.subtract(*m.long_axis_ends_lps)
        su = np.subtract(*m.short_axis_ends_lps)
        assert abs(lu @ su) / (np.linalg.norm(lu) * np.linalg.norm(su)) < 0.02
        assert np.allclose(m.center_lps, mid, atol=0.3)


def test_measure_volume_is_exact_on_a_gantry_tilted_stack():
    """A sheared slice axis (gantry tilt 20 degrees): the voxel volume is the in-plane area
    times the gap along the normal, not spacing[2] along the sheared axis."""
    t = math.radians(20.0)
    gap = 1.0  # along the normal
    step = gap / math.cos(t)  # along the sheared slice direction
    d = np.eye(3)
    d[:, 2] = [0.0, math.sin(t), math.cos(t)]
    v = _grid((24, 40, 34), (0.5, 0.5, step), d, origin=(0.0, -8.0, 0.0))
    mid = np.array([8.25, 5.0, 11.5])
    mask = _ellipsoid(v, mid, SEMI)
    m = measure.measure(mask, v)
    assert abs(m.volume_mm3 - TRUE_VOLUME) / TRUE_VOLUME < 0.05, m.volume_mm3
    assert abs(m.long_axis_mm - 12.0) <= 0.5 and abs(m.short_axis_mm - 8.0) <= 0.5
    assert np.allclose(measure.slice_thickness(v), gap)


def test_measure_uneven_slices_use_each_slices_own_thickness():
    v = _grid((5, 10, 10), (1.0, 1.0, 1.0))
    v.slice_positions = np.array([0.0, 1.0, 2.0, 5.0, 8.0])
    assert np.allclose(measure.slice_thickness(v), [1.0, 1.0, 2.0, 3.0, 3.0])
    mask = np.zeros(v.shape, bool)
    mask[3, 2:4, 2:4] = True  # 4 pixels on the 3 mm slice
    assert measure.measure(mask, v).volume_mm3 == pytest.approx(12.0)


def test_density_impression_thresholds():
    v = _grid((9, 20, 20), (1.0, 1.0, 1.0))
    mid = v.index_to_lps(9.5, 9.5, 4)
    mask = _ellipsoid(v, mid, (5.0, 5.0, 3.0))
    for hu, want in ((20, "solid"), (-600, "ground-glass")):
        v.array[:] = -900
        v.array[mask] = hu
        m = measure.measure(mask, v)
        assert m.density == want and m.mean_hu == pytest.approx(hu)
    v.array[:] = -900
    v.array[mask] = -600
    v.array[_ellipsoid(v, mid, (2.5, 2.5, 1.5))] = 30  # a solid core in ground glass
    m = measure.measure(mask, v)
    assert m.density == "part-solid" and 0.1 < m.solid_share < 0.5


def test_measure_warns_when_the_nodule_reaches_the_last_slice():
    v = _grid((4, 20, 20), (1.0, 1.0, 2.0))
    mask = _ellipsoid(v, v.index_to_lps(9.5, 9.5, 3), (4.0, 4.0, 4.0))
    assert any("underestimated" in w for w in measure.measure(mask, v).warnings)


# --------------------------------------------------------------------------- the real slab
@pytest.fixture(scope="module")
def slab():
    from imaging_assist.dicom import load_series, scan

    return load_series(scan(str(need(SLAB))).all_series()[0])


@pytest.fixture(scope="module")
def readers(slab):
    nods = lidc_xml.load_for_volume(need(XML), slab)
    assert len(nods) == 1, [n.id for n in nods]
    return nods[0]


def test_reader_xml_gives_four_readers_and_the_crops_centre(readers, slab):
    import csv

    assert readers.n_readers == 4 and readers.rois_outside == 0
    assert readers.ratings("malignancy") == [5, 5, 5, 4]
    cons = lidc_xml.consensus_mask(readers)
    vols = [measure.measure(m, slab).volume_mm3 for m in readers.masks.values()]
    v_cons = measure.measure(cons, slab).volume_mm3
    assert min(vols) <= v_cons <= max(vols)
    row = next(r for r in csv.DictReader(open(need(LABELS))) if r["file"].endswith("LIDC-IDRI-0001_R_1.nii.gz"))
    ref = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
    assert np.linalg.norm(lidc_xml.centre_lps(cons, slab) - ref) < 1.0
    # the small (< 3 mm) marks are points on slices outside the slab: not grouped here
    msg = lidc_xml.parse(XML)
    assert sum(m.kind == "small" for m in msg.marks) == 9 and msg.n_readers == 4


def test_reader_xml_falls_back_to_z_when_the_sop_uids_differ(slab, readers):
    import copy

    other = copy.copy(slab)
    other.headers = []  # another copy of the images: no SOP UIDs to match
    again = lidc_xml.load_for_volume(XML, other)
    assert len(again) == 1
    for r, m in readers.masks.items():
        assert np.array_equal(again[0].masks[r], m)


def test_reader_xml_errors_are_one_line(tmp_path):
    from imaging_assist.errors import UserError

    bad = tmp_path / "bad.xml"
    bad.write_text("<notlidc/>")
    with pytest.raises(UserError, match="not a LIDC reader XML"):
        lidc_xml.parse(bad)
    bad.write_text("<LidcReadMessage")
    with pytest.raises(UserError, match="not a readable LIDC"):
        lidc_xml.parse(bad)
