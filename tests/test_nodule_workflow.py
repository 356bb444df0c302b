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


def test_measure_warns_when_the_nodule_reaches_the_edge_of_the_image():
    """A nodule cut by the image's first column was measured short with no warning (only the
    first and last slices were checked); inside the image there is none."""
    v = _grid((12, 20, 20), (1.0, 1.0, 1.0))
    cut = _ellipsoid(v, v.index_to_lps(0.0, 9.5, 6), (4.0, 3.0, 3.0))
    assert any("edge of the image" in w for w in measure.measure(cut, v).warnings)
    inside = _ellipsoid(v, v.index_to_lps(9.5, 9.5, 6), (4.0, 3.0, 3.0))
    assert not measure.measure(inside, v).warnings


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


def test_reader_xml_errors_are_one_line(tmp_path, slab):
    import copy

    from imaging_assist.errors import UserError

    other = copy.copy(slab)
    other.series_uid = "1.2.3.4"  # e.g. the demo's cropped copy: the pixel contours do not apply
    with pytest.raises(UserError, match="not 1.2.3.4"):
        lidc_xml.load_for_volume(XML, other)

    bad = tmp_path / "bad.xml"
    bad.write_text("<notlidc/>")
    with pytest.raises(UserError, match="not a LIDC reader XML"):
        lidc_xml.parse(bad)
    bad.write_text("<LidcReadMessage")
    with pytest.raises(UserError, match="not a readable LIDC"):
        lidc_xml.parse(bad)


# --------------------------------------------------------------------------- click to result
def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def consensus(slab, readers):
    cons = lidc_xml.consensus_mask(readers)
    vols = sorted(measure.measure(m, slab).volume_mm3 for m in readers.masks.values())
    return cons, lidc_xml.centre_lps(cons, slab), vols


@pytest.fixture(scope="module")
def at_centre(slab, consensus):
    from imaging_assist.nodules.analysis import analyze_at

    return analyze_at(slab, consensus[1], "N1", explain=True)


def test_click_at_the_readers_centre_segments_their_nodule(slab, consensus, at_centre, capsys):
    cons, centre, vols = consensus
    r = at_centre
    assert r.found, r.reason
    dice = _dice(r.mask, cons)
    with capsys.disabled():  # the figure the issue asks to report
        print(f"\nLIDC-IDRI-0001 slab: Dice vs the readers' >=2-of-4 consensus {dice:.3f}; volume "
              f"{r.volume_mm3:.0f} mm3 (readers {vols[0]:.0f}-{vols[-1]:.0f}, consensus "
              f"{measure.measure(cons, slab).volume_mm3:.0f}); {r.long_axis_mm:.1f} x {r.short_axis_mm:.1f} mm; "
              f"{r.mean_hu:.0f} HU {r.density}; p_malignant {r.p_malignant:.3f} (threshold {r.threshold}); "
              f"{r.timings['total_s']:.2f} s")
    assert dice >= 0.7
    assert vols[0] <= r.volume_mm3 <= vols[-1]
    assert r.mask.shape == slab.shape and r.mask.dtype == bool
    assert np.linalg.norm(np.subtract(r.center_lps, centre)) < 3.0
    # the heat map is on the series grid, 0..1, and inside the models' 32 mm window
    assert r.heatmap.shape == slab.shape and 0.0 <= r.heatmap.min() and r.heatmap.max() == pytest.approx(1.0)
    ijk = np.argwhere(r.heatmap > 0)[:, ::-1]
    lps = ijk @ slab.affine[:3, :3].T + slab.affine[:3, 3]
    assert np.abs(lps - np.asarray(r.window_center_lps)).max() <= 16.5
    assert 0.0 <= r.p_malignant <= 1.0 and r.threshold is not None and r.decision["labels"]
    d = r.to_dict()
    assert d["found"] and "mask" not in d and d["volume_mm3"] == pytest.approx(r.volume_mm3, abs=1e-3)


