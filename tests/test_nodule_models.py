"""CT nodule models (issue 21, part 1): the window geometry, NIfTI RAS -> LPS, crop-vs-slab
equivalence on LIDC-IDRI-0001, the shipped weights and their card numbers recomputed from
``predictions.csv``.

Synthetic volumes (tilted, flipped, anisotropic) are built here with a bright ball at a known
LPS point; the real data are ``ct/lidc_nodule_vois`` and the ``ct/lidc_idri_0001_slab`` DICOM.
"""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest

from conftest import SHARED, need
from imaging_assist.nodules import window as W
from imaging_assist.volume import Volume

VOIS = SHARED / "ct" / "lidc_nodule_vois"
SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
R1 = "LIDC-IDRI-0001_R_1"
R1_LPS = np.array([56.20840547, 86.34341278, -115.8675792])  # labels.csv coordX/Y/Z


def _rot(ax, deg):
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    m = np.eye(3)
    a, b = [i for i in range(3) if i != ax]
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def _ball_volume(shape, spacing, direction, origin, centre, radius=4.0):
    v = Volume(array=np.full(shape, -900.0, np.float32), spacing=tuple(spacing), origin=tuple(origin),
               direction=np.asarray(direction, float), modality="CT", units="HU")
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    pts = (v.affine @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]))[:3].T
    d = np.linalg.norm(pts - centre, axis=1).reshape(shape)
    # smooth edge (1 mm ramp) so trilinear sampling has a well-defined centroid
    v.array = (-900.0 + 1000.0 * np.clip(radius + 0.5 - d, 0, 1)).astype(np.float32)
    return v


GEOMETRIES = {
    "axial isotropic": ((40, 40, 40), (1.0, 1.0, 1.0), np.eye(3)),
    "anisotropic 0.7 x 0.7 x 2.5 mm": ((20, 60, 60), (0.7, 0.7, 2.5), np.eye(3)),
    "flipped rows and slices": ((30, 40, 40), (0.8, 0.9, 1.2), np.diag([1.0, -1.0, -1.0])),
    "tilted 20 deg + rotated 30 deg, anisotropic": ((24, 50, 50), (0.75, 0.75, 1.5), _rot(0, 20) @ _rot(2, 30)),
    "sagittal stack (columns along P, rows along -S)": ((40, 40, 30), (0.9, 0.9, 1.1),
                                                        np.array([[0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]])),
}


def _centroid_lps(win: W.Window) -> np.ndarray:
    w = np.clip(win.image + 900.0, 0, None) * win.valid
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in win.image.shape], indexing="ij")
    idx = np.array([(w * i).sum(), (w * j).sum(), (w * k).sum()]) / w.sum()
    return (win.affine @ np.r_[idx, 1.0])[:3]


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_window_centre_lands_on_the_point(name):
    shape, spacing, direction = GEOMETRIES[name]
    # the volume centre at an arbitrary LPS position; the ball 3 mm off it
    half = (np.asarray(shape[::-1]) - 1) / 2 * np.asarray(spacing)
    origin = np.array([12.0, -30.0, 50.0]) - np.asarray(direction) @ half
    centre = np.array([12.0, -30.0, 50.0]) + [3.0, -2.0, 1.5]
    vol = _ball_volume(shape, spacing, direction, origin, centre)
    win = W.cut_window(vol, centre)
    assert win.image.shape == W.WINDOW_SHAPE and win.valid.shape == W.WINDOW_SHAPE
    assert win.image.dtype == np.float32 and win.valid.dtype == bool
    c = (W.WINDOW_SIZE - 1) / 2
    np.testing.assert_allclose((win.affine @ [c, c, c, 1])[:3], centre, atol=1e-9)
    # window axes are +L, +P, +S at MODEL_SPACING_MM
    np.testing.assert_allclose(win.affine[:3, :3], np.eye(3) * W.MODEL_SPACING_MM)
    np.testing.assert_allclose(_centroid_lps(win), centre, atol=0.25)
    # a point 5 mm to the patient's left of the ball: the ball sits 5 voxels to the right (-i)
    win2 = W.cut_window(vol, centre + [5.0, 0, 0])
    np.testing.assert_allclose(_centroid_lps(win2), centre, atol=0.25)
    # in window indices: 5 voxels towards -i (patient right) of the centre
    idx = np.linalg.solve(win2.affine, np.r_[_centroid_lps(win2), 1])[:3]
    np.testing.assert_allclose(idx, [c - 5, c, c], atol=0.25)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_to_source_grid_puts_the_window_mask_back_on_the_ball(name):
    shape, spacing, direction = GEOMETRIES[name]
    vol = _ball_volume(shape, spacing, direction, (0.0, 0.0, 0.0),
                       np.asarray(direction) @ ((np.asarray(shape[::-1]) - 1) / 2 * np.asarray(spacing)), radius=7.0)
    centre = vol.index_to_lps(*((np.asarray(shape[::-1]) - 1) / 2))
    win = W.cut_window(vol, centre)
    mask = win.image > -400
    back = W.to_source_grid(win, mask, vol, order=0)
    assert back.shape == vol.array.shape and back.dtype == bool
    truth = vol.array > -400
    from imaging_assist.evaluation import dice

    assert dice(back, truth) > 0.9, dice(back, truth)
    cb = vol.index_to_lps(*np.argwhere(back)[:, ::-1].mean(0))
    np.testing.assert_allclose(cb, centre, atol=0.3)
    heat = W.to_source_grid(win, mask.astype(np.float32), vol, order=1)
    assert heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
    # voxels far outside the window get 0
    far = W.cut_window(vol, centre + [200.0, 0, 0])
    assert not far.valid.any()
    assert not W.to_source_grid(far, np.ones(W.WINDOW_SHAPE, bool), vol, order=0).any()


