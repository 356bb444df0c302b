"""Explanations of results that cannot be trusted: a result withheld as outside the training
population explains the finding it is about (not its top label), and a blank image is refused
rather than scored and explained (its heat map was zero-padding artefacts)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT, SHARED, need
from imaging_assist.explain.methods import ExplainConfig
from imaging_assist.inference.images import read_image
from imaging_assist.inference.pipelines import InputError, RunOptions, run_model
from imaging_assist.models.card import load_card
from imaging_assist.models.loaders import load_model

W = ROOT / "weights"
BENIGN_022 = SHARED / "ultrasound" / "breast_busi" / "benign" / "benign_022.jpg"


@pytest.fixture(scope="module")
def us_breast():
    return load_model(load_card(W / "us-breast"))


@pytest.mark.parametrize("flagged", [False, True])
def test_a_withheld_result_explains_the_label_over_its_threshold(us_breast, monkeypatch, flagged):
    """BUSI benign_022: benign is the top label, malignant is over its threshold (the finding).
    Withheld as outside the population, the heat map explained benign (the top label): the
    reader checking where the model sees malignancy got another label's map."""
    from imaging_assist.validation import ood

    if flagged:  # this image as if its features were unlike the training images
        real = ood.attach_block
        monkeypatch.setattr(ood, "attach_block", lambda res, d: real(res, {**d, "flagged": True}))
    vol = read_image(need(BENIGN_022))
    res = run_model(us_breast, vol, RunOptions(device="cpu", explain=ExplainConfig("gradcam")))
    p, thr = res.probabilities, us_breast.card.thresholds["malignant"].threshold
    assert max(p, key=p.get) == "benign" and p["malignant"] >= thr, (p, thr)
    assert res.ood["flagged"] is flagged
    assert (res.decisions["malignant"]["positive"] is None) is flagged
    assert [h.label for h in res.heatmaps] == ["malignant"]


@pytest.mark.parametrize("value", [0, 128, -1000.5])
def test_a_blank_image_is_refused_in_one_line(us_breast, value):
    vol = read_image(need(BENIGN_022))
    vol.array = np.full_like(vol.array, value, dtype=np.float32 if value % 1 else vol.array.dtype)
    with pytest.raises(InputError, match=r"the image is blank \(every pixel value is ") as e:
        run_model(us_breast, vol, RunOptions(device="cpu", explain=ExplainConfig("gradcam")))
    assert "\n" not in str(e.value)
