"""The regions of an SR's measurement groups, placed on the series they refer to
(imaging_assist.dicom.sr_regions): our own measurement SR comes back on the pixels it was
drawn on; SCOORD3D regions land on the right voxels of anisotropic, oblique and unevenly
spaced series; what cannot be drawn (another frame of reference, oblique to the slices, an
ellipsoid, outside the image, too many points) is said or left to the list, never guessed."""

import copy
import math
import warnings

import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from _synth import write_ct_series
from test_annotations_sr import _items
from test_result_objects import _sources, _sr, hd

from imaging_assist.dicom import load_series, scan
from imaging_assist.dicom.result_objects import read_sr
from imaging_assist.dicom.sr_regions import MAX_REGION_POINTS, own_measurement_regions, place_regions
from imaging_assist.export.sr_measurements import write_measurement_sr
from imaging_assist.layers import Plane, standard_planes
from imaging_assist.measure import Measurement


def _by_title(layer):
    return {s.label[0]: s for s in layer.shapes}


# ------------------------------------------------------------------ our own measurement SR
@pytest.fixture(scope="module")
def own_sr(ct_volume, tmp_path_factory):
    k, items = _items(ct_volume)
    path = write_measurement_sr(ct_volume, items, tmp_path_factory.mktemp("own") / "m.dcm", warnings=[])
    return k, items, read_sr(str(path))


def test_own_measurement_sr_comes_back_on_the_pixels_it_was_drawn_on(ct_volume, own_sr):
    k, items, report = own_sr
    layer, warns = place_regions(report, ct_volume, "m")
    assert warns == []
    shapes = _by_title(layer)
    # every item on the native plane is drawn; the reformatted one was not exported
    assert len(layer.shapes) == 7
    ruler = shapes[f"viewer ruler {items[5].id}"]
    assert not ruler.closed and np.allclose(ruler.points, [(k, v, u) for u, v in items[5].points], atol=1e-4)
    assert ruler.label[1] == f"Length {items[5].result['length']:.1f} mm"
    poly = shapes[f"viewer polygon {items[0].id}"]
    assert poly.kind == "path" and poly.closed
    assert np.allclose(poly.points, [(k, v, u) for u, v in items[0].points], atol=1e-4)
    free = shapes[f"viewer freehand {items[1].id}"]
    assert np.allclose(free.points, [(k + 1, v, u) for u, v in items[1].points], atol=1e-4)
    assert free.closed
    angle = shapes[f"viewer angle {items[2].id}"]
    assert not angle.closed and np.allclose(angle.points, [(k, v, u) for u, v in items[2].points], atol=1e-4)
    arrow = shapes[f"viewer arrow {items[3].id}"]  # written tail first, tip last
    assert not arrow.closed and np.allclose(arrow.points[::-1], [(k, v, u) for u, v in items[3].points], atol=1e-4)
    note = shapes[f"viewer text {items[4].id}"]
    assert note.kind == "points" and np.allclose(note.points, [(k, 200, 30)], atol=1e-4)
    ell = shapes[f"viewer ellipse {items[6].id}"]
    (u0, v0), (u1, v1) = items[6].points
    assert ell.closed and len(ell.points) == 64
    assert np.allclose(ell.points[:, 0], k)
    assert ell.points[:, 2].min() == pytest.approx(u0, abs=1e-3) and ell.points[:, 2].max() == pytest.approx(u1, abs=1e-3)
    assert ell.points[:, 1].min() == pytest.approx(v0, abs=0.02) and ell.points[:, 1].max() == pytest.approx(v1, abs=0.02)
    # the label: the group, then its measurements with their units
    r = items[0].result
    assert poly.label[0] == f"viewer polygon {items[0].id}"
    assert float(r["min"]).is_integer() and float(r["max"]).is_integer()  # HU of a CT: whole numbers
    assert poly.label[1:] == [f"Mean {r['mean']:.1f} HU", f"SD {r['sd']:.1f} HU", f"Min {r['min']:.0f} HU",
                              f"Max {r['max']:.0f} HU", f"Area {r['area_mm2']:.1f} mm²"]
    assert arrow.label == [f"viewer arrow {items[3].id}", "calcification"]  # the note, without its name


