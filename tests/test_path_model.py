"""path-lung-tissue: near-duplicate grouping, image path == slide path preprocessing, and
``imaging-assist analyze SLIDE`` end to end (synthetic pyramid and the real Aperio SVS)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, need

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "path-lung-tissue"
LC25000 = SHARED / "pathology" / "lc25000_lung_subset"
CMU1 = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


# --------------------------------------------------------------------------- helpers
def _texture(seed: int, size: int = 224) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(np.random.default_rng(seed).random((size, size, 3)), (3, 3, 0))
    return ((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)


def _jpeg(a: np.ndarray, q: int = 90) -> np.ndarray:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=q)
    return np.asarray(Image.open(b).convert("RGB"))


def _rotate_crop(a: np.ndarray, deg: float) -> np.ndarray:
    """Augmentor-style rotation: rotate, crop the largest inner square, scale back up."""
    from PIL import Image
    from scipy.ndimage import rotate

    s = np.cos(np.deg2rad(deg)) + np.sin(np.deg2rad(deg))
    r = rotate(a.astype(np.float32), deg, reshape=False, order=1, axes=(0, 1))
    side = int(a.shape[0] / s)
    o = (a.shape[0] - side) // 2
    c = np.clip(r[o:o + side, o:o + side], 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(c).resize(a.shape[:2][::-1], Image.BILINEAR))


def test_card_metrics_and_group_clustered_cis_recomputed_from_predictions():
    """Every test-split number of the card and its 95% CI, recomputed from predictions.csv:
    the intervals are the cluster bootstrap over near-duplicate groups (E.bootstrap_ci, the
    script's seeds); no group is in two splits; metrics.json says the same as the card."""
    import csv

    from imaging_assist import evaluation as E

    card = json.loads(need(WEIGHTS / "model.json").read_text())
    assert json.loads((WEIGHTS / "metrics.json").read_text())["metrics"] == card["metrics"]
    labels = card["labels"]
    rows = list(csv.DictReader((WEIGHTS / "predictions.csv").open()))
    splits: dict[str, set] = {}
    for r in rows:
        splits.setdefault(r["group"], set()).add(r["split"])
    assert all(len(v) == 1 for v in splits.values())
    test = [r for r in rows if r["split"] == "test"]
    y = np.array([labels.index(r["label"]) for r in test])
    p = np.array([[float(r[f"p_{lab}"]) for lab in labels] for r in test])
    g = np.array([r["group"] for r in test])
    assert len(set(g)) < len(g)

    def acc(a, b):
        return float((b.argmax(1) == a).mean())

    mauc, aucs = E.macro_auc(y, p)
    expect = {("macro AUC", None): (mauc, E.bootstrap_ci(lambda a, b: E.macro_auc(a, b)[0], y, p, clusters=g,
                                                         strata=y, seed=1)),
              ("accuracy", None): (acc(y, p), E.bootstrap_ci(acc, y, p, clusters=g, strata=y, seed=2)),
              ("ECE", None): (E.top_label_ece(y, p).ece,
                              E.bootstrap_ci(lambda a, b: E.top_label_ece(a, b).ece, y, p, clusters=g, strata=y,
                                             seed=3, n_boot=500))}
    for c, lab in enumerate(labels):
        expect[("AUC", lab)] = (aucs[c], E.bootstrap_ci(lambda a, b, _c=c: E.roc_auc(a == _c, b[:, _c]), y, p,
                                                        clusters=g, strata=y, seed=10 + c))
    for (name, lab), (v, ci) in expect.items():
        (m,) = [m for m in card["metrics"] if m["name"] == name and m.get("label") == lab
                and m["data"].startswith("grouped test split")]
        assert m["n"] == len(test)
        assert v == pytest.approx(m["value"], abs=6e-5), (name, lab)
        # 2e-4: probabilities are stored to 6 decimals, the script bootstrapped unrounded ones
        assert ci == pytest.approx(tuple(m["ci95"]), abs=2e-4), (name, lab, ci, m["ci95"])


def _load():
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model

    need(WEIGHTS / "model.json")
    return load_model(load_card(WEIGHTS), "cpu")


@pytest.fixture(scope="module")
def model():
    return _load()


# --------------------------------------------------------------------------- grouping
def test_dihedral_and_rotated_copies_group_together_unrelated_image_apart():
    from imaging_assist.near_duplicates import group_near_duplicates

    base = _texture(1)
    ims = []
    for flip in (False, True):
        for k in range(4):  # the 8 dihedral orientations, each JPEG re-encoded
            a = base[:, ::-1] if flip else base
            ims.append(_jpeg(np.ascontiguousarray(np.rot90(a, k))))
    ims.append(_jpeg(_rotate_crop(base, 20.0)))  # 20° turn + 1.28x zoom (LC25000 augmentation)
    ims.append(_jpeg(_texture(2)))  # unrelated
    ims.append(_jpeg(_texture(2)[:, ::-1]))  # its mirror copy
    g = group_near_duplicates(ims)
    assert g.groups[:9].tolist() == [g.groups[0]] * 9
    assert g.groups[9] == g.groups[10] != g.groups[0]
    assert g.n_groups == 2
    # registration recovers the transform of the rotated copy: i(x) = j(c + s R(a)(x - c))
    m = [m for m in g.matches if {m.i, m.j} == {0, 8}]
    if m:
        mm = m[0]
        ang = mm.angle_deg if mm.i == 8 else -mm.angle_deg
        assert abs(((ang + 180) % 360) - 180 - (-20.0)) < 4.0 or abs(((ang + 180) % 360) - 180 - 20.0) < 4.0
    assert min(x.ncc for x in g.matches) > 0.5
    assert all(x.ncc < 0.2 for x in g.rejected)


def test_transform_limits_for_frames_that_are_never_turned_or_mirrored():
    """Ultrasound (us-breast): only near-identity transforms are searched, so a 90° turn or a
    mirror image of a frame is not a copy there, while a re-encoded, 5 % zoomed copy is."""
    from imaging_assist.near_duplicates import group_near_duplicates

    base = _texture(4)
    zoomed = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(base[5:-6, 5:-6]).resize((224, 224)))
    ims = [_jpeg(base), _jpeg(zoomed), _jpeg(np.rot90(base).copy()), _jpeg(base[:, ::-1].copy())]
    free = group_near_duplicates(ims)
    assert free.n_groups == 1
    near_identity = group_near_duplicates(ims, max_angle_deg=10, allow_flip=False, max_log_zoom=0.25)
    assert near_identity.groups[0] == near_identity.groups[1]
    assert len({near_identity.groups[0], near_identity.groups[2], near_identity.groups[3]}) == 3