def test_the_same_nodule_clicked_twice_is_said_on_both(slab, consensus):
    """Two clicks on one nodule: the second's label overwrites the first's voxels in the label
    map and SEG; only the second said so, the first's segment went empty without a word."""
    from imaging_assist.nodules.run import analyze_points

    c = consensus[1]
    run = analyze_points(slab, [("A", c), ("B", np.asarray(c) + [0.5, 0.0, 0.0])], explain=False)
    a, b = run.nodules
    assert a.found and b.found
    assert any("overlaps nodule B" in w for w in a.warnings), a.warnings
    assert any("overlaps nodule A" in w for w in b.warnings), b.warnings


def test_same_result_from_the_axial_coronal_and_sagittal_planes(slab, consensus, at_centre):
    """The click's LPS point as each plane gives it (its own slice, its pixel coordinates):
    the same nodule, the same measurements."""
    from imaging_assist.layers import standard_planes
    from imaging_assist.nodules.analysis import analyze_at

    cons, centre, _ = consensus
    kji = np.linalg.solve(slab.affine, np.r_[centre, 1.0])[:3][::-1]
    kinds = []
    for plane in standard_planes(slab.direction):
        u, v, idx = plane.from_voxel(kji, slab.shape)
        k, j, i = plane.to_voxel(u, v, round(idx), slab.shape)  # the click lands on a shown slice
        point = slab.index_to_lps(i, j, k)
        r = analyze_at(slab, point, "N1", explain=False)
        assert r.found, (plane.name, r.reason)
        kinds.append(plane.name)
        assert _dice(r.mask, at_centre.mask) >= 0.95, plane.name
        assert r.volume_mm3 == pytest.approx(at_centre.volume_mm3, rel=0.03), plane.name
        assert r.long_axis_mm == pytest.approx(at_centre.long_axis_mm, abs=1.5), plane.name
        assert _dice(r.mask, cons) >= 0.7, plane.name
    assert sorted(kinds) == ["axial", "coronal", "sagittal"]


@pytest.mark.parametrize("where,ijk", [("lung parenchyma", (150, 250, 7)), ("outside the body", (20, 20, 7))])
def test_click_without_a_nodule_finds_none(slab, where, ijk):
    from imaging_assist.nodules.analysis import analyze_at

    i, j, k = ijk
    assert slab.array[k, j, i] < (-700 if where == "lung parenchyma" else -950), "not the tissue meant"
    r = analyze_at(slab, slab.index_to_lps(i, j, k), "X")
    assert not r.found and r.reason.startswith("no nodule found at this point"), r.reason
    assert r.mask is None and r.heatmap is None and r.p_malignant is None and r.volume_mm3 is None


def test_click_beside_a_vessel_is_not_made_a_nodule(slab):
    """4 mm from a vessel in the right lung the segmenter outlines the vessel; the elongation rule
    (beyond 99.5 % of LIDC nodules) refuses it."""
    from imaging_assist.nodules.analysis import analyze_at

    r = analyze_at(slab, [-60.0, 40.0, -115.0], "V")
    assert not r.found and "elongated" in r.reason and r.mask is None, r.reason


def test_vessel_cut_lengthwise_is_refused_by_its_axis_ratio(slab):
    """A click on a vessel deep in the left lung (from scripts/check_nodule_clicks.py): the
    segmenter outlines a vessel segment branching through the window (3D elongation about 2, which
    the elongation rule lets through) that is 29 x 7 mm on its slice of largest area; no LIDC
    nodule is more than 2.61 times longer than wide, so it is refused."""
    from imaging_assist.nodules.analysis import MAX_AXIS_RATIO, analyze_at

    r = analyze_at(slab, [-47.2, 7.6, -105.0], "V")
    assert not r.found and "longer than wide" in r.reason and r.mask is None and r.p_malignant is None, r.reason
    ratio = float(r.reason.split(" times longer")[0].split()[-1])
    assert ratio > MAX_AXIS_RATIO