def test_regions_that_are_the_readers_own_measurements_are_found(ct_volume, own_sr):
    """An SR exported from the reader's measurements, reopened beside them: each of its regions
    is matched to the measurement it came from (kind, slice, extent; ids change between
    sessions), and only while the measurement is where it was exported."""
    k, items, report = own_sr
    layer, _ = place_regions(report, ct_volume, "m")
    exported = [m for m in items if m.axis == 0]
    again = [Measurement(m.kind, m.points, axis=m.axis, index=m.index, text=m.text) for m in items]  # new ids
    assert all(a.id != m.id for a, m in zip(again, items))
    assert sorted(own_measurement_regions(layer, again)) == list(range(len(layer.shapes))) == list(range(len(exported)))
    titles = [s.label[0].split()[1] for s in layer.shapes]
    moved = [Measurement(m.kind, [(u + 1.0, v) for u, v in m.points] if m.kind == "ruler" else m.points,
                         axis=m.axis, index=m.index) for m in again]
    assert [layer.shapes[n].label[0].split()[1] for n in range(len(titles))
            if n not in own_measurement_regions(layer, moved)] == ["ruler"]
    other_slice = [Measurement(m.kind, m.points, index=m.index + 1) for m in again]
    assert own_measurement_regions(layer, other_slice) == []
    other_kind = [Measurement("rectangle" if m.kind == "ellipse" else m.kind, m.points, index=m.index)
                  for m in again]
    assert "ellipse" not in [titles[n] for n in own_measurement_regions(layer, other_kind)]
    assert own_measurement_regions(layer, []) == [] and own_measurement_regions(None, again) == []
    # a region another tool wrote (not our "viewer KIND ID" name) is never taken for the reader's
    for s in layer.shapes:
        s.label = ["Measurement group 1"] + s.label[1:]
    assert own_measurement_regions(layer, again) == []


def test_shapes_show_on_their_own_slice_only(ct_volume, own_sr):
    k, items, report = own_sr
    layer, _ = place_regions(report, ct_volume)
    shape3 = ct_volume.array.shape[:3]
    native = Plane.native()
    on_k = {s.label[0] for s, _ in layer.near(native, k, shape3)}
    assert f"viewer polygon {items[0].id}" in on_k and f"viewer freehand {items[1].id}" not in on_k
    assert {s.label[0] for s, _ in layer.near(native, k + 1, shape3)} == {f"viewer freehand {items[1].id}"}
    assert layer.near(native, k + 2, shape3) == []
    s, uv = next((s, uv) for s, uv in layer.near(native, k, shape3) if s.label[0].startswith("viewer polygon"))
    assert np.allclose(uv, items[0].points, atol=1e-4)  # (u, v) = (column, row) on the native plane
    # a region drawn on an image shows on that image, not where a reformatted plane passes
    # through its points (the note's point included)
    coronal = standard_planes(ct_volume.direction)[1]
    j = 200 if coronal.axis == 1 else 30  # the note at (column 30, row 200)
    assert layer.near(coronal, j, shape3) == []
    layer.visible = False
    assert layer.near(native, k, shape3) == []


# ------------------------------------------------------------------ SCOORD3D on real geometry
def test_3d_polygon_of_another_tool_lands_on_its_slice(ct_volume):
    vol = ct_volume
    src = _sources(vol)
    report = read_sr(_sr(vol, src, 30))
    layer, warns = place_regions(report, vol, "measurements")
    assert warns == [] and layer.name == "measurements: regions"
    (shape,) = layer.shapes
    assert shape.closed and shape.label == ["lesion 1", "Finding: Lesion", "Area 123.5 mm²", "Finding: Pneumonia"]
    assert np.allclose(shape.points, [(30, j, i) for i, j in ((100, 100), (200, 100), (200, 200))], atol=1e-3)


def _series(tmp_path, positions, iop=(1, 0, 0, 0, 1, 0), spacing=(0.5, 0.7), rows=40, cols=30):
    write_ct_series(tmp_path / "ct", positions, iop=iop, rows=rows, cols=cols, spacing=spacing,
                    extra={"FrameOfReferenceUID": generate_uid(), "PatientSex": "O", "PatientBirthDate": "",
                           "ReferringPhysicianName": "", "AccessionNumber": ""})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_series(scan(str(tmp_path / "ct")).image_series()[0])


def _sr3d(vol, src, k, lps_points, graphic_type=hd.sr.GraphicTypeValues3D.POLYGON, for_uid=None):
    """A TID 1500 report with one planar ROI group whose 3D region is ``lps_points``."""
    pts = np.asarray(lps_points, float)
    if graphic_type == hd.sr.GraphicTypeValues3D.POLYGON:
        pts = np.vstack([pts, pts[:1]])
    region = hd.sr.ImageRegion3D(graphic_type=graphic_type, graphic_data=pts,
                                 frame_of_reference_uid=for_uid or src[k].FrameOfReferenceUID)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="roi"),
        referenced_region=region,
        measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=10.0, unit=codes.UCUM.SquareMillimeter)])
    obs = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Doe^J")))
    report = hd.sr.MeasurementReport(observation_context=obs, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=[group])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hd.sr.Comprehensive3DSR(evidence=[src[k]], content=report[0], series_number=302,
                                       series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(),
                                       instance_number=1, manufacturer="Other Tool", series_description="m")


