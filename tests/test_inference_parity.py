"""Parity of the model input across input paths (issue #12).

* Radiograph models were trained on display-processed 8-bit exports (JPEG/PNG).  With the
  card option ``input.dicom_values: "display"`` a DICOM radiograph goes through its display
  path (window / VOI LUT, MONOCHROME1 inversion) to 8 bits first, so the model sees what it
  would see on a PNG exported with the file's window.  Checked on a real Fuji CR
  (MONOCHROME1, 10 bit, window 550/1024); the PNG is rendered here with pydicom's own
  ``apply_voi_lut``, independently of the app's display code.
* A slide tile through the slide path (``TileModel``) and the same pixels through the image
  path give the same model input and probabilities.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import DICOM, ROOT, need

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def _pydicom_display_png(path, out):
    """8-bit PNG of a DICOM image as a display export makes it: VOI (window or LUT, by
    pydicom), scaled from the VOI output range to 0..255, MONOCHROME1 inverted, rounded."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    y = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    y = y / (2 ** int(ds.BitsStored) - 1) * 255.0
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 255.0 - y
    Image.fromarray(np.clip(np.rint(y), 0, 255).astype(np.uint8)).save(out)
    return out


def _card(model_id: str, **changes):
    from imaging_assist.models.card import load_card

    card = load_card(ROOT / "weights" / model_id)
    if changes:
        card = dataclasses.replace(card, input=dataclasses.replace(card.input, **changes))
    return card


def _one_grey_level(card, png_vol) -> float:
    """One step of the 8-bit image in model-input units for the shipped radiograph cards
    (0.5-99.5 percentile scaling to 0..1, then (x - mean) / std)."""
    steps = card.input.intensity
    assert [s["type"] for s in steps] == ["percentile", "normalize"], steps
    lo, hi = np.percentile(png_vol.array.astype(np.float64), [steps[0]["lower"], steps[0]["upper"]])
    return float(1.0 / (hi - lo) / float(steps[1]["std"][0]))


@pytest.fixture(scope="module")
def cr_volume():
    from imaging_assist.dicom import load_series, scan

    (series,) = scan(str(need(CR))).image_series()
    return load_series(series)


@pytest.fixture(scope="module")
def cr_png(cr_volume, tmp_path_factory):
    from imaging_assist.inference.images import read_image

    png = _pydicom_display_png(CR, tmp_path_factory.mktemp("cr") / "cr.png")
    return read_image(png)


@pytest.mark.parametrize("model_id", ["cxr-pneumonia", "cxr-lung-seg"])
def test_radiograph_cards_read_dicom_through_the_display_path(model_id, cr_volume, cr_png):
    """The DICOM model input equals the PNG export's within one 8-bit grey level."""
    from imaging_assist.inference.pipelines import model_input

    card = _card(model_id)
    assert card.input.dicom_values == "display"
    assert cr_png.array.shape == cr_volume.array.shape
    # What the PNG holds is the window of the file, not the raw 10-bit values: the lungs
    # (dark on the display) stay dark, bone bright.
    a = model_input(card, cr_volume).numpy()
    b = model_input(card, cr_png).numpy()
    assert a.shape == b.shape
    one_level = _one_grey_level(card, cr_png)
    diff = np.abs(a - b)
    assert diff.max() <= one_level * 1.001 + 1e-6, (diff.max(), one_level)
    assert diff.mean() < 0.05 * one_level  # nearly all pixels identical


def test_modality_values_stay_the_default(cr_volume, cr_png):
    """Cards without the option keep today's behaviour (stored values, the card's own
    normalisation), which on this file is several grey levels away from the export's."""
    from imaging_assist.inference.pipelines import model_input

    card = _card("cxr-pneumonia", dicom_values="modality")
    a = model_input(card, cr_volume).numpy()
    b = model_input(card, cr_png).numpy()
    assert np.abs(a - b).max() > 2 * _one_grey_level(card, cr_png)


