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


# --------------------------------------------------------------------------- real data
def _run_cli(args, monkeypatch, tmp_path):
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    return main(args)


@pytest.fixture(scope="module")
def jsrt_eval(tmp_path_factory):
    """cxr-lung-seg on 40 JSRT images (the CSV of the data set itself: age, gender, masks)."""
    import os

    from imaging_assist.validation.evaluate import evaluate
    from imaging_assist.validation.evaluate_report import write_json, write_pdf

    rows = list(csv.DictReader(open(need(JSRT / "labels.csv"))))[:40]
    tmp = tmp_path_factory.mktemp("jsrt")
    data = tmp / "images"
    data.mkdir()
    for r in rows:
        os.symlink(JSRT / r["file"], data / Path(r["file"]).name)
    lab = tmp / "labels.csv"
    with open(lab, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "mask", "patient_id", "age", "gender"])
        w.writeheader()
        for r in rows:
            w.writerow({"file": r["file"], "mask": str(JSRT / r["mask"]), "patient_id": r["patient_id"],
                        "age": r["age"], "gender": r["gender"]})
    rep = evaluate(data, "cxr-lung-seg", lab, group_by=["gender", "age_band"], n_boot=200)
    out = tmp / "out"
    out.mkdir()
    return rep, write_json(rep, out), write_pdf(rep, out), rows


def test_segmenter_subgroups_on_jsrt_sex_and_age(jsrt_eval):
    rep, jp, pp, rows = jsrt_eval
    assert rep["data"]["n_analysed"] == 40
    ov = rep["overall"]
    assert 0.85 < ov["Dice"]["value"] <= 1 and ov["Dice"]["ci95"][0] <= ov["Dice"]["value"] <= ov["Dice"]["ci95"][1]
    assert rep["hd95_unit"] == "px" and "not mm" in rep["hd95_note"]  # plain PNG: no spacing known
    sexes = rep["subgroups"]["gender"]["groups"]
    want = {r["gender"] for r in rows}
    assert set(sexes) == want
    assert sum(g["n"] for g in sexes.values()) == 40
    for g in sexes.values():
        assert g["too_small"] == (g["n"] < 30)
    bands = rep["subgroups"]["age_band"]["groups"]
    from imaging_assist.validation.evaluate import age_band

    assert set(bands) == {age_band(r["age"]) for r in rows}
    doc = json.loads(jp.read_text())
    assert "_arrays" not in doc and doc["overall"]["n"] == 40


def test_evaluation_pdf_has_the_numbers(jsrt_eval):
    import shutil
    import subprocess

    rep, jp, pp, rows = jsrt_eval
    assert shutil.which("pdftotext"), "pdftotext (poppler-utils) is needed: scripts/test installs it"
    text = subprocess.run(["pdftotext", str(pp), "-"], capture_output=True, text=True, check=True).stdout
    assert "NOT FOR CLINICAL USE" in text and "Dice" in text
    assert f"{rep['overall']['Dice']['value']:.3f}" in text
    assert "Subgroups by gender" in text and "too small" in text


def _kermany_set(tmp_path, n_each=20):
    import os

    data = tmp_path / "data"
    data.mkdir()
    lab = tmp_path / "labels.csv"
    with open(lab, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "patient_id", "ward"])
        for cls in ("NORMAL", "PNEUMONIA"):
            for i, p in enumerate(sorted((need(KERMANY) / cls).glob("*.jpeg"))[:n_each]):
                os.symlink(p, data / p.name)
                # ward "X" holds only normal films: its AUC/sensitivity must be undefined
                ward = "X" if cls == "NORMAL" and i < 8 else ("Y" if i % 2 else "Z")
                w.writerow([p.name, cls.lower(), p.name.split("-")[0] + p.name.split("_")[0], ward])
    return data, lab


@pytest.fixture(scope="module")
def kermany_cli(tmp_path_factory):
    from imaging_assist.cli.main import main

    tmp = tmp_path_factory.mktemp("kermany")
    data, lab = _kermany_set(tmp)
    mp = pytest.MonkeyPatch()
    mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp / "config"))
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp / "data"))
    try:
        rc = main(["evaluate", str(data), "--model", "cxr-pneumonia", "--labels", str(lab), "--out",
                   str(tmp / "out"), "--group-by", "ward", "--target-sensitivity", "0.9",
                   "--bootstrap", "200", "--save-site-threshold"])
    finally:
        mp.undo()
    return rc, tmp