def _oblique(n=8, step=1.5):
    a, b = math.radians(20), 0.3
    row = (math.cos(a), math.sin(a), 0.0)
    col = (-math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), -math.sin(b))
    normal = np.cross(row, col)
    return [tuple(np.array([-20.0, 10.0, 5.0]) + k * step * normal) for k in range(n)], row + col


@pytest.mark.parametrize("geometry", ["anisotropic", "flipped", "oblique", "uneven"])
def test_3d_region_lands_on_the_voxels_it_names(tmp_path, geometry):
    iop = (1, 0, 0, 0, 1, 0)
    if geometry == "anisotropic":
        positions = [(0.0, 0.0, 2.5 * k) for k in range(8)]
    elif geometry == "flipped":  # slices running from head to feet, rows running to patient anterior
        positions = [(0.0, 0.0, -1.0 * k) for k in range(8)]
        iop = (-1, 0, 0, 0, -1, 0)
    elif geometry == "oblique":
        positions, iop = _oblique()
    else:  # uneven gaps: the slices' own positions, not the mean spacing
        positions = [(0.0, 0.0, z) for z in (0.0, 1.0, 2.0, 4.0, 5.0, 8.0, 9.0, 10.0)]
    vol = _series(tmp_path, positions, iop=iop)
    src = _sources(vol)
    k = 5
    ij = [(3.0, 4.0), (20.0, 4.0), (20.0, 30.0), (3.0, 30.0)]
    ipp = np.array([float(v) for v in vol.headers[k].get("ImagePositionPatient")])  # slice k as loaded (sorted)
    d = np.asarray(vol.direction, float)
    # each point from the slice's own position (exact with uneven gaps), column i then row j
    lps = [ipp + d[:, 0] * i * vol.spacing[0] + d[:, 1] * j * vol.spacing[1] for i, j in ij]
    report = read_sr(_sr3d(vol, src, k, lps))
    layer, warns = place_regions(report, vol)
    assert warns == []
    (shape,) = layer.shapes
    assert np.allclose(shape.points, [(k, j, i) for i, j in ij], atol=1e-3)
    assert layer.near(Plane.native(), k, vol.array.shape[:3]) and not layer.near(Plane.native(), k - 1, vol.array.shape[:3])


def test_what_cannot_be_drawn_is_said_or_left_to_the_list(tmp_path):
    vol = _series(tmp_path, [(0.0, 0.0, 1.0 * k) for k in range(8)])
    src = _sources(vol)

    def at(i, j, k):
        return vol.index_to_lps(i, j, k)

    # another frame of reference: no position in this series (the list says "refers to no image")
    other = read_sr(_sr3d(vol, src, 2, [at(1, 1, 2), at(5, 1, 2), at(5, 5, 2)], for_uid=generate_uid()))
    assert place_regions(other, vol) == (None, [])
    # oblique to every plane of the volume
    tilted = read_sr(_sr3d(vol, src, 2, [at(1, 1, 1), at(9, 1, 3), at(9, 9, 5)]))
    layer, warns = place_regions(tilted, vol)
    assert layer is None and len(warns) == 1 and "does not lie in a plane" in warns[0]
    # an ellipsoid is a solid
    ds = _sr3d(vol, src, 2, [at(1, 1, 2), at(5, 1, 2), at(5, 5, 2)])  # highdicom writes no ellipsoid ROI
    sc = _first_scoord(ds)
    sc.GraphicType = "ELLIPSOID"
    sc.GraphicData = [float(v) for p in (at(1, 5, 3), at(9, 5, 3), at(5, 1, 3), at(5, 9, 3), at(5, 5, 2), at(5, 5, 4))
                      for v in p]
    layer, warns = place_regions(read_sr(ds), vol)
    assert layer is None and len(warns) == 1 and "ellipsoid" in warns[0]
    # far outside the image
    away = read_sr(_sr3d(vol, src, 2, [at(500, 500, 2), at(600, 500, 2), at(600, 600, 2)]))
    layer, warns = place_regions(away, vol)
    assert layer is None and len(warns) == 1 and "outside the image" in warns[0]
    assert all("\n" not in w for w in warns)


def _first_scoord(ds):
    stack = list(ds.ContentSequence)
    while stack:
        it = stack.pop()
        if str(it.get("ValueType")) in ("SCOORD", "SCOORD3D"):
            return it
        stack.extend(it.get("ContentSequence") or [])
    raise AssertionError("no SCOORD")


def test_2d_region_on_an_image_of_another_series_is_not_drawn(ct_volume, own_sr, tmp_path):
    _, _, report = own_sr
    for it in report.items:
        for r in it.regions:
            r.references = [("1.2.3.4.5", None)]
        it.references = [("1.2.3.4.5", None)]
    assert place_regions(report, ct_volume) == (None, [])


