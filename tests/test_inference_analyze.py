"""`imaging-assist analyze`: plain-image folders (PNG label maps of the input's size, NumPy
heat maps) and DICOM series (NIfTI on the same patient voxels), results.json schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from imaging_assist.cli import build_parser
from imaging_assist.models.build import save_model_folder

COMMON = {"version": "2.1", "license": "MIT", "intended_use": "tests", "not_for_clinical_use": True,
          "data": {"training": "none", "validation": "none"}}
from conftest import CT_PHANTOM as CT_DIR  # noqa: E402


def cli(argv) -> int:
    """The handler itself (UserError propagates; `main` would print it as one line)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def _threshold(nd):
    conv = (nn.Conv2d if nd == 2 else nn.Conv3d)(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-20.0, 20.0]).reshape((2, 1) + (1,) * nd))
        conv.bias.copy_(torch.tensor([10.0, -10.0]))
    return conv


@pytest.fixture()
def png_folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = {}
    for name, shape in (("a.png", (40, 56)), ("sub/b.png", (33, 47))):
        a = rng.integers(0, 60, shape).astype(np.uint8)
        a[5:20, 10:30] = 220
        Image.fromarray(a).save(d / name)
        imgs[name] = a
    rgb = np.zeros((30, 30, 3), np.uint8)
    rgb[10:20, 5:25] = (250, 240, 230)
    Image.fromarray(rgb).save(d / "c.jpg", quality=100)
    imgs["c.jpg"] = rgb
    (d / "labels.csv").write_text("file,label\n")
    return d, imgs


def test_analyze_plain_png_folder_with_segmenter(tmp_path, png_folder):
    d, imgs = png_folder
    card = dict(COMMON, id="bright2d", name="bright", task="segmentation", modality=["OT"],
                spatial_dims=2, labels=["background", "bright"],
                input={"channels": 1, "roi_size": [16, 16],
                       "intensity": {"type": "scale_range", "a_min": 0, "a_max": 255}},
                inference={"roi_multiple": 8})
    save_model_folder(tmp_path / "model", card, _threshold(2), fmt="torchscript",
                      example_input=torch.zeros(1, 1, 8, 8))
    out = tmp_path / "out"
    rc = cli(["analyze", str(d), "--model", str(tmp_path / "model"), "--explain", "saliency",
              "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema_version"] == 1 and doc["not_for_clinical_use"] is True
    assert doc["model"]["id"] == "bright2d" and len(doc["model"]["sha256"]["model.ts"]) == 64
    items = {Path(it["source"]).relative_to(d).as_posix(): it for it in doc["items"]}
    assert set(items) == {"a.png", "sub/b.png", "c.jpg"}
    for name, it in items.items():
        img = imgs[name]
        gray = img if img.ndim == 2 else (img.astype(np.float32) @ [0.299, 0.587, 0.114])
        assert it["model"] == "bright2d" and it["kind"] == "image" and it["has_geometry"] is False
        lm = np.array(Image.open(out / it["label_map"]))
        assert lm.shape == gray.shape and lm.dtype == np.uint8
        np.testing.assert_array_equal(lm, (gray > 127.5).astype(np.uint8))
        assert it["area_px"]["bright"] == int(lm.sum()) and it["area_mm2"] is None
        assert it["volume_ml"] is None
        hm = it["heatmaps"][0]
        h = np.load(out / hm["file"])
        assert h.shape == gray.shape and h.dtype == np.float32
        assert h[lm == 1].mean() > 10 * max(h[lm == 0].mean(), 1e-9)
        assert hm["method"] == "saliency" and hm["faithfulness"]["random_deletion_auc"] >= 0
        for k in it["key_images"]:
            assert Image.open(out / k).size == (gray.shape[1], gray.shape[0])
    assert any("colour image converted" in w for w in items["c.jpg"]["warnings"])


def test_analyze_png_folder_with_classifier_and_errors(tmp_path, png_folder):
    d, _ = png_folder

    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _threshold(2)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.conv(x)).flatten(1)

    card = dict(COMMON, id="meancls", name="m", task="classification", modality="OT", spatial_dims=2,
                labels=["dark", "bright"], thresholds={"bright": {"threshold": 0.3, "sensitivity": 0.8,
                                                                  "specificity": 0.6}},
                input={"channels": 1, "size": [16, 16],
                       "intensity": {"type": "scale_range", "a_min": 0, "a_max": 255}})
    save_model_folder(tmp_path / "m", card, Mean(), fmt="torchscript",
                      example_input=torch.zeros(1, 1, 16, 16))
    out = tmp_path / "o"
    (d / "broken.png").write_bytes(b"not a png")
    assert cli(["analyze", str(d), "--model", str(tmp_path / "m"), "--out", str(out)]) == 1
    doc = json.loads((out / "results.json").read_text())
    ok = [it for it in doc["items"] if "error" not in it]
    bad = [it for it in doc["items"] if "error" in it]
    assert len(ok) == 3 and len(bad) == 1 and "broken.png" in bad[0]["error"]
    for it in ok:
        p = it["probabilities"]
        assert set(p) == {"dark", "bright"} and abs(sum(p.values()) - 1) < 1e-5
        dec = it["decisions"]["bright"]
        # the card has validation figures only: a decision never quotes them (issue 14)
        assert dec["positive"] == (p["bright"] >= 0.3) and dec["specificity"] is None
        assert it["decisions"]["dark"] is None
    # Grad-CAM on TorchScript: a clear one-line error, not a crash
    rc = cli(["analyze", str(d / "a.png"), "--model", str(tmp_path / "m"), "--explain",
              "--out", str(tmp_path / "o2")])
    it = json.loads((tmp_path / "o2" / "results.json").read_text())["items"][0]
    assert rc == 1 and "TorchScript" in it["error"] and "\n" not in it["error"]