def test_classifier_evaluation_writes_json_pdf_and_site_threshold(kermany_cli):
    rc, tmp = kermany_cli
    assert rc == 0
    d = json.loads((tmp / "out" / "evaluation.json").read_text())
    ops = d["operating_points"]
    assert ops["card"]["threshold"] == 0.7477 and ops["target_sensitivity"]["target"] == 0.9
    ov = ops["card"]["overall"]
    for k in ("AUC", "sensitivity", "specificity", "PPV", "NPV", "ECE"):
        if k == "AUC" and ov[k]["value"] in (0.0, 1.0):  # a perfect ranking: no interval, said
            assert "ci95" not in ov[k] and any("AUC" in n for n in ov.get("ci_notes", [])), ov
            continue
        assert ov[k]["value"] is not None and len(ov[k]["ci95"]) == 2, k
    assert ov["roc_curve"]["fpr"][0] == 0 and ov["pr_curve"]["recall"][-1] == 1.0
    assert sum(map(sum, ov["confusion_matrix"]["counts"])) == 40
    assert ops["target_sensitivity"]["overall"]["sensitivity"]["value"] >= 0.9
    x = ops["card"]["subgroups"]["ward"]["groups"]["X"]
    assert x["n_positive"] == 0 and x["AUC"]["value"] is None and x["sensitivity"]["value"] is None
    assert "undefined" in x["AUC"]["note"] and x["too_small"]
    gap = ops["card"]["subgroups"]["ward"]["largest_sensitivity_gap"]
    assert set(gap["groups"]) == {"Y", "Z"}  # X has no positives: not in the gap
    assert d["ood"]["available"] in (True, False)
    st = d["site_threshold"]
    saved = json.loads((tmp / "config" / "site_thresholds" / "cxr-pneumonia.json").read_text())
    assert saved["versions"][-1]["threshold"] == pytest.approx(ops["target_sensitivity"]["threshold"])
    assert st["text"].startswith("site threshold ") and "local studies" in st["text"]
    # a measurement, not reading: the 40 re-runs are kept out of the prediction log
    import sqlite3
    db = tmp / "data" / "predictions.sqlite"
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_bad_labels_files_are_one_line_errors(tmp_path, monkeypatch, capsys):
    data, lab = _kermany_set(tmp_path, n_each=2)
    text = lab.read_text()
    cases = {
        "nolabel.csv": text.replace("label", "diagnosis"),
        "badvalue.csv": text.replace("pneumonia", "maybe"),
        "nokey.csv": text.replace("file", "whatever"),
        "binary.csv": bytes(range(256)) * 4,
        "empty.csv": "",
        "nomatch.csv": "file,label\nnothing.png,normal\n",
        "dupe.csv": text + text.splitlines()[1] + "\n",
    }
    for name, body in cases.items():
        p = tmp_path / name
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
        rc = _run_cli(["evaluate", str(data), "--model", "cxr-pneumonia", "--labels", str(p),
                       "--out", str(tmp_path / "o")], monkeypatch, tmp_path)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (name, err)
    rc = _run_cli(["evaluate", str(data), "--model", "cxr-pneumonia", "--labels", str(lab), "--out",
                   str(tmp_path / "o"), "--group-by", "nonsense"], monkeypatch, tmp_path)
    assert rc == 2 and "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        _run_cli(["evaluate", str(data), "--model", "cxr-pneumonia", "--labels", str(lab), "--out",
                  str(tmp_path / "o"), "--target-sensitivity", "1.5"], monkeypatch, tmp_path)
    assert e.value.code == 2 and "between 0 and 1" in capsys.readouterr().err