def test_hostile_region_data_never_raise(ct_volume, tmp_path):
    """Mutated coordinates: each SR reads and places without a traceback, with one-line
    warnings, and draws nothing."""
    vol = ct_volume
    src = _sources(vol)
    base = _sr(vol, src, 30)
    rng = np.random.default_rng(0)
    cases = {"nan": [float("nan")] * 9, "extreme": [1e308, -1e308, 1e308] * 3, "huge": [1e30] * 9,
             "count": [1.0] * 7, "empty": [], "one": [1.0, 2.0, 3.0],
             "many": list(rng.uniform(0, 100, 3 * (MAX_REGION_POINTS + 3)))}
    for name, data in cases.items():
        ds = copy.deepcopy(base)
        sc = _first_scoord(ds)
        sc.GraphicData = data
        try:
            report = read_sr(ds)
        except Exception as e:  # a one-line refusal is fine
            assert "\n" not in str(e), name
            continue
        layer, warns = place_regions(report, vol)
        assert all("\n" not in w for w in warns), name
        if layer is not None:
            for s in layer.shapes:
                assert np.all(np.isfinite(s.points)), name
                assert len(s.points) <= MAX_REGION_POINTS, name
        assert layer is None, name  # none of them is a region on this image
        if name == "many":
            assert any(f"over {MAX_REGION_POINTS}" in w for w in warns)
    # an unknown graphic type places nothing and is said by the reader
    ds = copy.deepcopy(base)
    _first_scoord(ds).GraphicType = "BLOB"
    report = read_sr(ds)
    assert place_regions(report, vol)[0] is None
    assert any("graphic type BLOB" in w for w in report.warnings)


def test_region_under_its_measurement_as_ohif_writes_it(ct_volume, tmp_path):
    """OHIF (dcmjs) puts a length's SCOORD under the NUM item (INFERRED FROM) instead of in its
    group: the region is found there and drawn the same."""
    import pydicom

    k = 40
    ruler = Measurement("ruler", [(100.0, 200.0), (180.0, 230.0)], index=k)
    ruler.compute_on(ct_volume)
    path = write_measurement_sr(ct_volume, [ruler], tmp_path / "r.dcm", warnings=[])
    ds = pydicom.dcmread(path)
    stack, group = list(ds.ContentSequence), None
    while stack and group is None:
        it = stack.pop()
        kids = list(it.get("ContentSequence") or [])
        if any(str(c.get("ValueType")) == "SCOORD" for c in kids):
            group = it
        stack.extend(kids)
    region = next(c for c in group.ContentSequence if str(c.get("ValueType")) == "SCOORD")
    num = next(c for c in group.ContentSequence if str(c.get("ValueType")) == "NUM")
    group.ContentSequence = [c for c in group.ContentSequence if c is not region]
    region.RelationshipType = "INFERRED FROM"
    num.ContentSequence = list(num.get("ContentSequence") or []) + [region]
    layer, warns = place_regions(read_sr(ds), ct_volume)
    assert warns == []
    (shape,) = layer.shapes
    assert np.allclose(shape.points, [(k, v, u) for u, v in ruler.points], atol=1e-4)
    assert shape.label[1] == f"Length {ruler.result['length']:.1f} mm"


def test_shape_in_plane_agrees_with_plane_from_voxel():
    from imaging_assist.layers import Shape
    rng = np.random.default_rng(1)
    shape3 = (20, 30, 40)
    pts = np.column_stack([np.full(50, 7.0), rng.uniform(0, 29, 50), rng.uniform(0, 39, 50)])
    s = Shape(pts)
    for flip_h in (False, True):
        for flip_v in (False, True):
            for axis, h, v in ((0, 2, 1), (1, 2, 0), (2, 1, 0)):
                plane = Plane(axis, h, v, flip_h, flip_v)
                index = int(pts[0, axis]) if axis == 0 else 0
                got = s.in_plane(plane, index, shape3, tolerance=1e9)
                want = np.array([plane.from_voxel(q, shape3)[:2] for q in pts])
                assert np.allclose(got, want)


def test_volume_lps_to_index_inverts_index_to_lps(tmp_path):
    positions, iop = _oblique()
    vol = _series(tmp_path, positions, iop=iop)
    ijk = np.array([[3.0, 4.0, 5.0], [20.5, 30.25, 0.0], [0.0, 0.0, 7.0]])
    lps = np.array([vol.index_to_lps(*p) for p in ijk])
    assert np.allclose(vol.lps_to_index(lps), ijk, atol=1e-9)
    assert np.allclose(vol.lps_to_index(lps[0]), ijk[0], atol=1e-9) and vol.lps_to_index(lps[0]).shape == (3,)
