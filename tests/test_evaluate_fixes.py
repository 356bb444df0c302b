"""imaging-assist evaluate, audit fixes: intervals that collapsed to a point, the permutation
test of the largest sensitivity gap, the interval of a gap at sensitivity 1, stem keys matching
two files, DICOM without a preamble, the bounded read-ahead, HD95's left-out cases and
characters the PDF font cannot show.  Engine functions on small synthetic arrays; real files
only where the file-level path matters."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, need

from imaging_assist import evaluation as E

FUJI = SHARED / "dicom" / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def _scores(seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    return y, p


# --------------------------------------------------------------------------- 1: one patient
def test_intervals_from_one_patient_are_not_given_as_a_point():
    from imaging_assist.validation.evaluate import classification_metrics, segmentation_metrics

    y, p = _scores()
    m = classification_metrics(y, p, 0.5, np.array(["patient:ANON"] * 60), n_boot=200)
    notes = " | ".join(m["ci_notes"])
    for k in ("AUC", "sensitivity", "specificity", "PPV", "NPV", "ECE"):
        assert m[k]["value"] is not None and "ci95" not in m[k], (k, m[k])
        assert f"no interval for {k}" in notes, k
    assert "one patient" in notes
    # two patients, one of them holding every negative (and all positives but one): the negative
    # stratum is the same in every resample, so AUC and ECE get no interval either
    m2 = classification_metrics(y, p, 0.5, np.array(["patient:A"] * 59 + ["patient:B"]), n_boot=200)
    assert "ci95" not in m2["AUC"] and "ci95" not in m2["ECE"]
    assert "no interval for AUC: every negative case is from one patient" in m2["ci_notes"]
    # segmentation: one patient's images, no interval of the mean Dice
    s = segmentation_metrics([0.9, 0.8, 0.85], [3.0, 4.0, 5.0], clusters=np.array(["patient:a"] * 3),
                             n_boot=100)
    assert "ci95" not in s["Dice"] and "ci95" not in s["HD95_mm"] and len(s["ci_notes"]) == 2


def test_many_patients_keep_the_same_intervals_as_the_cards_bootstrap():
    from imaging_assist.validation.evaluate import classification_metrics

    y, p = _scores(1)
    cl = np.array([f"patient:{i // 2}" for i in range(60)])
    m = classification_metrics(y, p, 0.5, cl, n_boot=200, seed=3)
    assert "ci_notes" not in m
    want = E.bootstrap_ci(E.roc_auc, y, p, clusters=cl, strata=y, n_boot=200, seed=3)
    assert m["AUC"]["ci95"] == [round(want[0], 4), round(want[1], 4)]
    want = E.bootstrap_ci(lambda a, b: E.reliability(a, b).ece, y, p, clusters=cl, strata=y, n_boot=200,
                          seed=7)
    assert m["ECE"]["ci95"] == [round(want[0], 4), round(want[1], 4)]


# --------------------------------------------------------------------------- 2: permutation
def _views(seed=0):
    """40 patients (30 positive), each with an AP, a PA and a lateral film; the lateral film's
    sensitivity is far lower."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(40):
        pos = i < 30
        for view, sens in (("AP", 0.95), ("PA", 0.9), ("LL", 0.3)):
            hit = rng.random() < sens
            rows.append((int(pos), (0.9 if hit else 0.2) if pos else 0.1, view, f"patient:{i}"))
    return [np.array(c) for c in zip(*rows)]


def test_gap_permutation_test_uses_each_images_own_group():
    from imaging_assist.validation.evaluate import sensitivity_gap

    y, p, g, cl = _views()
    y = y.astype(int)
    p = p.astype(float)
    res = sensitivity_gap(y, p, g, 0.5, cl, n_boot=999)
    hit = p[y == 1] >= 0.5
    rates = {k: hit[g[y == 1] == k].mean() for k in ("AP", "PA", "LL")}
    assert res["value"] == pytest.approx(max(rates.values()) - min(rates.values()), abs=1e-4)
    assert res["p_value_equal_sensitivity"] <= 0.01, res  # the patient-first-image version: 1.0
    assert "own images" in res["note"]
    # no difference between the views: the test does not reject
    p_null = np.where(y == 1, np.where(np.random.default_rng(5).random(len(y)) < 0.8, 0.9, 0.2), 0.1)
    assert sensitivity_gap(y, p_null, g, 0.5, cl, n_boot=499)["p_value_equal_sensitivity"] > 0.05