def test_strata_keep_classes_apart():
    from imaging_assist.near_duplicates import group_near_duplicates

    base = _jpeg(_texture(3, 128))
    g = group_near_duplicates([base, np.rot90(base).copy(), base[::-1].copy()], strata=[0, 0, 1])
    assert g.groups[0] == g.groups[1] != g.groups[2]


# --------------------------------------------------------------------------- preprocessing
def _tiles(n=4):
    from PIL import Image

    files = sorted((need(LC25000) / "tiles").glob("*/*.jpeg"))[::97][:n]
    return files, [np.asarray(Image.open(f).convert("RGB")) for f in files]


def test_card_states_slide_scale_and_labels(model):
    card = model.card
    assert card.labels == ["adenocarcinoma", "benign", "squamous_cell_carcinoma"]
    s = card.raw["slide"]
    assert s["tile_px"] == 224 and 0.1 < s["mpp"] < 5 and s["mpp_is_assumption"] is True
    assert card.not_for_clinical_use
    text = " ".join(card.raw["limitations"]).lower()
    assert "optimistic" in text and "must not" in text
    names = {(m["name"], m.get("label")) for m in card.metrics}
    assert ("macro AUC", None) in names and ("accuracy", None) in names and ("ECE", None) in names
    assert all(("AUC", lab) in names for lab in card.labels)
    assert all(m["ci95"][0] <= m["value"] <= m["ci95"][1] for m in card.metrics)