def test_unsure_outline_on_a_vessel_is_flagged_and_its_decision_withheld(slab):
    """A click beside a vessel deep in the right lung (scripts/check_nodule_clicks.py): the segmenter
    outlines a vessel segment that passes the shape rules and that neither model's OOD statistics
    flag, but its mean probability (0.78) is below the card's confidence threshold (0.83, the
    validation nodules' conformal threshold): flagged, decision withheld, said in a warning."""
    from imaging_assist.nodules import models as nm
    from imaging_assist.nodules.analysis import analyze_at

    r = analyze_at(slab, [-38.7, 26.6, -110.0], "V", explain=False)
    assert r.found
    assert not r.ood["segmentation"]["flagged"] and r.ood["score"] <= r.ood["threshold"]  # not the Mahalanobis
    conf = r.ood["segmentation_confidence"]
    assert conf["threshold"] == nm.min_confidence() and conf["mean_probability"] < conf["threshold"] - 0.02
    assert r.ood["flagged"] and any("less sure of this outline" in x for x in r.ood["reasons"])
    assert r.decision["withheld"] and any("less sure of this outline" in w for w in r.warnings)
    assert "unsure this is a nodule" in r.decision["withheld_reason"]
    assert not any("outside what the models were trained on" in w for w in r.warnings)  # not an OOD window


def test_axis_ratio_rule_thresholds():
    from imaging_assist.nodules.analysis import MAX_AXIS_RATIO, WARN_AXIS_RATIO, axis_refusal

    assert axis_refusal(26.1, 10.0)[0] is None  # the most elongated LIDC nodule: 2.61
    assert axis_refusal(29.4, 7.4)[0].startswith("no nodule found at this point")
    assert axis_refusal(5.0, 0.0)[0] is not None  # a line one voxel wide
    assert axis_refusal(10.0, 10.0) == (None, None)
    assert axis_refusal(20.0, 10.0)[1].startswith("on its slice of largest area the segmented structure is 2.0 times")
    # the rule's numbers come from scripts/check_nodule_shape.py on the 869 LIDC masks:
    # largest ratio 2.606, 95th percentile 1.883
    assert 2.606 < MAX_AXIS_RATIO < 3.0 and 1.883 <= WARN_AXIS_RATIO < 2.0


def test_the_most_elongated_test_nodules_are_still_found():
    """The axis-ratio and elongation rules must not refuse real nodules: the eight test-split LIDC
    crops whose reference masks are the longest for their width, clicked at their centre, are found
    (all 260 validation and test nodules were, when the rule was added)."""
    import csv

    from imaging_assist.nodules.analysis import analyze_at
    from imaging_assist.nodules.window import volume_from_nifti

    vois = need(SHARED / "ct" / "lidc_nodule_vois")
    from imaging_assist.models.registry import project_weights_dir

    with (project_weights_dir() / "ct-nodule-seg" / "predictions.csv").open() as fh:
        test_files = {r["file"] for r in csv.DictReader(fh) if r["split"] == "test"}
    with (vois / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["file"] in test_files]
    ratios = []
    for r in rows:
        m = volume_from_nifti(vois / r["mask"])
        mm = measure.measure(np.asarray(m.array) > 0, m)
        ratios.append(mm.long_axis_mm / mm.short_axis_mm)
    assert len(rows) == 134
    for i in np.argsort(ratios)[-8:]:
        r = rows[i]
        res = analyze_at(volume_from_nifti(vois / r["file"]),
                         [float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])], "N", explain=False)
        assert res.found, (r["file"], round(ratios[i], 2), res.reason)


