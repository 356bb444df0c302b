"""Issue 14, honest operating points: beside a decision the card's INDEPENDENT test-split
sensitivity/specificity with CIs (cxr-pneumonia: the original Kermany test split, specificity
0.76 -- not the validation split's 0.98), PPV/NPV at a stated prevalence, the most likely
class first, and a low rule-out threshold reads "review", never "positive"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from imaging_assist.models.card import load_card
from imaging_assist.models.operating_point import (apply_decision, decide_item, operating_point,
                                                   ppv_npv)

W = ROOT / "weights"
CHILD = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_01_ap.dcm"


def test_ppv_npv_known_answers():
    ppv, npv = ppv_npv(0.9, 0.8, 0.1)
    assert ppv == pytest.approx(0.09 / 0.27) and npv == pytest.approx(0.72 / 0.73)
    assert ppv_npv(1.0, 1.0, 0.5) == (1.0, 1.0)
    assert ppv_npv(0.5, 0.5, 0.0) == (None, 1.0) or ppv_npv(0.5, 0.5, 0.0)[0] in (None, 0.0)
    # 2x2 table check: 90 TP, 10 FN, 180 FP, 720 TN
    ppv, npv = ppv_npv(90 / 100, 720 / 900, 100 / 1000)
    assert ppv == pytest.approx(90 / 270) and npv == pytest.approx(720 / 730)


def _card_metric(card, name, data_start):
    return next(m for m in card.metrics if m["name"] == name and m["data"].startswith(data_start)
                and "threshold" in m["data"])


def test_pneumonia_quotes_the_original_test_split_not_validation():
    card = load_card(W / "cxr-pneumonia")
    op = operating_point(card, "pneumonia")
    t = op["test"]
    # the persons of the original test split never trained on (session 18: 116 of its 397 persons
    # also have training or validation images; the data set's person numbers run across its splits)
    assert "original Kermany test split" in t["data"] and "never trained on" in t["data"] and t["n"] == 355
    assert t["specificity"]["value"] == pytest.approx(0.7639)
    assert t["specificity"]["ci95"] == pytest.approx(_card_metric(card, "specificity", "original")["ci95"])
    assert _card_metric(card, "specificity", "validation")["value"] > 0.95  # what was quoted before
    assert t["sensitivity"]["value"] == pytest.approx(0.9856)
    pv = op["predictive_values"]
    assert pv["prevalence"] == pytest.approx(139 / 355, abs=1e-4)
    assert "original test split" in pv["prevalence_source"] and "not your population" in pv["prevalence_source"]
    ppv, npv = ppv_npv(0.9856, 0.7639, 139 / 355)
    assert pv["ppv"] == pytest.approx(ppv, abs=1e-4) and pv["npv"] == pytest.approx(npv, abs=1e-4)
    assert pv["ppv_ci95"][0] <= pv["ppv"] <= pv["ppv_ci95"][1]
    # a prevalence given by the caller is used and named
    op = operating_point(card, "pneumonia", prevalence=0.05, prevalence_source="site estimate")
    assert op["predictive_values"]["prevalence_source"] == "site estimate"
    assert op["predictive_values"]["ppv"] == pytest.approx(ppv_npv(0.9856, 0.7639, 0.05)[0], abs=1e-4)
    text = decide_item(card, {"normal": 0.1, "pneumonia": 0.9})["text"]
    lo, hi = _card_metric(card, "specificity", "original")["ci95"]
    assert f"specificity 0.76 ({lo:.2f}-{hi:.2f})" in text and "0.99" in text and "PPV" in text
    assert "0.9833" not in text and "specificity 0.98" not in text


def test_low_rule_out_threshold_reads_review_under_a_more_probable_class():
    card = load_card(W / "us-breast")
    t = card.thresholds["malignant"].threshold
    d = decide_item(card, {"benign": 0.7, "malignant": t + 0.05, "normal": 0.3 - t - 0.05})
    assert d["ranking"][0] == "benign" and d["most_likely"] == "benign"
    (x,) = d["labels"]
    assert x["state"] == "review" and "above rule-out threshold" in d["text"] and "review" in d["text"]
    assert "positive" not in d["text"]
    # the most likely class above its threshold is a positive; below it a negative
    assert decide_item(card, {"benign": 0.1, "malignant": 0.8, "normal": 0.1})["labels"][0]["state"] == "positive"
    assert decide_item(card, {"benign": 0.9, "malignant": t / 2, "normal": 0.1})["labels"][0]["state"] == "negative"


def test_card_without_test_figures_quotes_nothing_from_validation():
    card = load_card(W / "cxr-pneumonia")
    card.metrics = [m for m in card.metrics if "validation" in m.get("data", "")]
    op = operating_point(card, "pneumonia")
    assert op["test"] is None and "validation figures are not quoted" in op["note"]
    assert "0.98" not in decide_item(card, {"normal": 0.1, "pneumonia": 0.9})["text"]


def test_ood_flag_withholds_the_decision_and_keeps_the_probabilities():
    card = load_card(W / "cxr-pneumonia")
    d = {"probabilities": {"normal": 0.1, "pneumonia": 0.9},
         "decisions": {"normal": None, "pneumonia": {"threshold": 0.7477, "positive": True,
                                                     "sensitivity": 0.9506, "specificity": 0.9833}},
         "ood": {"score": 9.0, "threshold": 3.0, "flagged": True, "reasons": ["far"]}}
    dec = apply_decision(d, card)
    assert dec["withheld"] and "outside what this model was trained on" in dec["withheld_reason"]
    assert d["decisions"]["pneumonia"]["positive"] is None
    assert d["probabilities"]["pneumonia"] == 0.9


def test_analyze_results_and_summary_quote_the_test_split(tmp_path, monkeypatch, capsys):
    """The demo child film (DICOM) and Kermany original-test films: every item's decision
    carries the test-split figures; every line with a decision quotes them."""
    import csv

    from conftest import SHARED, need
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CHILD, src / CHILD.name)
    kermany = SHARED / "cxr" / "pneumonia_kermany"
    rows = [r for r in csv.DictReader(need(kermany / "labels.csv").open()) if r["source_split"] == "test"]
    for lab in ("PNEUMONIA", "NORMAL"):
        r = sorted((r for r in rows if r["label"] == lab), key=lambda r: r["file"])[0]
        shutil.copy(kermany / r["file"], src / Path(r["file"]).name)
    assert main(["analyze", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    card = load_card(W / "cxr-pneumonia")
    lo, hi = _card_metric(card, "specificity", "original")["ci95"]
    items = json.loads((tmp_path / "o" / "results.json").read_text())["items"]
    assert len(items) == 3
    decided = 0
    for it in items:
        dec = it["decisions"]["pneumonia"]
        assert dec["specificity"] == pytest.approx(0.7639) and dec["specificity_ci95"] == pytest.approx([lo, hi])
        assert "original Kermany test split" in dec["figures_from"]
        d = it["decision"]
        assert d["ranking"][0] == max(it["probabilities"], key=it["probabilities"].get)
        op = d["labels"][0]["operating_point"]
        assert op["test"]["specificity"]["value"] == pytest.approx(0.7639)
        assert op["predictive_values"]["npv"] is not None
        # the summary line names the most likely class first
        name = Path(it["source"]).name
        line = next(x for x in err.splitlines() if name in x)
        assert line.split(": ", 1)[1].startswith(d["ranking"][0])
        if not d["withheld"]:  # (the OOD check may withhold one; then no figures are needed)
            decided += 1
            assert f"specificity 0.76 ({lo:.2f}-{hi:.2f})" in line and "PPV" in line
            assert "prevalence 39%" in line
    assert decided >= 1


def test_a_site_threshold_replaces_the_card_figures_and_says_so(tmp_path, monkeypatch):
    """With a site operating point saved (evaluate --save-site-threshold), the decision uses it
    and quotes the site's own figures with its note, never the card's test figures for
    another threshold."""
    from imaging_assist.models.site import save_site_threshold

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    card = load_card(W / "cxr-pneumonia")
    save_site_threshold(card, "pneumonia", 0.9, 412, sensitivity=0.91, specificity=0.85,
                        data="local studies", date="2026-12-04")
    op = operating_point(card, "pneumonia")
    assert op["threshold"] == 0.9 and op["threshold_source"] == "site" and op["test"] is None
    d = decide_item(card, {"normal": 0.15, "pneumonia": 0.85})
    (x,) = d["labels"]
    assert x["state"] == "negative"  # 0.85 < the site's 0.9 (the card's 0.7477 would say positive)
    assert "412" in d["text"] and "0.76" not in d["text"]
    item = {"probabilities": {"normal": 0.15, "pneumonia": 0.85},
            "decisions": {"normal": None, "pneumonia": {"threshold": 0.9, "positive": False}}}
    apply_decision(item, card)
    assert item["decisions"]["pneumonia"]["specificity"] == pytest.approx(0.85)
