"""Metrics for model cards: ROC AUC, operating points, calibration, confusion matrices,
Dice / Hausdorff, and percentile-bootstrap confidence intervals.

Every interval of every card comes from :func:`bootstrap_ci`, which resamples whole clusters
(patients, or near-duplicate groups where a data set has no patient ids): images of one
patient are not independent, and a per-image interval is too narrow.

Used by the training scripts (``scripts/train_*.py``) to write each shipped model's
``metrics.json`` and by the tests, which recompute the card's numbers from the stored
predictions.  numpy/scipy only (no torch), so a metrics file can be checked anywhere.

Precision-recall curves come from scikit-learn.  AUC is hand-written: MONAI's
``compute_roc_auc`` is a Python loop per call, too slow for 2,000 bootstrap resamples; the
rank (Mann-Whitney) formula below is the same statistic (a test compares the two).
scipy.stats.bootstrap does not resample clusters, hence the short loop in bootstrap_ci.
Hausdorff distance uses MONAI's ``compute_hausdorff_distance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import rankdata


# --------------------------------------------------------------------------- ranking
def roc_auc(y: Sequence[int], score: Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half).  ``y`` is 0/1."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(y: Sequence[int], probs: np.ndarray) -> tuple[float, list[float]]:
    """One-vs-rest AUC per class and their unweighted mean.  ``y`` holds class indices."""
    y = np.asarray(y)
    probs = np.asarray(probs)
    per = [roc_auc(y == k, probs[:, k]) for k in range(probs.shape[1])]
    return float(np.nanmean(per)), per


def roc_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for the decision ``score >= threshold``, thresholds descending."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, np.float64)
    thr = np.unique(s)[::-1]
    pos, neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last = np.searchsorted(-s_sorted, -thr, side="right") - 1  # last index with s >= thr
    tpr, fpr = tp[last] / pos, fp[last] / neg
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]


def sens_spec(y, score, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``score >= threshold``; nan (undefined, never 0) for a
    class with no cases."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score) >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = float((pred & y).sum() / n_pos) if n_pos else float("nan")
    spec = float((~pred & ~y).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


def predictive_values(y, score, threshold: float) -> tuple[float, float]:
    """PPV and NPV of ``score >= threshold`` at the prevalence of ``y``; nan (undefined) when
    nothing is called positive / negative."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score) >= threshold
    n_pp, n_pn = int(pred.sum()), int((~pred).sum())
    ppv = float((pred & y).sum() / n_pp) if n_pp else float("nan")
    npv = float((~pred & ~y).sum() / n_pn) if n_pn else float("nan")
    return ppv, npv


def pr_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) of scikit-learn's ``precision_recall_curve``."""
    from sklearn.metrics import precision_recall_curve

    return precision_recall_curve(np.asarray(y).astype(int), np.asarray(score, np.float64))


def average_precision(y, score) -> float:
    """Area under the precision-recall curve (scikit-learn's average precision); nan without
    positives."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y).astype(int)
    if y.sum() == 0:
        return float("nan")
    return float(average_precision_score(y, np.asarray(score, np.float64)))


def threshold_for_sensitivity(y, score, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity (``score >= t``) is at least ``target``."""
    fpr, tpr, thr = roc_curve(y, score)
    ok = np.nonzero(tpr >= target)[0]
    return float(thr[ok[0]])


# --------------------------------------------------------------------------- calibration
@dataclass
class Reliability:
    ece: float
    bin_edges: list[float]
    confidence: list[float | None]  # mean predicted probability per bin
    accuracy: list[float | None]  # observed frequency per bin
    count: list[int]