@pytest.mark.parametrize("model_id", ["cxr-pneumonia", "cxr-lung-seg"])
def test_shipped_radiograph_models_agree_on_dicom_and_its_png_export(model_id, cr_volume, cr_png):
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.loaders import load_model

    model = load_model(_card(model_id))
    a = run_model(model, cr_volume, RunOptions(device="cpu"))
    b = run_model(model, cr_png, RunOptions(device="cpu"))
    assert any("display" in w for w in a.warnings)
    if model_id == "cxr-pneumonia":
        for lab in a.probabilities:
            assert a.probabilities[lab] == pytest.approx(b.probabilities[lab], abs=2e-3)
        assert a.decisions == b.decisions
    else:
        same = (a.label_map == b.label_map).mean()
        assert same > 0.999, same


def test_invalid_dicom_values_is_a_card_error():
    import json

    from imaging_assist.models.card import ModelCardError, validate_card

    d = json.loads((ROOT / "weights" / "cxr-pneumonia" / "model.json").read_text())
    d["input"]["dicom_values"] = "raw"
    with pytest.raises(ModelCardError, match="dicom_values"):
        validate_card(d)


# --------------------------------------------------------------------------- slide tiles
TILE_CARDS = {
    "linear": ({"size": [64, 64], "intensity": [
        {"type": "scale_range", "a_min": 0, "a_max": 255},
        {"type": "normalize", "mean": [0.73, 0.545, 0.915], "std": [0.17, 0.195, 0.13]}]}, 64),
    "window_shrink_area": ({"size": [64, 64], "intensity": [{"type": "window", "center": 120, "width": 200}]}, 96),
    "percentile_enlarge": ({"size": [64, 64], "intensity": [
        {"type": "percentile", "lower": 1, "upper": 99},
        {"type": "normalize", "mean": [0.5] * 3, "std": [0.25] * 3}]}, 48),
    "zscore_minmax": ({"size": [64, 64], "intensity": [{"type": "minmax"}, {"type": "zscore"}]}, 64),
    "resize_nearest": ({"size": [64, 64], "resize_mode": "nearest",
                        "intensity": [{"type": "scale_range", "a_min": 0, "a_max": 255}]}, 80),
    "resize_bicubic": ({"size": [64, 64], "resize_mode": "bicubic",
                        "intensity": [{"type": "scale_range", "a_min": 0, "a_max": 255}]}, 40),
}


class _TileNet(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)


@pytest.mark.parametrize("name", sorted(TILE_CARDS))
def test_slide_tile_and_image_path_give_the_same_model_input(name, tmp_path):
    """``TileModel`` (batched slide tiles) uses the card's transforms: the model input of a
    tile equals the image path's (``model_input`` on the same RGB pixels) to 1e-5, for
    linear and per-image intensity steps and every resize mode."""
    from imaging_assist.inference.pipelines import model_input
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model
    from imaging_assist.slides.analysis import TileModel
    from imaging_assist.volume import Volume

    inp, tile_px = TILE_CARDS[name]
    card = {"id": "tile-" + name.replace("_", "-"), "name": "t", "version": "1", "task": "classification",
            "modality": ["SM"], "spatial_dims": 2, "labels": ["mean", "std"],
            "input": dict(channels=3, **inp), "data": {"training": "-", "validation": "-"},
            "license": "-", "intended_use": "-", "not_for_clinical_use": True,
            "slide": {"tile_px": tile_px, "mpp": 1.0}}
    save_model_folder(tmp_path / "m", card, _TileNet(), fmt="torchscript",
                      example_input=torch.zeros(1, 3, 64, 64))
    model = load_model(load_card(tmp_path / "m"))
    rng = np.random.default_rng(7)
    tiles = rng.integers(0, 256, (3, tile_px, tile_px, 3)).astype(np.uint8)
    tiles[1] = np.clip(tiles[1] // 3 + 100, 0, 255)  # a second intensity distribution
    x = tiles.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # what run_tiles hands over
    fn = TileModel(model, "cpu")
    got = fn.preprocess(x).cpu().numpy()
    ref = np.stack([model_input(model.card, Volume(t[None], photometric="RGB", has_geometry=False)).numpy()
                    for t in tiles])
    assert got.shape == ref.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
