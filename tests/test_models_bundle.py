"""MONAI bundles: real Model Zoo configs (without weights) from ../shared/data, random
weights written by the test, run through imaging-assist and through MONAI's own pipeline
(LoadImaged from a file, the bundle's transforms, inferer and postprocessing); the results
must be identical."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, need

from imaging_assist.inference.pipelines import RunOptions, run_model
from imaging_assist.inference.results import save_nifti
from imaging_assist.models.bundle import derive_card
from imaging_assist.models.loaders import ModelLoadError, WeightsMismatchError, load_model
from imaging_assist.volume import Volume

BUNDLES = SHARED / "monai_bundles"
@pytest.fixture(autouse=True)
def _bundles_present():
    need(BUNDLES)  # shared test data: missing fails, never skips


def _copy_bundle(name: str, tmp_path: Path, md5_matches: bool = True) -> Path:
    """Copy the config-only bundle and write random weights for its network_def."""
    from monai.bundle import ConfigParser

    dst = tmp_path / name
    shutil.copytree(BUNDLES / name, dst)
    p = ConfigParser()
    p.read_config(str(dst / "configs" / "inference.json"))
    nd = p["network_def"]
    if isinstance(nd, dict) and nd.get("pretrained") is True:
        p["network_def#pretrained"] = False  # never download in tests
    torch.manual_seed(0)
    net = p.get_parsed_content("network_def")
    (dst / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), dst / "models" / "model.pt")
    if md5_matches:  # as if the zoo had published the hash of these weights
        md5 = hashlib.md5((dst / "models" / "model.pt").read_bytes()).hexdigest()
        (dst / "large_files.yml").write_text(
            f'large_files:\n- path: "models/model.pt"\n  url: "https://example.invalid/model.pt"\n'
            f'  hash_val: "{md5}"\n  hash_type: "md5"\n')
    return dst


def _reference(bundle: Path, filename: str):
    """What MONAI itself does with the bundle on a file (SaveImaged left out)."""
    import monai.transforms as mt
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(bundle / "configs" / "inference.json"))
    p["bundle_root"] = str(bundle)
    p["device"] = "$torch.device('cpu')"
    if isinstance(p["network_def"], dict) and p["network_def"].get("pretrained") is True:
        p["network_def#pretrained"] = False
    net = p.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    pre = p.get_parsed_content("preprocessing")
    inferer = p.get_parsed_content("inferer")
    d = pre({"image": filename})
    with torch.no_grad():
        pred = inferer(d["image"][None], net)
    d["pred"] = pred[0]
    if "postprocessing" in p:
        post = p.get_parsed_content("postprocessing")
        post = mt.Compose([t for t in post.transforms if type(t).__name__ != "SaveImaged"])
        d = post(d)
    return d["pred"]


def test_spleen_bundle_runs_unchanged_and_matches_monai(tmp_path):
    b = _copy_bundle("spleen_ct_segmentation", tmp_path)
    card = derive_card(b)
    assert card.format == "monai_bundle" and card.task == "segmentation"
    assert card.spatial_dims == 3 and card.modality == ["CT"]
    assert card.labels == ["background", "spleen"]
    assert card.weights[0].md5 and card.weights[0].hash_source == "large_files.yml"
    model = load_model(card)
    # A small CT-like volume with a non-trivial LPS geometry (rows along -y, slices along +z).
    rng = np.random.default_rng(0)
    arr = rng.normal(40, 60, (12, 40, 36)).astype(np.float32)
    arr[4:9, 10:25, 8:20] = 150
    direction = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])
    vol = Volume(arr, spacing=(1.2, 1.1, 2.5), origin=(-20.0, 15.0, 30.0), direction=direction,
                 modality="CT", units="HU", slice_positions=np.arange(12) * 2.5)
    res = run_model(model, vol, RunOptions(device="cpu"))
    assert res.label_map.shape == arr.shape
    nii = tmp_path / "ct.nii.gz"
    save_nifti(arr, vol.affine, nii)
    ref = np.asarray(_reference(b, str(nii)))  # (1, i, j, k) after Invertd + argmax
    ref_kji = np.transpose(ref[0], (2, 1, 0)).astype(np.uint8)
    assert ref_kji.shape == res.label_map.shape
    agree = float((ref_kji == res.label_map).mean())
    assert agree == 1.0, agree
    # volume in mL from the voxel size
    n = int((res.label_map == 1).sum())
    assert res.volume_ml["spleen"] == pytest.approx(n * 1.2 * 1.1 * 2.5 / 1000, rel=1e-6)


def test_bundle_with_published_hash_mismatch_is_refused(tmp_path):
    b = _copy_bundle("spleen_ct_segmentation", tmp_path, md5_matches=False)
    card = derive_card(b)  # large_files.yml still has the zoo's md5 of the real weights
    with pytest.raises(WeightsMismatchError) as ei:
        load_model(card)
    msg = str(ei.value)
    assert "\n" not in msg and "md5" in msg and "large_files.yml" in msg


def test_bundle_without_any_hash_is_refused(tmp_path):
    b = _copy_bundle("spleen_ct_segmentation", tmp_path)
    (b / "large_files.yml").unlink()
    card = derive_card(b)
    with pytest.raises(ModelLoadError, match="unverified"):
        load_model(card)


def test_endoscopic_2d_bundle_matches_monai_on_png(tmp_path, monkeypatch):
    """Its postprocessing has code (a Lambdad with ``$lambda``): refused until trusted."""
    from PIL import Image

    from imaging_assist.inference.images import read_image
    from imaging_assist.models.errors import ModelTrustError
    from imaging_assist.models.trust import trust

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    b = _copy_bundle("endoscopic_tool_segmentation", tmp_path)
    card = derive_card(b)
    assert card.spatial_dims == 2 and card.input.channels == 3
    with pytest.raises(ModelTrustError, match="Lambdad"):
        load_model(card)
    trust(b)
    model = load_model(card)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)  # H=60, W=90: not square
    img[10:30, 50:80] = 255
    f = tmp_path / "frame.png"
    Image.fromarray(img).save(f)
    res = run_model(model, read_image(f), RunOptions(device="cpu"))
    assert res.label_map.shape == (1, 60, 90)
    ref = np.asarray(_reference(b, str(f)))  # (1, W, H), 1 = tool
    ref_hw = ref[0].T
    assert ref_hw.shape == (60, 90)
    assert float((ref_hw.astype(np.uint8) == res.label_map[0]).mean()) == 1.0
    assert res.area_px is not None and res.area_mm2 is None  # plain PNG: no mm


def test_breast_density_classification_bundle_matches_monai(tmp_path):
    from PIL import Image

    from imaging_assist.inference.images import read_image

    b = _copy_bundle("breast_density_classification", tmp_path)
    card = derive_card(b)
    assert card.task == "classification" and card.labels == ["A", "B", "C", "D"]
    assert card.modality == ["MG"]
    model = load_model(card)
    assert any("pretrained" in n for n in model.notes)  # switched off, nothing downloaded
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)
    f = tmp_path / "mammo.png"
    Image.fromarray(img).save(f)
    res = run_model(model, read_image(f), RunOptions(device="cpu"))
    ref = np.asarray(_reference(b, str(f))).reshape(-1)  # sigmoid outputs
    ours = np.array([res.probabilities[k] for k in "ABCD"])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
