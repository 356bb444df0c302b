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


def test_metric_writes_the_interval_as_computed():
    """The card shows the bootstrap interval as computed, rounded only: a point outside its
    interval (skewed statistics such as ECE) is information, not something to widen away."""
    m = E.metric("ECE", 0.0724, (0.07512, 0.15071), 104, "test")
    assert m["ci95"] == [0.0751, 0.1507] and m["value"] == 0.0724 and m["n"] == 104
    m = E.metric("AUC", 0.9, (0.81234, 0.95678), 300, "test", "x")
    assert m["ci95"] == [0.8123, 0.9568] and m["label"] == "x"


def test_bootstrap_ci_of_a_mean_matches_normal_theory():
    """Known answer: for the mean of 400 normal values the percentile bootstrap interval is
    mean +- 1.96 s / sqrt(n) (to Monte Carlo error, ~2 % of the half-width at 4,000 resamples)."""
    x = np.random.default_rng(3).normal(10.0, 2.0, 400)
    lo, hi = E.bootstrap_ci(np.mean, x, n_boot=4000, seed=0)
    half = 1.959964 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def _auc_data(n=240, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.random(n) + 0.5 * y


def test_cluster_bootstrap_with_one_image_per_cluster_equals_the_plain_one():
    y, s = _auc_data()
    ids = np.array([f"patient-{k}" for k in np.random.default_rng(2).permutation(len(y))])  # any names
    plain = E.bootstrap_ci(E.roc_auc, y, s, strata=y, n_boot=300, seed=7)
    assert E.bootstrap_ci(E.roc_auc, y, s, clusters=ids, strata=y, n_boot=300, seed=7) == plain
    assert E.bootstrap_ci(E.roc_auc, y, s, clusters=np.arange(len(y)), strata=y, n_boot=300, seed=7) == plain
    assert E.one_row_per_cluster(ids) and not E.one_row_per_cluster(["a", "a", "b"])


def test_cluster_bootstrap_of_duplicated_images_equals_the_patient_level_interval():
    """Each patient's image stored three times (identical scores): resampling patients gives
    exactly the interval of the de-duplicated data (AUC is unchanged by tripling every image);
    resampling images pretends to have 3x the patients and is ~sqrt(3) too narrow."""
    y, s = _auc_data(150)
    yd, sd, pid = np.repeat(y, 3), np.repeat(s, 3), np.repeat(np.arange(len(y)), 3)
    assert E.roc_auc(yd, sd) == pytest.approx(E.roc_auc(y, s), abs=1e-12)
    direct = E.bootstrap_ci(E.roc_auc, y, s, strata=y, n_boot=500, seed=4)
    clustered = E.bootstrap_ci(E.roc_auc, yd, sd, clusters=pid, strata=yd, n_boot=500, seed=4)
    naive = E.bootstrap_ci(E.roc_auc, yd, sd, strata=yd, n_boot=500, seed=4)
    assert clustered == pytest.approx(direct, abs=1e-12)
    w_c, w_n = clustered[1] - clustered[0], naive[1] - naive[0]
    assert w_n < 0.75 * w_c  # expected ratio 1/sqrt(3) = 0.58


def _clustered_sample(rng, n_clusters=150, size=5, sd_between=1.0, sd_within=0.5):
    """Rows of equal-size clusters with a random cluster effect (intra-cluster correlation 0.8)."""
    effect = rng.normal(0, sd_between, n_clusters)
    x = np.repeat(effect, size) + rng.normal(0, sd_within, n_clusters * size)
    return x, np.repeat(np.arange(n_clusters), size)


def test_cluster_bootstrap_of_a_mean_matches_cluster_level_theory():
    """Known answer: with equal cluster sizes the mean of all rows is the mean of the cluster
    means, whose 95% interval is mean +- 1.96 sd(cluster means) / sqrt(clusters)."""
    x, cl = _clustered_sample(np.random.default_rng(5), n_clusters=300)
    means = x.reshape(300, 5).mean(1)
    half = 1.959964 * means.std(ddof=1) / np.sqrt(300)
    lo, hi = E.bootstrap_ci(np.mean, x, clusters=cl, n_boot=3000, seed=1)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)
    lo_n, hi_n = E.bootstrap_ci(np.mean, x, n_boot=3000, seed=1)
    assert hi_n - lo_n < 0.6 * (hi - lo)  # design effect 1 + 4 x 0.8 = 4.2: naive ~0.49 as wide