def test_analyze_dicom_ct_writes_nifti_on_the_same_voxels(tmp_path):
    from conftest import need
    from imaging_assist.dicom import load_series, scan

    src = tmp_path / "ct"
    src.mkdir()
    files = sorted(need(CT_DIR).glob("*.dcm"), key=lambda f: int(f.stem[1:]))[60:72]  # contiguous slices
    for f in files:
        shutil.copy(f, src / f.name)
    card = dict(COMMON, id="bone3d", name="bone", task="segmentation", modality=["CT"],
                spatial_dims=3, labels=["background", "bone"],
                input={"channels": 1, "roi_size": [32, 32, 32], "spacing": [2.0, 2.0, 2.0],
                       "orientation": "RAS", "units": "HU",
                       "intensity": {"type": "window", "center": 300, "width": 600}},
                inference={"roi_multiple": 8})
    save_model_folder(tmp_path / "bone", card, _threshold(3), fmt="torchscript",
                      example_input=torch.zeros(1, 1, 8, 8, 8))
    out = tmp_path / "out"
    assert cli(["analyze", str(src), "--model", str(tmp_path / "bone"), "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    (it,) = doc["items"]
    assert it["kind"] == "series" and it["series_uid"] and it["has_geometry"] is True
    import nibabel as nib

    vol = load_series(scan(str(src)).all_series()[0])
    img = nib.load(out / it["label_map"])
    lm = np.asarray(img.dataobj)
    assert lm.shape == vol.array.shape[::-1]  # (i, j, k)
    ras = np.diag([-1, -1, 1, 1]) @ vol.affine
    np.testing.assert_allclose(img.affine, ras, atol=1e-4)
    bone = vol.array > 300
    lab = np.transpose(lm, (2, 1, 0)) == 1
    assert 2 * (lab & bone).sum() / (lab.sum() + bone.sum()) > 0.8
    vox_ml = abs(np.linalg.det(vol.affine[:3, :3])) / 1000
    assert it["volume_ml"]["bone"] == pytest.approx(lab.sum() * vox_ml, rel=1e-4)
    # a CT model on a folder of PNGs: nothing matches -> one-line user error
    from imaging_assist.errors import UserError

    pngs = tmp_path / "p"
    pngs.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pngs / "x.png")
    with pytest.raises(UserError, match="nothing in .* matches model bone3d"):
        cli(["analyze", str(pngs), "--model", str(tmp_path / "bone"), "--out", str(out)])


def test_analyze_names_each_part_of_a_split_series(tmp_path):
    """Two parts of one series UID (mixed sizes) must not overwrite each other's outputs."""
    from _synth import write_ct_series

    uid = "1.2.826.0.1.3680043.8.498.1"
    write_ct_series(tmp_path / "s" / "a", [(0, 0, z) for z in (0, 2, 4, 6)], rows=32, cols=32,
                    spacing=(2.0, 2.0), series_uid=uid)
    write_ct_series(tmp_path / "s" / "b", [(0, 0, z) for z in (0, 2, 4)], rows=24, cols=24,
                    spacing=(2.0, 2.0), series_uid=uid)
    card = dict(COMMON, id="bone3d", name="bone", task="segmentation", modality=["CT"],
                spatial_dims=3, labels=["background", "bone"],
                input={"channels": 1, "roi_size": [16, 16, 16], "units": "HU",
                       "intensity": {"type": "window", "center": 300, "width": 600}})
    save_model_folder(tmp_path / "bone", card, _threshold(3), fmt="torchscript",
                      example_input=torch.zeros(1, 1, 8, 8, 8))
    out = tmp_path / "out"
    assert cli(["analyze", str(tmp_path / "s"), "--model", str(tmp_path / "bone"), "--out", str(out)]) == 0
    items = json.loads((out / "results.json").read_text())["items"]
    maps = [it["label_map"] for it in items]
    assert len(items) == 2 and len(set(maps)) == 2