def test_gap_permutation_with_one_group_per_patient_shuffles_whole_patients():
    from imaging_assist.validation.evaluate import sensitivity_gap

    y, p, g, cl = _views(1)
    y = y.astype(int)
    p = p.astype(float)
    g = np.array(["abc"[int(c.split(":")[1]) % 3] for c in cl])  # each patient in one group
    res = sensitivity_gap(y, p, g, 0.5, cl, n_boot=199)
    assert "patients' groups shuffled" in res["note"] and 0 < res["p_value_equal_sensitivity"] <= 1


# --------------------------------------------------------------------------- 3: gap interval
def test_two_group_gap_at_sensitivity_1_gets_newcombes_interval_not_0_0():
    from imaging_assist.validation.evaluate import sensitivity_gap

    y = np.r_[np.ones(14), np.ones(22), np.zeros(24)].astype(int)
    p = np.r_[np.full(14, 0.9), np.full(22, 0.95), np.full(24, 0.2)]
    g = np.array(["virus"] * 14 + ["bacteria"] * 22 + ["normal"] * 24)
    r = sensitivity_gap(y, p, g, 0.7477, None, n_boot=300)
    # Newcombe (1998) method 10 by hand: d = 1 - 1 = 0
    (l1, u1), (l2, u2) = E.wilson_ci(14, 14), E.wilson_ci(22, 22)
    hi, lo = r["groups"]
    (lh, uh), (ll, ul) = ((l1, u1), (l2, u2)) if hi == "virus" else ((l2, u2), (l1, u1))
    want = [round(-math.hypot(1 - lh, ul - 1), 4), round(math.hypot(uh - 1, 1 - ll), 4)]
    assert r["value"] == 0 and r["ci95"] == want and r["ci95"][0] < 0 < r["ci95"][1], r
    assert r["ci_method"].startswith("Newcombe")
    if _has("statsmodels"):  # the same numbers as statsmodels' "newcomb" where it is installed
        from statsmodels.stats.proportion import confint_proportions_2indep

        got = confint_proportions_2indep(14, 14, 22, 22, method="newcomb", compare="diff")
        assert sorted(map(abs, want)) == pytest.approx(sorted(map(abs, got)), abs=1e-4)
    # a sensitivity strictly between 0 and 1 in both groups: the bootstrap, as before
    s = np.r_[np.r_[np.ones(36), np.zeros(4)], np.zeros(40), np.r_[np.ones(20), np.zeros(20)], np.zeros(40)]
    yy = np.array([1] * 40 + [0] * 40 + [1] * 40 + [0] * 40)
    gg = np.array(["a"] * 80 + ["b"] * 80)
    assert sensitivity_gap(yy, s, gg, 0.5, n_boot=300)["ci_method"] == "percentile bootstrap"


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


# --------------------------------------------------------------------------- 4: stem keys
def test_a_stem_key_matching_two_files_is_left_out_and_named(tmp_path):
    from imaging_assist.validation.evaluate import find_inputs, match_cases, read_labels

    data = tmp_path / "data"
    data.mkdir()
    for name in ("case01.jpeg", "case01.png", "case02.jpeg"):
        (data / name).write_bytes(b"not read by the matching")
    lab = tmp_path / "labels.csv"
    lab.write_text("file,label\nCase01,1\ncase02,0\n")
    cases, notes = match_cases(data, read_labels(lab), find_inputs(data))
    assert [c.path.name for c in cases] == ["case02.jpeg"]  # not case01 twice
    text = " | ".join(notes)
    assert "'Case01' (case01.jpeg, case01.png)" in text and "more than one file" in text
    assert "no image in the data" not in text and "no row" not in text


# --------------------------------------------------------------------------- 5: DICOM
def test_dicom_without_preamble_is_matched_and_refused_files_are_named(tmp_path):
    from imaging_assist.dicom import scan
    from imaging_assist.validation.evaluate import find_inputs, match_cases, read_labels

    data = tmp_path / "data"
    data.mkdir()
    os.symlink(need(FUJI), data / FUJI.name)  # a valid DICOM without the 128-byte preamble
    assert need(FUJI).read_bytes()[128:132] != b"DICM" and scan(str(FUJI)).all_series()
    (data / "notes.dcm").write_text("a scanner's notes, not an image\n" * 20)
    (data / "stray.dat").write_bytes(bytes(range(256)) * 8)
    lab = tmp_path / "labels.csv"
    lab.write_text(f"file,label\n{FUJI.name},normal\nnotes.dcm,normal\n")
    cases, notes = match_cases(data, read_labels(lab), find_inputs(data))
    assert [c.path.name for c in cases] == [FUJI.name]
    assert cases[0].dicom["StudyInstanceUID"]  # facts from the app's own header reader
    text = " | ".join(notes)
    assert "1 file(s) with a row in the labels file are neither a plain image nor DICOM" in text
    assert "notes.dcm (not DICOM" in text and "stray.dat" in text
    assert "no image in the data" not in text