def test_non_ct_and_outside_points_are_refused_with_the_reason(slab, consensus):
    import copy

    from imaging_assist.nodules.analysis import analyze_at

    mr = copy.copy(slab)
    mr.modality, mr.units = "MR", ""
    r = analyze_at(mr, consensus[1], "N1")
    assert not r.found and "refused" in r.reason and "MR" in r.reason and r.mask is None
    r = analyze_at(slab, [0.0, 0.0, 500.0], "N1")
    assert not r.found and "outside the series" in r.reason
    r = analyze_at(slab, [float("nan"), 0.0, 0.0], "N1")
    assert not r.found and "finite" in r.reason
    # values that are not HU (a RescaleSlope of 1000): refused, not measured as "978,000 HU"
    scaled = copy.copy(slab)
    scaled.array = slab.array.astype(np.float32) * 1000
    r = analyze_at(scaled, consensus[1], "N1")
    assert not r.found and "not Hounsfield units" in r.reason and r.mask is None, r.reason
    # a degenerate geometry (every slice oriented across the stack): one line, not LinAlgError
    flat = copy.copy(slab)
    flat.direction = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, -1.0]])  # columns 2, 3 equal
    r = analyze_at(flat, consensus[1], "N1")
    assert not r.found and "geometry is unusable" in r.reason, r.reason


# --------------------------------------------------------------------------- CLI and exports
def _cli(args, capsys):
    from imaging_assist.cli import main

    rc = main(args)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return rc, out


