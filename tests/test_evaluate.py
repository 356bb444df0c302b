"""imaging-assist evaluate: known-answer tests of every metric it reports (the same code as the
model cards, imaging_assist.evaluation), the clustered bootstrap, subgroups on real JSRT data,
the report files and one-line errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, need

from imaging_assist import evaluation as E

KERMANY = SHARED / "cxr" / "pneumonia_kermany" / "test"
JSRT = SHARED / "cxr" / "lung_masks_jsrt"


# --------------------------------------------------------------------------- known answers
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
S = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.7, 0.6, 0.3, 0.95, 0.05])


def test_sens_spec_of_an_absent_class_is_nan_not_0():
    se, sp = E.sens_spec([0, 0, 0], [0.1, 0.9, 0.2], 0.5)
    assert math.isnan(se) and sp == pytest.approx(2 / 3)
    se, sp = E.sens_spec([1, 1], [0.1, 0.9], 0.5)
    assert se == 0.5 and math.isnan(sp)


def test_predictive_values_known_answer():
    # threshold 0.5: predicted positive 0.8, 0.9, 0.7, 0.6, 0.95 -> TP 4 (0.9, 0.7, 0.6, 0.95), FP 1
    # predicted negative: 0.1, 0.4, 0.35, 0.3, 0.05 -> TN 4, FN 1 (0.3)
    ppv, npv = E.predictive_values(Y, S, 0.5)
    assert ppv == pytest.approx(4 / 5) and npv == pytest.approx(4 / 5)
    ppv, npv = E.predictive_values(Y, S, 0.99)  # nothing called positive: PPV undefined, not 0
    assert math.isnan(ppv) and npv == pytest.approx(5 / 10)


def test_auc_pr_curve_and_average_precision_match_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    assert E.roc_auc(Y, S) == pytest.approx(roc_auc_score(Y, S))
    assert E.roc_auc(Y, S) == pytest.approx(20 / 25)  # by hand: 20 of 25 pairs ordered
    prec, rec, thr = E.pr_curve(Y, S)
    assert rec[0] == 1.0 and rec[-1] == 0.0 and prec[-1] == 1.0
    assert E.average_precision(Y, S) == pytest.approx(average_precision_score(Y, S))


def test_ece_known_answer():
    # two bins: 0.15 -> observed 0/2 ; 0.85 -> observed 1/2 ; ECE = 0.5*0.15 + 0.5*0.35 = 0.25
    r = E.reliability([0, 0, 1, 0], [0.15, 0.15, 0.85, 0.85], n_bins=10)
    assert r.ece == pytest.approx(0.25)


def test_hausdorff95_in_millimetres_uses_the_pixel_spacing():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b[5:10, 8:13] = True  # shifted 3 columns
    px = E.hausdorff95(a, b)
    assert px == pytest.approx(3.0)
    assert E.hausdorff95(a, b, spacing=(2.0, 0.5)) == pytest.approx(1.5)  # (row, col) mm: columns 0.5 mm
    assert E.hausdorff95(a, b, spacing=(0.5, 2.0)) == pytest.approx(6.0)
    assert E.dice(a, b) == pytest.approx(2 * 10 / 50)


def test_clustered_bootstrap_resamples_whole_patients():
    # one patient with 50 identical positive images scored high and 50 patients with one
    # low-scored positive each: per image the mean is stable; per patient the big cluster is in
    # or out, so the interval must be much wider.
    y = np.ones(100)
    s = np.r_[np.ones(50), np.zeros(50)]
    clusters = np.r_[np.zeros(50), np.arange(1, 51)]
    mean = lambda a, b: float(b.mean())  # noqa: E731
    lo_i, hi_i = E.bootstrap_ci(mean, y, s, n_boot=500, seed=1)
    lo_c, hi_c = E.bootstrap_ci(mean, y, s, clusters=clusters, n_boot=500, seed=1)
    assert (hi_c - lo_c) > 2.5 * (hi_i - lo_i)
    # known answer: a draw holds the big patient k ~ Binomial(51, 1/51) times, so the mean is
    # 50k / (50k + 51 - k): 0 for k = 0 (P 0.36); P(k >= 4) = 0.019 < 2.5%, so the upper
    # limit is the k = 3 value 150 / 198
    assert lo_c == 0.0 and hi_c == pytest.approx(150 / 198)


def test_sensitivity_gap_known_answer():
    from imaging_assist.validation.evaluate import sensitivity_gap

    y = np.array([1] * 40 + [0] * 40 + [1] * 40 + [0] * 40)
    s = np.r_[np.r_[np.ones(36), np.zeros(4)], np.zeros(40), np.r_[np.ones(20), np.zeros(20)], np.zeros(40)]
    g = np.array(["a"] * 80 + ["b"] * 80)
    gap = sensitivity_gap(y, s, g, 0.5, clusters=None, n_boot=300)
    assert gap["groups"] == ["a", "b"] and gap["value"] == pytest.approx(0.9 - 0.5)
    assert gap["ci95"][0] < 0.4 < gap["ci95"][1]


def test_one_class_group_is_undefined_never_0_and_small_groups_flagged():
    from imaging_assist.validation.evaluate import classification_metrics

    m = classification_metrics(np.zeros(10, int), np.linspace(0, 1, 10), 0.5, n_boot=50)
    assert m["AUC"]["value"] is None and "undefined" in m["AUC"]["note"]
    assert m["sensitivity"]["value"] is None and "undefined" in m["sensitivity"]["note"]
    assert m["specificity"]["value"] == pytest.approx(0.5)
    assert m["too_small"] is True