def test_image_path_and_slide_path_give_the_same_probabilities(model, tmp_path):
    """The same pixels through ``run_model`` (JPEG tile) and through the slide tiler."""
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import run_model
    from imaging_assist.slides.analysis import TileModel
    from imaging_assist.slides.reader import open_slide
    from imaging_assist.slides.synth import write_pyramid_tiff
    from imaging_assist.slides.tiling import run_tiles

    files, tiles = _tiles(4)
    p_img = np.array([[run_model(model, read_image(f)).probabilities[lab] for lab in model.card.labels]
                      for f in files])
    fn = TileModel(model, "cpu")
    x = np.stack(tiles).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    p_fn = fn(x).numpy()
    np.testing.assert_allclose(p_fn, p_img, atol=2e-5)
    # 2x2 mosaic as a lossless slide at exactly the card's µm/px: tiles are read unresampled
    mpp = model.card.raw["slide"]["mpp"]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    path = write_pyramid_tiff(tmp_path / "mosaic.tif", [mosaic], tile=64, mpp=mpp)
    with open_slide(path) as s:
        r = run_tiles(s, fn, tile_px=224, mpp=mpp, tissue_mask=None, class_names=model.card.labels,
                      as_tensor=True)
    assert r.heatmaps.shape == (3, 2, 2)
    got = r.heatmaps.transpose(1, 2, 0).reshape(4, 3)
    np.testing.assert_allclose(got, p_img, atol=2e-5)


def test_per_image_intensity_steps_match_the_image_pipeline(tmp_path):
    """Cards with per-image steps (percentile) go through the same MONAI transforms."""
    import torch

    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model
    from imaging_assist.slides.analysis import TileModel
    from imaging_assist.volume import Volume
    from imaging_assist.models.architectures import build_network

    arch = {"library": "monai", "name": "ResNet",
            "kwargs": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 8, 8],
                       "spatial_dims": 2, "n_input_channels": 3, "num_classes": 2}}
    torch.manual_seed(0)
    card = {"schema_version": 1, "id": "tiny-tile", "name": "t", "version": "1", "task": "classification",
            "modality": ["SM"], "spatial_dims": 2, "architecture": arch, "labels": ["a", "b"],
            "input": {"channels": 3, "size": [64, 64],
                      "intensity": [{"type": "percentile", "lower": 1, "upper": 99},
                                    {"type": "normalize", "mean": [0.5] * 3, "std": [0.25] * 3}]},
            "data": {"training": "-", "validation": "-"}, "license": "-", "intended_use": "-",
            "not_for_clinical_use": True, "slide": {"tile_px": 64, "mpp": 1.0}}
    save_model_folder(tmp_path / "m", card, build_network(arch, "tiny-tile"))
    m = load_model(load_card(tmp_path / "m"), "cpu")
    tiles = np.stack([_texture(s, 64) for s in (5, 6)])
    p_img = np.array([[run_model(m, Volume(array=t[None], photometric="RGB", has_geometry=False),
                                 RunOptions()).probabilities[k] for k in ("a", "b")] for t in tiles])
    p_fn = TileModel(m, "cpu")(tiles.transpose(0, 3, 1, 2).astype(np.float32) / 255).numpy()
    np.testing.assert_allclose(p_fn, p_img, atol=2e-5)


# --------------------------------------------------------------------------- analyze
def _analyze(args) -> int:
    from imaging_assist.cli import main

    return main(["analyze", *args])


def _check_item(it, out: Path, dims, mpp):
    from imaging_assist.slides.heatmap_io import read_heatmaps

    assert it["kind"] == "slide" and it["model"] == "path-lung-tissue"
    assert it["slide"]["dimensions"] == list(dims)
    t = it["tiling"]
    model_mpp = t["model_mpp"]
    ds = model_mpp / mpp
    assert t["tile_mpp"] == pytest.approx(model_mpp)
    stride = 224 * ds
    rows, cols = int(np.ceil(dims[1] / stride - 1e-9)), int(np.ceil(dims[0] / stride - 1e-9))
    assert it["heatmap_grid"]["shape"] == [3, rows, cols]
    assert it["heatmap_grid"]["downsample"] == pytest.approx([stride, stride])
    assert it["heatmap_grid"]["origin"] == [0.0, 0.0]
    heat, meta = read_heatmaps(out / it["files"]["heatmaps"])
    assert heat.shape == (3, rows, cols)
    assert meta["downsample"] == pytest.approx([stride, stride])
    ran = np.isfinite(heat).all(0)
    assert ran.sum() == t["n_tiles_run"] == t["n_tissue_tiles"] > 0
    np.testing.assert_allclose(np.nansum(heat, 0)[ran], 1.0, atol=1e-4)  # softmax per tile
    # areas: mm², sum = analysed tissue, not more than the tissue mask's area
    assert it["area_unit"] == "mm2" and it["tissue"]["unit"] == "mm2"
    assert sum(it["areas"].values()) == pytest.approx(it["area_analysed"], abs=5e-6)  # 6-digit rounding
    assert it["area_analysed"] <= it["tissue"]["area"] * 1.02
    assert sum(it["area_fraction"].values()) == pytest.approx(1.0, abs=1e-5)
    # top tiles: inside tissue, on the heat map, with a Grad-CAM through the image path
    from PIL import Image

    for lab, tops in it["top_tiles"].items():
        assert tops, lab
        scores = [tt["score"] for tt in tops]
        assert scores == sorted(scores, reverse=True)
        for tt in tops:
            assert tt["tissue_fraction"] >= 0.5
            assert tt["x"] == pytest.approx(tt["col"] * stride, abs=1) and tt["y"] == pytest.approx(tt["row"] * stride, abs=1)
            assert heat[it["labels"].index(lab), tt["row"], tt["col"]] == pytest.approx(tt["score"], abs=1e-5)
            assert tt["image_path_probability"] == pytest.approx(tt["score"], abs=1e-4)
            g = np.load(out / tt["gradcam_npy"])
            assert g.shape == (224, 224) and np.isfinite(g).all() and g.min() >= 0
            assert Image.open(out / tt["gradcam_png"]).size == (224, 224)
    assert (out / it["files"]["overview_png"]).exists()
    assert any("assumption" in w for w in it["warnings"])