def test_cluster_bootstrap_coverage_on_simulated_data():
    """Coverage of the true mean (0) over 80 simulated data sets (fixed seed): the cluster
    bootstrap covers about 95 %, the per-row bootstrap far less (~66 % expected)."""
    rng = np.random.default_rng(11)
    hit_c = hit_n = 0
    runs = 80
    for r in range(runs):
        x, cl = _clustered_sample(rng, n_clusters=60)
        lo, hi = E.bootstrap_ci(np.mean, x, clusters=cl, n_boot=250, seed=r)
        hit_c += lo <= 0.0 <= hi
        lo, hi = E.bootstrap_ci(np.mean, x, n_boot=250, seed=r)
        hit_n += lo <= 0.0 <= hi
    assert hit_c / runs >= 0.87, hit_c
    assert hit_n / runs <= 0.80, hit_n


def test_sens_spec_ci_wilson_for_one_image_per_patient_else_cluster_bootstrap():
    y = np.array([1] * 40 + [0] * 60)
    s = np.r_[np.linspace(0.3, 1, 40), np.linspace(0, 0.6, 60)]
    thr = 0.5
    se, sp = E.sens_spec(y, s, thr)
    se_ci, sp_ci, how = E.sens_spec_ci(y, s, thr)
    assert se_ci == E.wilson_ci(round(se * 40), 40) and sp_ci == E.wilson_ci(round(sp * 60), 60)
    assert "Wilson" in how
    assert E.sens_spec_ci(y, s, thr, clusters=np.arange(100))[:2] == (se_ci, sp_ci)
    # three identical images per patient: the cluster bootstrap, equal to the patient-level one
    yd, sd, pid = np.repeat(y, 3), np.repeat(s, 3), np.repeat(np.arange(100), 3)
    se_d, sp_d, how_d = E.sens_spec_ci(yd, sd, thr, clusters=pid, seed=3, n_boot=400)
    assert "cluster bootstrap" in how_d
    pos = y == 1
    direct = E.bootstrap_ci(lambda a, b: E.sens_spec(a, b, thr)[0], y[pos], s[pos], seed=3, n_boot=400)
    assert se_d == pytest.approx(direct, abs=1e-12)
    assert se_d[0] <= se <= se_d[1] and sp_d[0] <= sp <= sp_d[1]


def test_sens_ci_not_pinned_by_a_cluster_with_two_labels():
    """25 of 26 positives found; the missed one shares its cluster with a negative image.
    Its miss must be resampled like any other (a label-stratified bootstrap would keep that
    mixed cluster in every resample and give about [0.96, 0.96])."""
    y = np.array([1] * 26 + [0] * 40)
    s = np.r_[0.1, np.full(25, 0.9), np.full(40, 0.1)]
    pid = np.r_[0, np.arange(1, 26), 0, np.arange(26, 65)]  # image 0 (missed) and image 26 share cluster 0
    se_ci, _, _ = E.sens_spec_ci(y, s, 0.5, clusters=pid, n_boot=1000)
    assert se_ci[0] < 0.89 and se_ci[1] == 1.0


def test_sens_spec_ci_never_collapses_to_a_point_at_zero_or_one():
    """Specificity 1.0 on 191 normals of 150 patients: a percentile bootstrap gives [1, 1]
    (certainty); the interval is the Wilson one on the 150 patients instead."""
    y = np.array([1] * 60 + [0] * 191)
    s = np.r_[np.linspace(0.4, 1, 60), np.full(191, 0.1)]
    pid = np.r_[np.repeat(np.arange(30), 2), 100 + np.arange(191) % 150]
    se_ci, sp_ci, how = E.sens_spec_ci(y, s, 0.5, clusters=pid, n_boot=300)
    assert sp_ci == E.wilson_ci(150, 150) and sp_ci[0] < 0.98
    assert se_ci[0] < se_ci[1] and "Wilson score interval on the number of clusters" in how


def test_dice_and_hausdorff95():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.roll(a, 2, axis=1)
    assert E.dice(a, a) == 1.0 and E.dice(a, b) == pytest.approx(0.8)
    assert E.hausdorff95(a, b) == pytest.approx(2.0)
    assert E.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
