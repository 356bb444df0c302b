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