def test_validity_marks_the_volume_footprint():
    vol = _ball_volume((4, 30, 30), (1.0, 1.0, 2.0), np.eye(3), (0.0, 0.0, 0.0), np.array([15.0, 15.0, 3.0]))
    win = W.cut_window(vol, [15.0, 15.0, 3.0])
    # slices at z = 0, 2, 4, 6 mm -> footprint z in [-1, 7] mm; window z = 3 + (k - 15.5)
    z = 3 + (np.arange(W.WINDOW_SIZE) - 15.5)
    inside_z = (z >= -1) & (z <= 7)
    assert (win.valid.any(axis=(1, 2)) == inside_z).all()
    assert not win.image[~win.valid].any()


def test_bad_inputs_are_one_line_errors():
    v = _ball_volume((10, 20, 20), (1, 1, 1), np.eye(3), (0, 0, 0), np.zeros(3))
    with pytest.raises(W.WindowError):
        W.cut_window(v, [np.nan, 0, 0])
    v.slice_positions = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12.0])
    with pytest.raises(W.WindowError, match="unevenly"):
        W.cut_window(v, [0, 0, 0])
    v2 = Volume(array=np.zeros((1, 10, 10, 3), np.uint8))
    with pytest.raises(W.WindowError):
        W.cut_window(v2, [0, 0, 0])