def test_analyze_synthetic_slide(model, tmp_path, capsys):
    from imaging_assist.slides.synth import make_levels, tissue_phantom, write_pyramid_tiff

    rgb, truth, _ = tissue_phantom(1500, 2000, seed=1)
    path = write_pyramid_tiff(tmp_path / "phantom.tif", make_levels(rgb, 256), tile=256, mpp=0.35,
                              compression="jpeg")
    out = tmp_path / "out"
    rc = _analyze([str(path), "--model", "path-lung-tissue", "--out", str(out), "--top-tiles", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "assumption" in err  # the MPP assumption is printed, not only stored
    doc = json.loads((out / "results.json").read_text())
    assert doc["not_for_clinical_use"] is True and doc["model"]["id"] == "path-lung-tissue"
    (it,) = doc["items"]
    _check_item(it, out, (2000, 1500), 0.35)
    # level choice: 0.7/0.35 = 2 -> pyramid level 1 read without resampling
    assert it["tiling"]["level"] == 1
    # the analysed area is where the TRUE tissue is: per grid tile, true tissue fraction
    stride = it["heatmap_grid"]["downsample"][0]
    rows, cols = it["heatmap_grid"]["shape"][1:]
    frac = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            y0, x0 = int(round(r * stride)), int(round(c * stride))
            win = truth[y0:int(round((r + 1) * stride)), x0:int(round((c + 1) * stride))]
            frac[r, c] = win.sum() / stride ** 2
    from imaging_assist.slides.heatmap_io import read_heatmaps

    heat, _ = read_heatmaps(out / it["files"]["heatmaps"])
    ran = np.isfinite(heat).all(0)
    assert frac[ran].min() > 0.3  # no tile ran on glass
    assert frac[~ran].max() < 0.7  # no tile that is mostly tissue was skipped
    expected_mm2 = (frac[ran] * stride ** 2).sum() * 0.35 * 0.35 * 1e-6
    assert it["area_analysed"] == pytest.approx(expected_mm2, rel=0.1)
    for tops in it["top_tiles"].values():
        for tt in tops:
            assert frac[tt["row"], tt["col"]] > 0.3


def test_analyze_real_svs(model, tmp_path):
    need(CMU1)
    out = tmp_path / "cmu1"
    rc = _analyze([str(CMU1), "--model", "path-lung-tissue", "--out", str(out), "--top-tiles", "1",
                   "--heatmap-format", "npz"])
    assert rc == 0
    (it,) = json.loads((out / "results.json").read_text())["items"]
    assert it["slide"]["mpp"] == pytest.approx([0.499, 0.499])
    _check_item(it, out, (2220, 2967), 0.499)
    assert it["files"]["heatmaps"].endswith(".npz")


def test_small_tiles_use_the_image_path(model, tmp_path):
    files, _ = _tiles(1)
    out = tmp_path / "one"
    assert _analyze([str(files[0]), "--model", "path-lung-tissue", "--out", str(out)]) == 0
    (it,) = json.loads((out / "results.json").read_text())["items"]
    assert it["kind"] == "image" and set(it["probabilities"]) == set(model.card.labels)


def test_cancel_returns_partial_heat_map(model, tmp_path):
    import threading

    from imaging_assist.slides.analysis import analyze_slide

    need(CMU1)
    ev = threading.Event()

    def prog(done, total):
        if done >= 8:
            ev.set()

    it = analyze_slide(CMU1, model, tmp_path, "c", batch_size=4, top_k=1, explain=False,
                       progress=prog, cancel=ev)
    assert it["cancelled"] is True
    assert 8 <= it["tiling"]["n_tiles_run"] < it["tiling"]["n_tissue_tiles"]


def test_tiles_in_parts_in_any_order_equal_one_run(model, tmp_path):
    """What batch's workers do with one slide (plan, tiles in parts on several processes,
    finish) gives analyze_slide's item; a missing part ends the run there (as a cancel)."""
    import random

    from imaging_assist.slides.analysis import TileModel, analyze_slide, finish_slide, plan_slide, score_tiles
    from imaging_assist.slides.heatmap_io import read_heatmaps
    from imaging_assist.slides.tiling import plan_part

    need(CMU1)
    ref = analyze_slide(CMU1, model, tmp_path / "one", "c", batch_size=8, top_k=2, explain=False,
                        heatmap_format="npz")
    sp = plan_slide(CMU1, model.card)
    fn = TileModel(model, "cpu")
    n = len(sp.plan)
    assert n == ref["tiling"]["n_tissue_tiles"] and n > 16
    parts = [score_tiles(CMU1, plan_part(sp.plan, s, s + 8), fn, start=s, batch_size=8) for s in range(0, n, 8)]
    random.Random(0).shuffle(parts)
    it = finish_slide(sp, fn, tmp_path / "parts", "c", parts, top_k=2, explain=False, heatmap_format="npz",
                      batch_size=8)
    assert it["tiling"]["parts"] == len(parts) == -(-n // 8) and it["tiling"]["workers"] == 1
    assert it["cancelled"] is False and it["tiling"]["n_tiles_run"] == n
    for k in ("areas", "area_fraction", "warnings"):
        assert it[k] == ref[k], k
    for lab, p in ref["mean_probabilities"].items():
        assert abs(it["mean_probabilities"][lab] - p) <= 1e-5
    for lab, tops in ref["top_tiles"].items():
        assert [(t["x"], t["y"]) for t in it["top_tiles"][lab]] == [(t["x"], t["y"]) for t in tops]
    a, _ = read_heatmaps(tmp_path / "one" / ref["files"]["heatmaps"])
    b, _ = read_heatmaps(tmp_path / "parts" / it["files"]["heatmaps"])
    assert np.isfinite(a).sum() == n * a.shape[0]
    np.testing.assert_allclose(np.nan_to_num(b, nan=-1), np.nan_to_num(a, nan=-1), atol=1e-5)
    assert abs(it["ood"]["score"] - ref["ood"]["score"]) <= 1e-6
    # the middle part never came back: the heat map stops after the first part, said so
    gap = [p for p in parts if p.start != 8]
    it = finish_slide(sp, fn, tmp_path / "gap", "c", gap, top_k=1, explain=False, heatmap_format="npz")
    assert it["cancelled"] is True and it["tiling"]["n_tiles_run"] == 8
    assert f"cancelled after 8 of {n} tiles" in it["warnings"]


def test_a_slide_without_tissue_is_an_error_not_zero_areas(model, tmp_path):
    """Glass only: analyze says there was nothing to analyse (as the viewer does), instead of an
    item whose areas are all 0 (which would read as "no tumour")."""
    from imaging_assist.errors import UserError
    from imaging_assist.slides.analysis import analyze_slide
    from imaging_assist.slides.synth import make_levels, write_pyramid_tiff

    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 3, (1200, 1200, 3)), 0, 255).astype(np.uint8)
    path = write_pyramid_tiff(tmp_path / "glass.tif", make_levels(glass, 256), tile=256, mpp=0.35)
    with pytest.raises(UserError, match="no tissue tile to analyse on this slide"):
        analyze_slide(path, model, tmp_path / "out", "glass", explain=False)
    out = tmp_path / "cli"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _analyze([str(path), "--model", "path-lung-tissue", "--out", str(out)]) == 1
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    assert lines == [f"error: {path}: no tissue tile to analyse on this slide (the tissue detection found "
                     "no tile at least 50% tissue: a blank or badly focused scan?)"], err.getvalue()