# --------------------------------------------------------------------------- 6: read-ahead
def test_images_are_read_at_most_a_few_ahead_of_the_model(tmp_path, monkeypatch):
    import imaging_assist.inference.images as I
    import imaging_assist.inference.pipelines as P
    import imaging_assist.models.matching as M
    from imaging_assist.validation import evaluate as V

    loaded, scored, peak = [], [], [0]
    lock = threading.Lock()

    def read(path, *a, **k):
        with lock:
            loaded.append(path)
        return np.zeros((8, 8), np.float32)

    class _Res:
        def to_dict(self):
            return {"probabilities": {"x": 0.5}}

    def run(model, vol, opts):
        with lock:
            peak[0] = max(peak[0], len(loaded) - len(scored))
        time.sleep(0.01)  # a model slower than decoding
        scored.append(1)
        return _Res()

    class _OK:
        ok, reason = True, ""

    monkeypatch.setattr(I, "read_image", read)
    monkeypatch.setattr(P, "run_model", run)
    monkeypatch.setattr(M, "match_card", lambda card, facts: _OK())
    monkeypatch.setattr(M, "series_facts", lambda vol, series: None)
    cases = [V.Case(path=tmp_path / f"{i}.png", key=str(i), row={}) for i in range(30)]
    model = type("Model", (), {"card": None})()
    V._predict(model, cases)
    assert all(c.result and c.error is None for c in cases) and len(scored) == 30
    assert peak[0] <= 4, peak  # Executor.map held about all 30 at once


# --------------------------------------------------------------------------- 7, 8: the PDF
def _seg_report(group_names):
    from imaging_assist.validation.evaluate import segmentation_metrics

    ov = segmentation_metrics([0.92, 0.91, 0.0], [3.0, 4.0, float("nan")], n_boot=100, hd_unit="mm")
    groups = {k: segmentation_metrics([0.9, 0.8], [3.0, 4.0], n_boot=50) for k in group_names}
    return {"model": {"id": "seg", "version": "1", "task": "segmentation"},
            "data": {"n_analysed": 3, "n_matched": 3, "n_clusters": 3, "cluster_unit": "images",
                     "labels": "labels.csv"},
            "created": "2026-01-01T00:00:00", "ci_method": "percentile bootstrap", "notes": [],
            "ood": {"available": False}, "hd95_unit": "mm", "comparison": "union vs mask",
            "overall": ov, "subgroups": {"ward": {"groups": groups}} if group_names else {}}


def _pdf_text(path: Path) -> str:
    assert shutil.which("pdftotext"), "pdftotext (poppler-utils) is needed: scripts/test installs it"
    return subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout


def test_hd95_says_the_cases_it_leaves_out_in_json_and_pdf(tmp_path):
    from imaging_assist.validation.evaluate_report import write_pdf

    rep = _seg_report([])
    hd = rep["overall"]["HD95_mm"]
    assert rep["overall"]["n_empty"] == 1 and hd["value"] == pytest.approx(3.5)
    assert "mean of 2 of 3 cases" in hd["note"] and "empty" in hd["note"]
    text = " ".join(_pdf_text(write_pdf(rep, tmp_path)).split())
    assert "1 of 3 left out (empty mask)" in text and "mean of 2 of 3 cases" in text


def test_pdf_says_which_characters_its_font_cannot_show(tmp_path):
    from imaging_assist.validation.evaluate_report import write_pdf

    text = " ".join(_pdf_text(write_pdf(_seg_report(["東京 病棟", "Ärzte—Nord"]), tmp_path)).split())
    from imaging_assist.export.report_pdf import _font_files

    if _font_files():  # DejaVu has these
        assert "Ärzte—Nord" in text
    assert "could not be shown by the report's font" in text and "U+6771" in text


def test_the_printed_summary_says_hd95_leaves_out_empty_masks():
    from imaging_assist.cli.evaluate import _summary

    r = {"model": {"id": "m", "version": "1"},
         "data": {"n_analysed": 3, "n_clusters": 3, "cluster_unit": "patients"},
         "overall": {"n": 3, "n_empty": 1, "Dice": {"value": 0.6, "ci95": None},
                     "HD95_mm": {"value": 3.5, "ci95": None}},
         "hd95_unit": "mm", "ood": {}}
    assert _summary(r).splitlines()[1].endswith("HD95 3.5 mm (mean of 2 of 3: 1 empty mask(s) left out)")
