"""Near-duplicate leakage between the shipped models' splits (scripts/check_split_duplicates.py):
each model's split_duplicates.json exists, its figures without the listed images are what
scikit-learn recomputes from predictions.csv, and the cards quote them (no detector run here)."""

from __future__ import annotations

import csv
import json
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from imaging_assist.models.registry import project_weights_dir

WEIGHTS = project_weights_dir()  # the weights of the tree under test
LABELS = {"us-breast": ["benign", "malignant", "normal"],
          "path-lung-tissue": ["adenocarcinoma", "benign", "squamous_cell_carcinoma"]}
DROPPED = {"us-breast": ("test_images_with_cross_label_twin", "test_figures_without_cross_label_twins"),
           "path-lung-tissue": ("test_tiles_with_copy_in_training", "test_figures_without_leaked_tiles")}


def _json(model: str) -> dict:
    p = WEIGHTS / model / "split_duplicates.json"
    assert p.is_file(), f"{p} is missing: run scripts/check_split_duplicates.py"
    return json.loads(p.read_text())


def _test_rows(model: str) -> list[dict]:
    with open(WEIGHTS / model / "predictions.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "test"]


def _sk_figures(rows: list[dict], labels: list[str]) -> dict:
    y = np.array([labels.index(r["label"]) for r in rows])
    p = np.array([[float(r["p_" + lab]) for lab in labels] for r in rows])
    per = {lab: roc_auc_score(y == c, p[:, c]) for c, lab in enumerate(labels)}
    return {"n": len(rows), "macro_auc": float(np.mean(list(per.values()))), "auc": per,
            "accuracy": accuracy_score(y, p.argmax(1))}


@pytest.mark.parametrize("model", ["us-breast", "path-lung-tissue"])
def test_figures_without_the_listed_images_are_recomputed_from_predictions(model):
    d = _json(model)
    listed_key, fig_key = DROPPED[model]
    dropped = set(d[listed_key])
    rows = _test_rows(model)
    assert dropped and dropped <= {r["file"] for r in rows}
    for figs, use in ((d["test_figures"], rows), (d[fig_key], [r for r in rows if r["file"] not in dropped])):
        sk = _sk_figures(use, LABELS[model])
        assert figs["n"] == sk["n"]
        assert figs["macro_auc"] == pytest.approx(sk["macro_auc"], abs=6e-5)
        assert figs["accuracy"] == pytest.approx(sk["accuracy"], abs=6e-5)
        for lab, v in sk["auc"].items():
            assert figs["auc"][lab] == pytest.approx(v, abs=6e-5)
        assert figs["macro_auc_ci95"][0] <= figs["macro_auc"] <= figs["macro_auc_ci95"][1]
    # the whole test split's figures are the card's
    card = {(m["name"], m.get("label")): m["value"]
            for m in json.loads((WEIGHTS / model / "metrics.json").read_text())["metrics"]
            if m["data"].startswith(("test split", "grouped test split"))}
    assert card[("macro AUC", None)] == d["test_figures"]["macro_auc"]
    assert card[("accuracy", None)] == d["test_figures"]["accuracy"]


def test_us_breast_lists_the_frame_under_two_labels_and_no_cross_split_pair():
    d = _json("us-breast")
    assert d["test_images_with_cross_label_twin"] == ["benign/benign_085.jpg", "malignant/malignant_052.jpg"]
    assert d["counts"]["cross_split_pairs"] == 0 and d["counts"]["cross_label_pairs"] == 7
    assert d["counts"]["cross_label_pairs_by_split"] == {"train": 6, "test": 1}
    assert all(p["label_a"] != p["label_b"] for p in d["pairs"])
    assert d["command"].startswith("python scripts/check_split_duplicates.py")


def test_path_lung_tissue_confirmed_pairs_file_matches_the_json():
    d = _json("path-lung-tissue")
    with open(WEIGHTS / "path-lung-tissue" / "duplicate_pairs_confirmed.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    assert [(r["tile"], r["training_tile"]) for r in listed] == \
        [(r["tile"], r["training_tile"]) for r in d["confirmed_pairs"]]
    for r in listed:  # the scores the script recomputed and verified
        assert float(r["verified_ncc"]) >= d["parameters"]["verify_min"]
        assert float(r["verified_ncc"]) > float(r["null_max_ncc"])
    assert d["test_tiles_with_copy_in_training"] == sorted({r["tile"] for r in listed if r["split"] == "test"})
    assert len(d["test_tiles_with_copy_in_training"]) == 7 and len(d["validation_tiles_with_copy_in_training"]) == 3


def test_cxr_pneumonia_has_no_cross_split_near_duplicate():
    d = _json("cxr-pneumonia")
    assert d["counts"]["cross_split_pairs"] == 0 and d["counts"]["cross_label_pairs"] == 0
    assert d["pairs"] == [] and d["test_images_with_copy_in_other_split"] == []


def _f3(x: float) -> str:
    return f"{x:.3f}"


@pytest.mark.parametrize("model", ["us-breast", "path-lung-tissue"])
def test_card_quotes_the_json(model):
    d = _json(model)
    fig = d[DROPPED[model][1]]
    lims = json.loads((WEIGHTS / model / "model.json").read_text())["limitations"]
    (line,) = [t for t in lims if "split_duplicates.json" in t]
    assert "scripts/check_split_duplicates.py" in line
    quoted = [f"macro AUC is {_f3(fig['macro_auc'])} ({_f3(fig['macro_auc_ci95'][0])}-{_f3(fig['macro_auc_ci95'][1])})"
              f" instead of {_f3(d['test_figures']['macro_auc'])}",
              f"accuracy {_f3(fig['accuracy'])} ({_f3(fig['accuracy_ci95'][0])}-{_f3(fig['accuracy_ci95'][1])})"
              f" instead of {_f3(d['test_figures']['accuracy'])}"]
    if model == "us-breast":
        ci = fig["auc_ci95"]["malignant"]
        quoted.append(f"malignant AUC {_f3(fig['auc']['malignant'])} ({_f3(ci[0])}-{_f3(ci[1])}) instead of "
                      f"{_f3(d['test_figures']['auc']['malignant'])}")
        quoted.append("benign_085 / malignant_052")
    else:
        quoted.append(f"{len(d['test_tiles_with_copy_in_training'])} of the {d['test_figures']['n']} test tiles "
                      f"(and {len(d['validation_tiles_with_copy_in_training'])} validation tiles)")
    for q in quoted:
        assert q in line, q