def reliability(y, prob, n_bins: int = 10) -> Reliability:
    """Binary calibration of P(positive): equal-width bins, ECE = sum |acc - conf| * n_b / n."""
    y = np.asarray(y, np.float64)
    p = np.asarray(prob, np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    conf, acc, cnt = [], [], []
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        cnt.append(n)
        if n == 0:
            conf.append(None)
            acc.append(None)
            continue
        c, a = float(p[m].mean()), float(y[m].mean())
        conf.append(round(c, 4))
        acc.append(round(a, 4))
        ece += abs(a - c) * n / len(p)
    return Reliability(float(ece), [float(e) for e in edges], conf, acc, cnt)


def top_label_ece(y, probs, n_bins: int = 10) -> Reliability:
    """Multi-class calibration on the top label's confidence."""
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    return reliability(pred == np.asarray(y), probs.max(1), n_bins)


def confusion_matrix(y_true, y_pred, n_classes: int) -> list[list[int]]:
    """Rows = true class, columns = predicted class."""
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return m.tolist()


# --------------------------------------------------------------------------- segmentation
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    s = pred.sum() + truth.sum()
    return 1.0 if s == 0 else float(2 * (pred & truth).sum() / s)


def hausdorff95(pred: np.ndarray, truth: np.ndarray, spacing=None) -> float:
    """95th-percentile symmetric Hausdorff distance (MONAI); nan if either is empty.  In pixels,
    or in mm with ``spacing`` given per array axis (e.g. (row, column) mm)."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return float("nan")
    p = torch.from_numpy(pred)[None, None].float()
    t = torch.from_numpy(truth)[None, None].float()
    sp = None if spacing is None else [float(v) for v in spacing]
    return float(compute_hausdorff_distance(p, t, percentile=95.0, spacing=sp)[0, 0])


# --------------------------------------------------------------------------- bootstrap
def _cluster_index(clusters, n: int) -> np.ndarray:
    """Cluster number per row, numbered by first appearance (0, 1, ...); each row its own
    cluster when ``clusters`` is None."""
    if clusters is None:
        return np.arange(n)
    clusters = np.asarray(clusters)
    if len(clusters) != n:
        raise ValueError(f"clusters has {len(clusters)} entries for {n} rows")
    _, first, inv = np.unique(clusters, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.ravel()]


def one_row_per_cluster(clusters) -> bool:
    """True when no cluster (patient, near-duplicate group) holds more than one row."""
    return clusters is None or len(np.unique(np.asarray(clusters))) == len(clusters)


def bootstrap_ci(stat: Callable[..., float], *arrays, clusters=None, strata=None,
                 n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(*arrays)``: the one interval of every card.

    ``clusters`` (patient ids, near-duplicate groups): whole clusters are resampled with
    replacement, so images of one patient stay together and the interval reflects the number
    of independent patients, not of images (Field & Welsh 2007, "cluster bootstrap").  Without
    ``clusters`` each row is its own cluster; with one row per cluster both give the same
    resamples for the same seed (clusters are numbered by first appearance).

    ``strata`` (e.g. the labels): clusters are resampled within each stratum, so every
    resample keeps the number of clusters per class and AUC is always defined.  A cluster's
    stratum is the set of strata of its rows (a cluster with mixed labels is a stratum of its
    own kind).  Resamples where ``stat`` is nan are dropped.

    The interval is reported as computed: the point estimate can lie outside it (for skewed
    statistics near 0 or 1) and that is information, not something to hide.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    cid = _cluster_index(clusters, n)
    n_cl = int(cid.max()) + 1 if n else 0
    order = np.argsort(cid, kind="stable")  # rows grouped by cluster
    sizes = np.bincount(cid, minlength=n_cl)
    starts = np.cumsum(sizes) - sizes
    if strata is None:
        pools = [np.arange(n_cl)]
    else:
        st = np.asarray(strata)
        keys = [tuple(sorted(set(st[order[a:a + b]].tolist()))) for a, b in zip(starts, sizes)]
        kinds = sorted(set(keys))
        pools = [np.array([c for c in range(n_cl) if keys[c] == k]) for k in kinds]
    vals = []
    for _ in range(n_boot):
        pick = np.concatenate([rng.choice(g, len(g), replace=True) for g in pools])
        sz = sizes[pick]
        # rows of the picked clusters: start of each picked cluster + 0..size-1
        offs = np.repeat(starts[pick] - (np.cumsum(sz) - sz), sz) + np.arange(int(sz.sum()))
        idx = order[offs]
        v = stat(*[a[idx] for a in arrays])
        if np.isfinite(v):
            vals.append(v)
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def sens_spec_ci(y, score, threshold: float, clusters=None, seed: int = 0,
                 n_boot: int = 2000) -> tuple[tuple[float, float], tuple[float, float], str]:
    """95% intervals of sensitivity and specificity at ``threshold`` and how they were made.

    Wilson score interval when every cluster is one image (independent rows); otherwise a
    cluster bootstrap (:func:`bootstrap_ci`) of the positive images' clusters for the
    sensitivity (the negative images' clusters for the specificity): the Wilson interval
    assumes independent images and is too narrow when a patient has several.  (Not stratified
    by label: a cluster holding both labels would form a stratum of its own that every
    resample keeps, pinning its errors and shrinking the interval.)  Where the
    proportion is 0/n or n/n a percentile bootstrap collapses to [0, 0] / [1, 1], which would
    claim certainty; there the Wilson interval on the number of clusters of that class is
    used instead (each patient counted once: conservative)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, np.float64)
    se, sp = sens_spec(y, s, threshold)
    if one_row_per_cluster(clusters):
        npos, nneg = int(y.sum()), int((~y).sum())
        k_pos = int((y & (s >= threshold)).sum())
        k_neg = int((~y & (s < threshold)).sum())
        return (wilson_ci(k_pos, npos), wilson_ci(k_neg, nneg),
                "Wilson score interval (one image per patient/group)")
    cl = np.asarray(clusters)
    out, notes = [], []
    for which, cls, value, sd in ((0, y, se, seed), (1, ~y, sp, seed + 1)):
        if not np.isfinite(value):  # no case of this class: undefined
            out.append((float("nan"), float("nan")))
        elif value in (0.0, 1.0):
            n_cl = len(np.unique(cl[cls]))
            out.append(wilson_ci(n_cl if value == 1.0 else 0, n_cl))
            notes.append(("sensitivity", "specificity")[which])
        else:
            idx = np.nonzero(cls)[0]
            out.append(bootstrap_ci(lambda a, b, _w=which: sens_spec(a, b, threshold)[_w], y[idx], s[idx],
                                    clusters=cl[idx], seed=sd, n_boot=n_boot))
    how = f"cluster bootstrap ({n_boot:,} resamples of the clusters of the positive / negative images)"
    if notes:
        how += (f"; {' and '.join(notes)} of 0 or 1: Wilson score interval on the number of clusters "
                f"(the bootstrap would collapse to a point)")
    return out[0], out[1], how


def metric(name: str, value: float, ci: tuple[float, float] | None, n: int, data: str,
           label: str | None = None, digits: int = 4) -> dict:
    """One entry of a card's ``metrics`` list.  The interval is written as computed (rounded
    to ``digits``), even when the value lies outside it (see :func:`bootstrap_ci`)."""
    d = {"name": name, "value": round(float(value), digits)}
    if label is not None:
        d["label"] = label
    if ci is not None:
        d["ci95"] = [round(float(ci[0]), digits), round(float(ci[1]), digits)]
    d["n"] = int(n)
    d["data"] = data
    return d


def wilson_ci(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n (sensitivity, specificity, accuracy).

    Preferred to the bootstrap for proportions: it stays informative at 0/n and n/n, where a
    percentile bootstrap collapses to [1, 1]."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return float(max(0.0, c - h)), float(min(1.0, c + h))