def test_mutated_real_images_are_left_out_with_a_reason_never_scored(tmp_path):
    """Flipped bytes, truncation and a zero-byte file among real films: each is analysed or
    named in the notes, none crashes the run or is scored silently from garbage."""
    import random

    from imaging_assist.validation.evaluate import evaluate

    data, lab = _kermany_set(tmp_path, n_each=4)
    files = sorted(data.iterdir())
    raw = files[0].resolve().read_bytes()
    files[0].unlink()
    files[0].write_bytes(raw[: len(raw) // 3])  # truncated JPEG
    raw = bytearray(files[1].resolve().read_bytes())
    files[1].unlink()
    rnd = random.Random(3)
    for _ in range(200):
        raw[rnd.randrange(200, len(raw))] ^= 0xFF
    files[1].write_bytes(bytes(raw))  # flipped bytes in the entropy-coded data
    files[2].unlink()
    files[2].write_bytes(b"")  # empty
    rep = evaluate(data, "cxr-pneumonia", lab, n_boot=50)
    assert rep["data"]["n_matched"] == 8
    assert rep["data"]["n_analysed"] + rep["data"]["n_failed"] == 8
    assert files[2].name in " ".join(rep["notes"])  # the empty file is named
    p = rep["_arrays"]["p"]
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()


def test_dicom_keyed_by_sop_uid_with_subgroups_from_the_headers(tmp_path, monkeypatch):
    """Demo CR files keyed by SOP Instance UID: age band and view position from DICOM; the
    adult films do not fit the paediatric card and are left out with the reason."""
    import pydicom

    from imaging_assist.validation.evaluate import evaluate

    demo = Path(__file__).resolve().parents[1] / "imaging_assist" / "data" / "demo" / "chest_xray"
    lab = tmp_path / "labels.csv"
    with open(lab, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sop_instance_uid", "label"])
        for i, p in enumerate(sorted(demo.glob("*.dcm"))):
            w.writerow([pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID, ["normal", "pneumonia"][i % 2]])
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    rep = evaluate(demo, "cxr-pneumonia", lab, group_by=["age_band", "view_position", "sex"], n_boot=50)
    assert rep["data"]["n_matched"] == 4 and rep["data"]["matched_by"] == "sop_instance_uid"
    assert rep["data"]["cluster_unit"] == "patients"  # PatientID from the headers
    groups = rep["operating_points"]["card"]["subgroups"]
    assert set(groups["view_position"]["groups"]) <= {"AP", "PA"}
    assert "2-5" in groups["age_band"]["groups"]
    assert set(groups["sex"]["groups"]) == {"unknown"}  # the demo files have no PatientSex
    for g in groups["age_band"]["groups"].values():
        assert g["too_small"]


def test_ood_flagged_results_are_counted_and_metrics_given_without_them(tmp_path, monkeypatch):
    import imaging_assist.validation.evaluate as EV

    data, lab = _kermany_set(tmp_path, n_each=6)
    real = EV._predict

    def with_ood(model, cases, progress=None):
        real(model, cases, progress)
        for i, c in enumerate(cases):
            if c.result is not None:
                c.result["ood"] = {"score": float(i), "threshold": 3.5, "flagged": i >= 9, "reasons": []}

    monkeypatch.setattr(EV, "_predict", with_ood)
    rep = EV.evaluate(data, "cxr-pneumonia", lab, n_boot=50)
    assert rep["ood"] == {"available": True, "n_flagged": 3, "n": 12}
    w = rep["operating_points"]["card"]["without_ood_flagged"]
    assert w["n"] == 9 and rep["operating_points"]["card"]["overall"]["n"] == 12


def test_age_bands_from_dicom_age_strings():
    from imaging_assist.validation.evaluate import age_band, age_years

    assert age_years("047Y") == 47 and age_years("018M") == 1.5 and age_years("") is None
    assert age_band("004Y") == "2-5" and age_band("047Y") == "40-64" and age_band("070Y") == ">=65"
    assert age_band("abc") is None and age_band("999Y") is None and age_band("-5") is None


def test_a_class_from_one_patient_gets_no_interval_not_a_point():
    from imaging_assist.validation.evaluate import classification_metrics

    y = np.array([0] * 10 + [1] * 10)
    p = np.r_[np.linspace(0, 0.9, 10), np.linspace(0.3, 1, 10)]
    clusters = np.array(["one"] * 10 + [f"p{i}" for i in range(10)])  # all negatives: one patient
    m = classification_metrics(y, p, 0.5, clusters, n_boot=200)
    assert m["specificity"]["value"] == pytest.approx(0.5) and "ci95" not in m["specificity"]
    assert "one patient" in " ".join(m["ci_notes"]) and "ci95" in m["sensitivity"]


def test_segmenter_hd95_in_mm_uses_column_spacing_for_columns(tmp_path):
    """Spacing (x, y) = (0.5, 2.0) mm: a 3-column shift is 1.5 mm, not 6 mm."""
    from PIL import Image

    from imaging_assist.validation.evaluate import Case, LabelTable, _segmentation_part

    lm = np.zeros((1, 20, 20), np.uint8)
    lm[0, 5:10, 5:10] = 1
    ref = np.zeros((20, 20), np.uint8)
    ref[5:10, 8:13] = 255
    Image.fromarray(ref).save(tmp_path / "m.png")
    table = LabelTable([], "file", "file", None, None, "mask", ["file", "mask"], tmp_path)
    c = Case(path=tmp_path / "x.dcm", key="x", row={"mask": "m.png"},
             result={"_label_map": lm, "_spacing": (0.5, 2.0, 1.0), "has_geometry": True})
    out = _segmentation_part(None, [c], table, [], None, 50, 0, np.array([False]), False)
    assert out["hd95_unit"] == "mm" and out["overall"]["HD95_mm"]["value"] == pytest.approx(1.5)
    assert out["overall"]["Dice"]["value"] == pytest.approx(0.4)


def test_a_saved_site_threshold_is_rechecked_by_the_next_evaluation(tmp_path, monkeypatch):
    from imaging_assist.models.registry import Registry
    from imaging_assist.models.site import save_site_threshold
    from imaging_assist.validation.evaluate import evaluate
    from imaging_assist.validation.evaluate_report import write_pdf

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    data, lab = _kermany_set(tmp_path, n_each=4)
    rep = evaluate(data, "cxr-pneumonia", lab, n_boot=50)
    assert "site" not in rep["operating_points"]
    save_site_threshold(Registry().get("cxr-pneumonia").card, "pneumonia", 0.62, 412, date="2026-12-04")
    rep = evaluate(data, "cxr-pneumonia", lab, n_boot=50)
    site = rep["operating_points"]["site"]
    assert site["threshold"] == 0.62 and site["source"] == "site threshold 0.62, from 412 local studies, 2026-12-04"
    assert site["overall"]["threshold"] == 0.62
    (tmp_path / "o").mkdir()
    write_pdf(rep, tmp_path / "o")


def test_site_threshold_only_for_the_cards_label_and_from_enough_patients(tmp_path, monkeypatch, capsys):
    """A site threshold saved for "normal" added a second decision to every run, and the drift
    monitor then followed P(normal) and alerted on normal data; 3 images could set a threshold
    every later run used."""
    from imaging_assist.cli.main import main

    data, lab = _kermany_set(tmp_path, n_each=6)
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    args = ["evaluate", str(data), "--model", "cxr-pneumonia", "--labels", str(lab), "--bootstrap", "100",
            "--save-site-threshold"]
    assert main(args + ["--out", str(tmp_path / "a"), "--positive", "normal"]) == 2
    assert "the card decides on pneumonia, not normal" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "b")]) == 2
    assert "too few to set a threshold on (at least 20)" in capsys.readouterr().err
    assert not (tmp_path / "config" / "site_thresholds").exists()
    assert main(args + ["--out", str(tmp_path / "c"), "--force-small-site-threshold"]) == 0
    assert (tmp_path / "config" / "site_thresholds" / "cxr-pneumonia.json").is_file()


def test_the_gap_among_many_groups_is_a_permutation_test_not_an_interval():
    """With 6 groups of equal true sensitivity, the interval of the largest gap excluded 0 in
    38% of data sets; the permutation p-value is below 0.05 about 5% of the time."""
    from imaging_assist.validation.evaluate import sensitivity_gap

    rng = np.random.default_rng(0)
    small = 0
    for r in range(40):
        g = np.repeat(list("abcdef"), 40)
        y = np.tile(np.r_[np.ones(20), np.zeros(20)], 6).astype(int)
        p = np.where(y == 1, (rng.random(240) < 0.8).astype(float), 0.0)
        gap = sensitivity_gap(y, p, g, 0.5, n_boot=200, seed=r)
        assert gap["ci95"] is None and "permutation" in gap["note"]
        small += gap["p_value_equal_sensitivity"] < 0.05
    assert small <= 6  # about 2 expected of 40