def test_volume_from_nifti_is_lps(tmp_path):
    import nibabel as nib

    data = np.zeros((6, 7, 5), np.int16)  # NIfTI [i, j, k]
    data[4, 2, 3] = 100
    ras = np.array([[-0.7, 0.1, 0, 10.0], [0.05, -0.8, 0, -20.0], [0, 0, 2.5, -100.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "x.nii.gz")
    v = W.volume_from_nifti(tmp_path / "x.nii.gz")
    assert v.array.shape == (5, 7, 6) and v.array[3, 2, 4] == 100
    expect = np.diag([-1, -1, 1, 1.0]) @ ras @ [4, 2, 3, 1]
    np.testing.assert_allclose(v.index_to_lps(4, 2, 3), expect[:3], atol=1e-9)
    assert v.units == "HU" and any("Hounsfield" in w for w in v.warnings)
    with pytest.raises(W.WindowError):
        W.volume_from_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(W.WindowError):
        W.volume_from_nifti(tmp_path / "bad.nii.gz")


def test_lidc_crop_coordinates_are_lps_like_labels_csv():
    """labels.csv coordX/Y/Z (LUNA16 world = ITK LPS) vs the crops' RAS NIfTI affines: the
    mask centroid through volume_from_nifti lands on the labels' point (95% within 1.5 mm;
    measured on every 6th crop: median 0.2 mm, 95th percentile 1.0 mm); read
    as RAS without the flip it would be 100+ mm away."""
    with (need(VOIS) / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    d, d_ras = [], []
    for r in rows[::6]:
        m = W.volume_from_nifti(VOIS / r["mask"])
        idx = np.argwhere(m.array > 0)[:, ::-1].mean(0)
        p = m.index_to_lps(*idx)
        want = np.array([float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])])
        d.append(np.linalg.norm(p - want))
        d_ras.append(np.linalg.norm(p * [-1, -1, 1] - want))
    assert np.percentile(d, 95) < 1.5 and np.median(d) < 0.5, np.percentile(d, 95)
    assert np.median(d_ras) > 20


def _slab_volume():
    from imaging_assist.dicom import load_series, scan

    return load_series(scan(str(need(SLAB))).image_series()[0])


@pytest.fixture(scope="module")
def r1_windows():
    crop = W.volume_from_nifti(need(VOIS / "images" / f"{R1}.nii.gz"))
    slab = _slab_volume()
    return W.cut_window(crop, R1_LPS), W.cut_window(slab, R1_LPS), crop, slab


def test_crop_and_slab_share_the_lps_frame(r1_windows):
    """The crop is a sub-grid of the slab's voxels (same spacing, integer offset) once the NIfTI
    is read as RAS -> LPS; inside the crop's voxel centres the two windows' HU agree."""
    wc, ws, crop, slab = r1_windows
    off = (np.linalg.inv(slab.affine) @ np.r_[crop.origin, 1])[:3]
    np.testing.assert_allclose(off, np.round(off), atol=1e-3)
    # window voxels whose source position lies between the crop's voxel centres (no edge
    # extrapolation): identical trilinear samples of identical HU
    src = (np.linalg.inv(crop.affine) @ wc.affine @ W._window_points(wc.affine))[:3]
    n = np.array(crop.array.shape[::-1])[:, None]
    interior = np.all((src >= 0) & (src <= n - 1), axis=0).reshape(W.WINDOW_SHAPE)
    assert interior.sum() > 10000
    np.testing.assert_allclose(wc.image[interior], ws.image[interior], atol=0.01)


# --------------------------------------------------------------------------- shipped models
from imaging_assist.models.registry import project_weights_dir  # noqa: E402

WEIGHTS = project_weights_dir()
IDS = ("ct-nodule-seg", "ct-nodule-malignancy")


@pytest.mark.parametrize("mid", IDS)
def test_shipped_weights_present_and_hash_verified(mid):
    from imaging_assist.models.registry import Registry

    folder = WEIGHTS / mid
    assert (folder / "model.json").is_file() and (folder / "model.safetensors").is_file(), \
        f"{mid}: shipped weights missing from weights/"
    reg = Registry()
    e = reg.verify_entry(reg.get(mid))
    assert e.verified, [v.message for v in e.verify]
    card = json.loads((folder / "model.json").read_text())
    assert card["modality"] == ["CT"] and card["body_part"] == "CHEST" and card["spatial_dims"] == 3
    assert card["labels"] == (["background", "nodule"] if mid == "ct-nodule-seg" else ["benign", "malignant"])
    assert card["not_for_clinical_use"] is True
    assert card["input"]["window"]["size_voxels"] == W.WINDOW_SIZE
    assert card["input"]["window"]["spacing_mm"] == W.MODEL_SPACING_MM
    assert json.loads((folder / "metrics.json").read_text())["metrics"] == card["metrics"]
    # the OOD statistics file matches the card's sha256 (load_stats refuses it otherwise)
    from imaging_assist.validation.ood import load_stats

    assert load_stats(reg.load(mid).card) is not None


def _rows(mid, split):
    with (WEIGHTS / mid / "predictions.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def _card_metric(card, name, prefix):
    (m,) = [m for m in card["metrics"] if m["name"] == name and m["data"].startswith(prefix)]
    return m


def test_malignancy_card_recomputed_from_predictions():
    """AUC, sensitivity/specificity at the card's threshold, ECE and Spearman with the
    readers' rating, each with its patient-clustered CI, from predictions.csv with the
    script's seeds; no test patient in validation."""
    from scipy.stats import spearmanr

    from imaging_assist import evaluation as E

    mid = "ct-nodule-malignancy"
    card = json.loads((WEIGHTS / mid / "model.json").read_text())
    thr = card["thresholds"]["malignant"]["threshold"]
    rows = _rows(mid, "test")
    y = np.array([r["label"] == "malignant" for r in rows]).astype(int)
    p = np.array([float(r["p_malignant"]) for r in rows])
    pid = np.array([r["patient"] for r in rows])
    rating = np.array([float(r["malignancy_rating"]) for r in rows])
    assert len(set(pid)) < len(rows)  # patients with several nodules: clustered CIs matter
    pre = "patient-split test"
    auc = E.roc_auc(y, p)
    m = _card_metric(card, "AUC", pre)
    assert m["n"] == len(rows) and auc == pytest.approx(m["value"], abs=6e-5)
    assert E.bootstrap_ci(E.roc_auc, y, p, clusters=pid, strata=y, seed=1) == pytest.approx(tuple(m["ci95"]), abs=2e-4)
    se, sp = E.sens_spec(y, p, thr)
    se_ci, sp_ci, how = E.sens_spec_ci(y, p, thr, clusters=pid, seed=2)
    for name, v, ci in (("sensitivity", se, se_ci), ("specificity", sp, sp_ci)):
        m = _card_metric(card, name, pre)
        assert v == pytest.approx(m["value"], abs=6e-5) and ci == pytest.approx(tuple(m["ci95"]), abs=2e-4)
    m = _card_metric(card, "ECE", pre)
    assert E.reliability(y, p).ece == pytest.approx(m["value"], abs=2e-4)
    rho = float(spearmanr(p, rating).statistic)
    assert rho == pytest.approx(_card_metric(card, "Spearman_malignancy_rating", pre)["value"], abs=2e-4)
    val = {r["patient"] for r in _rows(mid, "validation")}
    assert not val & set(pid)


def test_malignancy_card_states_what_size_alone_gives_recomputed_from_predictions():
    """The card's size baseline, recomputed: the ct-nodule-seg volume (its predictions.csv) as
    the only score on the same test nodules, its patient-clustered CI, the paired difference
    with this model's AUC, and the limitation that says it (a model that only measures size
    must not look like more)."""
    from imaging_assist import evaluation as E

    mid = "ct-nodule-malignancy"
    card = json.loads((WEIGHTS / mid / "model.json").read_text())
    rows = _rows(mid, "test")
    vol = {r["file"]: float(r["volume_pred_mm3"]) for r in _rows("ct-nodule-seg", "test")}
    assert {r["file"] for r in rows} == set(vol)  # the same test crops
    y = np.array([r["label"] == "malignant" for r in rows]).astype(int)
    p = np.array([float(r["p_malignant"]) for r in rows])
    v = np.array([vol[r["file"]] for r in rows])
    pid = np.array([r["patient"] for r in rows])
    pre = "patient-split test"
    m = _card_metric(card, "AUC_size_alone_segmenter_volume", pre)
    assert E.roc_auc(y, v) == pytest.approx(m["value"], abs=6e-5) and m["n"] == len(rows)
    assert E.bootstrap_ci(E.roc_auc, y, v, clusters=pid, strata=y, seed=6) == pytest.approx(tuple(m["ci95"]), abs=2e-4)
    g = _card_metric(card, "AUC_gain_over_size_alone", pre)
    assert E.roc_auc(y, p) - E.roc_auc(y, v) == pytest.approx(g["value"], abs=6e-5)
    diff = E.bootstrap_ci(lambda a, b, c: E.roc_auc(a, b) - E.roc_auc(a, c), y, p, v, clusters=pid, strata=y, seed=8)
    assert diff == pytest.approx(tuple(g["ci95"]), abs=2e-4)
    with (SHARED / "ct" / "lidc_nodule_vois" / "labels.csv").open() as fh:
        diam = {r["file"]: float(r["diameter_mm"]) for r in csv.DictReader(fh)}
    d_auc = E.roc_auc(y, np.array([diam[r["file"]] for r in rows]))
    (line,) = [t for t in card["limitations"] if t.startswith("Size alone")]
    assert f"AUC {m['value']:.3f}" in line and f"diameter {d_auc:.3f}" in line and f"{g['value']:+.3f}" in line
    if g["ci95"][0] <= 0:  # the interval includes no gain: the card must not claim one
        assert "cannot show" in line


def test_seg_card_recomputed_from_predictions():
    from imaging_assist import evaluation as E

    mid = "ct-nodule-seg"
    card = json.loads((WEIGHTS / mid / "model.json").read_text())
    rows = _rows(mid, "test")
    pid = np.array([r["patient"] for r in rows])
    d = np.array([float(r["dice"]) for r in rows])
    m = _card_metric(card, "Dice", "patient-split test")
    assert d.mean() == pytest.approx(m["value"], abs=6e-5) and m["n"] == len(rows)
    assert E.bootstrap_ci(lambda a: float(np.mean(a)), d, clusters=pid, seed=1) == pytest.approx(tuple(m["ci95"]), abs=2e-4)
    ve = np.array([float(r["volume_error_pct"]) for r in rows])
    ok = np.isfinite(ve)
    assert np.median(np.abs(ve[ok])) == pytest.approx(_card_metric(card, "abs_volume_error_pct", "patient-split test")["value"], abs=1e-3)
    h = np.array([float(r["hd95_mm"]) for r in rows])
    assert np.median(h[np.isfinite(h)]) == pytest.approx(_card_metric(card, "HD95_mm", "patient-split test")["value"], abs=1e-3)
    # the volumes are those of the stored masks: true volume > 0 for every nodule
    assert all(float(r["volume_true_mm3"]) > 0 for r in rows)


def _negatives(split):
    with (WEIGHTS / "ct-nodule-seg" / "negatives.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def test_seg_false_nodule_rate_recomputed_from_negatives():
    """The card's false_nodule_rate (clicks on or beside a lung vessel >= 7 mm from the crop's
    nodule that the workflow still reports as a nodule) with its patient-clustered CI, from
    negatives.csv; the test clicks' patients are test patients, and every click is that far away."""
    from imaging_assist import evaluation as E

    card = json.loads((WEIGHTS / "ct-nodule-seg" / "model.json").read_text())
    assert card["files"]["negatives"] == "negatives.csv" and card["training"]["negatives"].startswith("lung:")
    test_patients = {r["patient"] for r in _rows("ct-nodule-seg", "test")}
    for split, prefix in (("test", "patient-split test"), ("validation", "validation split")):
        rows = _negatives(split)
        rep = np.array([int(r["reported"]) for r in rows], float)
        pid = np.array([r["patient"] for r in rows])
        m = _card_metric(card, "false_nodule_rate", prefix)
        assert rep.mean() == pytest.approx(m["value"], abs=6e-5) and m["n"] == len(rows) >= 50
        assert E.bootstrap_ci(lambda a: float(np.mean(a)), rep, clusters=pid, seed=len([
            x for x in card["metrics"][:card["metrics"].index(m)]]) + 1) == pytest.approx(tuple(m["ci95"]), abs=2e-4)
        assert (set(pid) <= test_patients) == (split == "test")
    assert _card_metric(card, "false_nodule_rate", "patient-split test")["value"] <= 0.10


def test_seg_min_confidence_is_the_conformal_threshold_of_the_validation_nodules():
    """The card's min_confidence (below it a click is flagged and its decision withheld) is the
    OOD statistics' conformal rule applied to 1 - the validation nodules' confidence
    (predictions.csv); the test nodules below it are few."""
    from imaging_assist.validation.ood import conformal_threshold

    card = json.loads((WEIGHTS / "ct-nodule-seg" / "model.json").read_text())
    mc = card["input"]["window"]["min_confidence"]
    val = np.array([float(r["confidence"]) for r in _rows("ct-nodule-seg", "validation")])
    thr, info = conformal_threshold(1.0 - val)
    assert 1.0 - thr == pytest.approx(mc["threshold"], abs=2e-4) and info["rank"] == mc["rank"]
    test = np.array([float(r["confidence"]) for r in _rows("ct-nodule-seg", "test")])
    assert (test < mc["threshold"]).mean() <= 0.06


def test_slab_click_check_is_of_the_shipped_weights():
    """slab_clicks.json (scripts/check_nodule_clicks.py, quoted by the card's limitations and the
    docs) was measured with the shipped segmenter's version, and no false report on the real slab
    came without a warning."""
    card = json.loads((WEIGHTS / "ct-nodule-seg" / "model.json").read_text())
    d = json.loads((WEIGHTS / "ct-nodule-seg" / card["files"]["slab_clicks"]).read_text())
    assert d["models"]["ct-nodule-seg"] == card["version"]
    kinds = d["kinds"].values()
    assert d["total"]["clicks"] == sum(k["clicks"] for k in kinds) >= 100
    assert d["total"]["reported"] == sum(k["reported"] for k in kinds)
    assert d["total"]["reported_without_any_warning"] == 0


def test_clicks_beside_the_nodule_in_test_crops_are_not_reported():
    """The whole workflow (analyze_at, second pass and every rule) at the test crops' negative
    clicks of negatives.csv (on or beside a vessel >= 7 mm from the nodule): at most 10 % give a
    nodule.  The 8-epoch segmenter shipped before (trained on nodule clicks only) gives a nodule at
    22 of the 59 (measured with those weights put back)."""
    from imaging_assist.nodules.analysis import analyze_at

    rows = _negatives("test")
    found = []
    for r in rows:
        vol = W.volume_from_nifti(need(VOIS / r["file"]))
        res = analyze_at(vol, [float(r["lps_x"]), float(r["lps_y"]), float(r["lps_z"])], "X", explain=False)
        found.append(res.found)
    assert len(rows) >= 50 and sum(found) <= 0.10 * len(rows), f"{sum(found)} of {len(rows)} clicks reported"


# Equivalence of the crop and the slab (docs/ct_nodules_models.md): measured on this machine
# P(malignant) 0.9992 from both (difference 0.0: the malignancy model's common box lies inside
# the crop) and mask Dice 0.979 with the 8-epoch segmenter (it sees the whole cube, and the crop ends where the
# slab goes on); the tolerances leave room for other CPUs' float kernels.
P_TOL = 0.02
MASK_DICE_MIN = 0.95


def test_crop_and_slab_give_the_same_model_output(r1_windows):
    from imaging_assist.evaluation import dice
    from imaging_assist.nodules import models as M

    wc, ws, crop, slab = r1_windows
    pc, hc = M.malignancy(wc)
    ps, hs = M.malignancy(ws)
    assert abs(pc - ps) <= P_TOL, (pc, ps)
    assert pc > 0.5  # R_1: readers' majority malignant (rating 5)
    assert hc.shape == W.WINDOW_SHAPE and 0 <= hc.min() and hc.max() == pytest.approx(1.0)
    assert np.corrcoef(hc.ravel(), hs.ravel())[0, 1] > 0.95
    mc = M.nodule_mask(M.segment(wc), wc)
    ms = M.nodule_mask(M.segment(ws), ws)
    print(f"\ncrop vs slab: P(malignant) {pc:.4f} / {ps:.4f}; mask Dice {dice(mc, ms):.3f} "
          f"({int(mc.sum())} vs {int(ms.sum())} voxels)")
    assert mc.sum() > 500  # a 23 mm nodule
    assert dice(mc, ms) >= MASK_DICE_MIN, dice(mc, ms)
    oc, os_ = M.ood(wc), M.ood(ws)
    assert set(oc) >= {"score", "threshold", "flagged", "reasons"}
    assert not oc["flagged"], oc
    assert os_["flagged"] == oc["flagged"], os_  # the slab's window is as familiar as the crop's


def test_click_is_deterministic_and_fast(r1_windows):
    from imaging_assist.nodules import models as M

    _, ws, _, _ = r1_windows
    M.malignancy(ws), M.segment(ws)  # loaded once
    times = []
    for _ in range(3):
        t = time.process_time()  # CPU seconds: the wall time depends on the other jobs sharing the cores
        p1, h1 = M.malignancy(ws)
        s1 = M.segment(ws)
        o1 = M.ood(ws)
        times.append(time.process_time() - t)
    p2, h2 = M.malignancy(ws)
    assert p1 == p2 and np.array_equal(h1, h2) and np.array_equal(s1, M.segment(ws))
    assert M.ood(ws) == o1
    # target < 1 s wall on 2 idle cores (scripts/bench_nodule.py measures it): measured 0.36 s CPU before the segmenter's 8-flip average
    # (0.5-0.6 s wall at load 7) for both models + Grad-CAM + OOD; 2 s CPU catches a runaway
    # (a per-click reload or hash check) without depending on the machine's load
    assert min(times) < 2.0, times


def test_a_click_away_from_any_nodule_gives_no_mask_or_is_flagged():
    """Air and lung parenchyma: no mask.  Soft tissue (mediastinum, chest wall): the models were
    never trained on windows without a nodule (the data has none) and DO outline something
    there, so the OOD check must flag it (measured: every no-nodule slab window flagged by
    the segmenter's statistics); the nodule itself is not flagged."""
    from imaging_assist.nodules import models as M

    slab = _slab_volume()
    for p in (slab.index_to_lps(256, 20, 8), R1_LPS + [0, -40.0, 0]):  # air in front; lung
        w = W.cut_window(slab, p)
        assert not M.nodule_mask(M.segment(w), w).any(), p
    for p in (R1_LPS + [-60.0, 0, 0], R1_LPS + [0, 30.0, 0]):  # mediastinum; posterior chest wall
        w = W.cut_window(slab, p)
        M.segment(w)
        o = M.ood(w)
        assert o["flagged"] and o["segmentation"]["flagged"], (p, o)
    w = W.cut_window(slab, R1_LPS)
    M.segment(w)
    assert not M.ood(w)["flagged"]


# --------------------------------------------------------------------------- read-out (TTA, threshold, source grid)
def test_flip_average_is_flip_equivariant_and_plain_when_off():
    import torch

    from imaging_assist.nodules import models as M

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 2, 3, padding=1)).eval()  # random kernels: not flip-symmetric
    x = torch.rand(2, 3, 8, 8, 8)
    none = M.flip_average(net, x, "none")
    with torch.no_grad():
        assert torch.allclose(none, torch.softmax(net(x), 1))
    avg = M.flip_average(net, x, "flips8")
    assert not torch.allclose(avg, none, atol=1e-3)
    for f in ((2,), (3, 4), (2, 3, 4)):  # each flipped copy's output is flipped back
        assert torch.allclose(M.flip_average(net, torch.flip(x, f), "flips8"), torch.flip(avg, f), atol=1e-6)
    cls = torch.nn.Sequential(torch.nn.Conv3d(3, 2, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten()).eval()
    assert M.flip_average(cls, x, "flips8").shape == (2, 2)


def test_probability_on_the_source_grid_beats_the_nearest_1mm_mask():
    """A 3 mm-radius ball off the voxel centres of a 0.7 x 0.7 x 2.5 mm series, its window
    probability a 1 mm soft edge at the true radius: thresholding the trilinear probability on
    the series' grid ("probability") gives the ball back better than the 1 mm mask copied to the
    nearest voxel ("mask")."""
    from imaging_assist.evaluation import dice
    from imaging_assist.nodules import models as M

    centre = np.array([20.3, 21.1, 13.4])
    vol = _ball_volume((12, 60, 60), (0.7, 0.7, 2.5), np.eye(3), (0.0, 0.0, 0.0), centre, radius=3.0)
    win = W.cut_window(vol, centre)

    def dist(aff, shape):
        k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
        pts = (aff @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]))[:3].T
        return np.linalg.norm(pts - centre, axis=1).reshape(shape)

    p = np.clip(0.5 + (3.0 - dist(win.affine, W.WINDOW_SHAPE)), 0, 1).astype(np.float32) * win.valid
    comp = M.nodule_mask(p, win, 0.5)
    truth = dist(np.asarray(vol.affine, float), vol.array.shape) <= 3.0
    d_mask = dice(M.source_mask(p, comp, win, vol, 0.5, "mask"), truth)
    d_prob = dice(M.source_mask(p, comp, win, vol, 0.5, "probability"), truth)
    assert d_prob > d_mask and d_prob >= 0.9, (d_prob, d_mask)
    # only the clicked component goes onto the grid: a second ball in the window is left out
    p2 = np.maximum(p, np.roll(p, 12, axis=2))
    assert np.array_equal(M.source_mask(p2, M.nodule_mask(p2, win, 0.5), win, vol, 0.5, "probability"),
                          M.source_mask(p, comp, win, vol, 0.5, "probability"))


