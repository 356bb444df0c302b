"""The metrics behind the model cards (imaging_assist/evaluation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imaging_assist import evaluation as E


def test_roc_auc_equals_monai_with_ties():
    from monai.metrics import compute_roc_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.random(400) + 0.4 * y, 1)  # rounded: many ties
    ours = E.roc_auc(y, s)
    ref = compute_roc_auc(torch.tensor(s), torch.tensor(y))
    assert ours == pytest.approx(float(ref), abs=1e-12)
    assert E.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert E.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(E.roc_auc([1, 1], [0.2, 0.3]))


def test_macro_auc_and_confusion_matrix():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    m, per = E.macro_auc(y, p)
    assert per[1] == 1.0 and m == pytest.approx(np.mean(per))
    assert E.confusion_matrix(y, p.argmax(1), 3) == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_threshold_for_sensitivity_and_sens_spec():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1, 0.05])
    t = E.threshold_for_sensitivity(y, s, 0.75)
    assert t == 0.7  # highest threshold keeping 3 of 4 positives
    assert E.sens_spec(y, s, t) == (0.75, 1.0)
    t = E.threshold_for_sensitivity(y, s, 1.0)
    assert t == 0.2 and E.sens_spec(y, s, t) == (1.0, 0.5)


def test_reliability_and_ece():
    # all predictions 0.8, 80 % positive: perfectly calibrated
    y = np.array([1] * 8 + [0] * 2)
    assert E.reliability(y, np.full(10, 0.8)).ece == pytest.approx(0.0)
    # all predictions 0.9, half positive: ECE 0.4
    r = E.reliability(np.array([1, 0] * 5), np.full(10, 0.9))
    assert r.ece == pytest.approx(0.4) and r.count[9] == 10


def test_wilson_interval_known_values():
    lo, hi = E.wilson_ci(191, 191)  # spec 1.0 on 191 normals: not [1, 1]
    assert hi == 1.0 and lo == pytest.approx(0.9803, abs=1e-4)
    lo, hi = E.wilson_ci(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_bootstrap_ci_contains_the_estimate_and_metric_entry():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.random(300) + 0.5 * y
    auc = E.roc_auc(y, s)
    lo, hi = E.bootstrap_ci(E.roc_auc, y, s, strata=y, n_boot=300)
    assert lo < auc < hi and hi - lo < 0.2
    m = E.metric("AUC", auc, (lo, hi), 300, "test", "x")
    assert m["ci95"][0] <= m["value"] <= m["ci95"][1] and m["n"] == 300


def test_dice_and_hausdorff95():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.roll(a, 2, axis=1)
    assert E.dice(a, a) == 1.0 and E.dice(a, b) == pytest.approx(0.8)
    assert E.hausdorff95(a, b) == pytest.approx(2.0)
    assert E.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