def test_cli_analyze_at_on_the_dicom_slab_writes_seg_and_sr(tmp_path, consensus, capsys):
    import json

    import highdicom as hd
    import nibabel as nib
    import pydicom

    from test_export_dicom import dciodvfy_errors

    cons, centre, _ = consensus
    pts = tmp_path / "points.csv"
    pts.write_text("x,y,z,id\n" + ",".join(f"{v:.3f}" for v in (-60.531, 4.081, -115.0))
                   + ",lung\n")  # voxel (150, 250, 7): lung parenchyma
    out = tmp_path / "out"
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-malignancy", "--at", ",".join(f"{v:.3f}" for v in centre),
                  "--points", str(pts), "--out", str(out), "--dicom"], capsys)
    assert rc == 0, o.err
    doc = json.loads((out / "results.json").read_text())
    (item,) = doc["items"]
    assert item["task"] == "nodule" and [n["id"] for n in item["nodules"]] == ["N1", "lung"]
    big, lung = item["nodules"]
    assert big["found"] and not lung["found"] and "no nodule found" in lung["reason"]
    # the console line has the threshold's test-split figures, as an image classifier's has, and
    # what qualifies the numbers (a volume that is a lower bound at the window's edge) is said there
    line = next(x for x in o.err.splitlines() if ": N1: " in x and "malignant" in x)
    assert "not pathology) [" in line and "sensitivity" in line and "specificity" in line, line
    assert big["warnings"] and any("window" in w for w in big["warnings"])
    for w in big["warnings"]:
        assert f": N1: {w}" in o.err and any(x.startswith("warning: ") and x.endswith(f": N1: {w}")
                                              for x in o.err.splitlines()), w
    lm = np.transpose(np.asarray(nib.load(out / item["label_map"]).dataobj), (2, 1, 0))
    assert lm.shape == (16, 512, 512) and _dice(lm == 1, cons) >= 0.7
    assert item["labels"] == {"0": "background", "1": "nodule N1"}
    assert (out / "report.pdf").is_file()
    import shutil
    import subprocess
    assert shutil.which("pdftotext"), "pdftotext (poppler-utils) is needed: scripts/test installs it"
    text = subprocess.run(["pdftotext", str(out / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    # the nodule's view: the slice with the overlay, and the nodule zoomed with its calipers
    field = max(40.0, 2.5 * big["long_axis_mm"])
    assert f"zoomed to {field:.0f} mm: outline, long and short axis" in text
    segs = sorted((out / "dicom").glob("*nodules_SEG.dcm"))
    srs = sorted((out / "dicom").glob("*_SR.dcm"))
    assert len(segs) == 1 and len(srs) == 1
    seg = hd.seg.segread(segs[0])
    (desc,) = seg.SegmentSequence
    assert desc.TrackingID == "nodule N1" and desc.TrackingUID == big["tracking_uid"]
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    m = seg.get_volume(combine_segments=True) if hasattr(seg, "get_volume") else None
    assert m is None or int(np.asarray(m.array).astype(bool).sum()) == int((lm == 1).sum())
    sr = pydicom.dcmread(srs[0])
    text = str(sr)
    assert big["tracking_uid"] in text and "nodule N1" in text and "Long axis" in text
    assert "Probability of cancer" in text and "cubic millimeter" in text
    for f in segs + srs:
        assert dciodvfy_errors(f) == [], f
    # the long and short axis as lines on the slice of largest area (planar ROI groups of the
    # same tracking id/UID): read back and placed on the slab where the analysis measured them
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.dicom.result_objects import read_sr
    from imaging_assist.dicom.sr_regions import place_regions
    vol = load_series(scan(str(SLAB)).image_series()[0])
    layer, warns = place_regions(read_sr(str(srs[0])), vol)
    assert warns == [] and [s.label for s in layer.shapes] == [
        ["nodule N1", f"Long axis {big['long_axis_mm']:.1f} mm"], ["nodule N1", f"Short axis {big['short_axis_mm']:.1f} mm"]]
    k = big["measurements"]["largest_slice"]
    for s, ends in zip(layer.shapes, (big["measurements"]["long_axis_ends_lps"], big["measurements"]["short_axis_ends_lps"])):
        assert np.allclose(s.points[:, 0], k, atol=1e-3)
        want = [np.linalg.solve(vol.affine[:3, :3], np.asarray(p) - vol.origin)[::-1] for p in ends]
        assert np.allclose(s.points, want, atol=0.01)


def test_cli_nifti_crop_without_a_point_uses_its_centre(tmp_path, capsys):
    import json

    import nibabel as nib

    crop = need(SHARED / "ct" / "lidc_nodule_vois" / "images" / "LIDC-IDRI-0001_R_1.nii.gz")
    ref = nib.load(SHARED / "ct" / "lidc_nodule_vois" / "masks" / "LIDC-IDRI-0001_R_1.nii.gz")
    out = tmp_path / "out"
    rc, o = _cli(["analyze", str(crop), "--model", "ct-nodule-seg", "--out", str(out)], capsys)
    assert rc == 0, o.err
    (item,) = json.loads((out / "results.json").read_text())["items"]
    assert item["kind"] == "nifti" and item["nodules"][0]["found"], item["nodules"][0]["reason"]
    assert any("centre" in w for w in item["warnings"])
    lm = nib.load(out / item["label_map"])
    inp = nib.load(crop)
    # on the input grid: same shape and affine
    assert lm.shape == inp.shape and np.allclose(lm.affine, inp.affine, atol=1e-4)
    got = np.asarray(lm.dataobj) > 0
    d = _dice(got, np.asarray(ref.dataobj) > 0)
    assert d >= 0.7, d


def test_cli_dicom_without_a_point_is_a_one_line_error(tmp_path, capsys):
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-seg", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and o.err.count("\n") == 1 and "--at X,Y,Z" in o.err
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-seg", "--at", "1,2", "--out",
                  str(tmp_path / "o2")], capsys)
    assert rc == 2 and "three numbers" in o.err


@pytest.mark.parametrize("model_id", ["ct-nodule-seg", "ct-nodule-malignancy"])
def test_the_whole_series_pipeline_refuses_a_window_model(slab, model_id):
    """run_model would shrink a whole CT to the 32 mm window: refused with what to do instead."""
    from imaging_assist.errors import UserError
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry

    model = load_model(Registry().get(model_id).card)
    with pytest.raises(UserError, match="window around a point"):
        run_model(model, slab, RunOptions(device="cpu"))