@pytest.mark.parametrize("mid", IDS)
def test_readout_is_the_validation_best_and_the_engine_reads_it_from_the_card(mid):
    from imaging_assist.nodules import models as M

    card = json.loads((WEIGHTS / mid / "model.json").read_text())
    tr = card["training"]
    score = "val_dice" if mid == "ct-nodule-seg" else "val_auc"
    eligible = [c for c in tr["readout_selection"]["candidates"] if c.get("eligible", True)]
    best = max(eligible, key=lambda c: c[score])
    chosen = {k: v for k, v in tr["readout"].items() if k != "min_confidence"}  # min_confidence: its own rule
    assert {k: best[k] for k in chosen} == chosen
    assert all(card["input"]["window"][k] == v for k, v in tr["readout"].items())
    m = M.load(mid)
    assert M.tta(m) == tr["readout"]["tta"]
    if mid == "ct-nodule-seg":
        assert M.mask_threshold(m) == tr["readout"]["mask_threshold"]
        assert M.min_confidence(m) == tr["readout"]["min_confidence"]["threshold"]


def test_auxiliary_rating_targets_train_only_and_leave_the_card_network_unchanged():
    """``train_ct_nodule_malignancy.py --aux ratings`` (measured, not shipped: docs/ct_nodules_models.md):
    the targets are z-scored on the training rows, the head sees the features the card's fc
    sees, and after training the network is exactly the card's architecture again."""
    import sys

    import torch

    sys.path.insert(0, str(WEIGHTS.parents[0] / "scripts"))
    import train_ct_nodule_malignancy as TM

    from imaging_assist.models.architectures import build_network

    rows = [{"malignancy": str(m), "subtlety": "3", "lobulation": "1", "margin": "4", "sphericity": "3",
             "spiculation": str(1 + i % 2), "texture": "5", "calcification": "6" if i else "3",
             "diameter_mm": str(4.0 + i)} for i, m in enumerate((1, 2, 3, 4, 5))]
    a = TM.aux_targets(rows, np.array([0, 1, 2]))
    assert a.shape == (5, len(TM.AUX_RATINGS) + 2)
    assert np.allclose(a[:3, 0].numpy().mean(), 0, atol=1e-6) and np.allclose(a[:3, 0].numpy().std(), 1, atol=1e-5)
    assert np.all(np.isfinite(a.numpy()))  # constant columns (subtlety...) stay finite
    net = build_network(TM.ARCH, TM.MODEL_ID)
    keys = set(net.state_dict())
    model = TM.AuxHead(net, a.shape[1])
    x = torch.zeros(2, 3, *W.WINDOW_SHAPE)
    with torch.no_grad():
        both = model(x)
        assert both.shape == (2, 2 + a.shape[1])
        assert torch.equal(both[:, :2], net(x))
    model.detach()
    assert set(net.state_dict()) == keys and not net.fc._forward_pre_hooks


def test_seg_card_states_the_size_bias_the_phantom_script_measures(tmp_path):
    """The card's size-bias figures are the ones scripts/check_nodule_phantom.py wrote, and a
    fresh run on spheres of known size gives them again (tolerances for other CPUs)."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    folder = ROOT / "weights" / "ct-nodule-seg"
    stored = json.loads((folder / "phantom_sizes.json").read_text())
    card = json.loads((folder / "model.json").read_text())
    lo, hi = stored["long_axis_excess_mm"]
    vlo, vhi = stored["volume_ratio"]
    (lim,) = [t for t in card["limitations"] if "LIDC readers' outlines" in t]
    assert f"{lo:.1f}-{hi:.1f} mm longer" in lim and f"{vlo:.1f}-{vhi:.1f} times" in lim
    out = tmp_path / "phantom.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_nodule_phantom.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    fresh = json.loads(out.read_text())
    for a, b in zip(stored["spheres"], fresh["spheres"]):
        assert a["found"] and b["found"], (a, b)
        assert abs(a["long_axis_mm"] - b["long_axis_mm"]) <= 0.3 and abs(a["volume_ratio"] - b["volume_ratio"]) <= 0.1
