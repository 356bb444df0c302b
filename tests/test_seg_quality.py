"""Issue 14, segmentation quality: cxr-lung-seg returned slivers (1,009 / 652 px) on a child's
film as a normal result.  The card's ``quality_checks`` (area range, pieces per structure,
right/left balance) run at segmentation time; a failing result is flagged in results.json
(``quality``), as a warning and in the CLI line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import ROOT, SHARED, need
from imaging_assist.inference.quality import check_segmentation
from imaging_assist.models.card import load_card, validate_card
from imaging_assist.models.errors import ModelCardError
from imaging_assist.models.population import QualityChecks

W = ROOT / "weights"
KERMANY = SHARED / "cxr" / "pneumonia_kermany"
JSRT = SHARED / "cxr" / "lung_masks_jsrt"
LABELS = ["background", "right_lung", "left_lung"]
QC = QualityChecks(area_fraction=(0.12, 0.6), max_pieces_per_label=1, min_piece_fraction=0.05,
                   left_right_ratio=(0.6, 2.4), ratio_labels=("right_lung", "left_lung"))


def _lungs(h=100, w=100):
    lm = np.zeros((1, h, w), np.uint8)
    lm[0, 20:80, 10:45] = 1
    lm[0, 20:80, 55:90] = 2
    return lm


def test_known_answers_on_synthetic_label_maps():
    q = check_segmentation(_lungs(), LABELS, QC)
    assert q["passed"] and q["measures"]["area_fraction"] == pytest.approx(0.42)
    assert q["measures"]["pieces"] == {"right_lung": 1, "left_lung": 1}
    assert q["measures"]["left_right_ratio"] == pytest.approx(1.0)
    # slivers: area far too small
    lm = np.zeros((1, 100, 100), np.uint8)
    lm[0, 40:45, 20:30] = 1
    lm[0, 40:45, 60:68] = 2
    q = check_segmentation(lm, LABELS, QC)
    assert not q["passed"] and any("cover 0.9% of the image" in f for f in q["failures"])
    assert q["text"].startswith("QUALITY CHECK FAILED")
    # a lung in two big pieces; a 1-pixel island is not a piece (under min_piece_fraction)
    lm = _lungs()
    lm[0, 48:52, 10:45] = 0
    q = check_segmentation(lm, LABELS, QC)
    assert not q["passed"] and q["measures"]["pieces"]["right_lung"] == 2
    lm = _lungs()
    lm[0, 5, 5] = 2
    assert check_segmentation(lm, LABELS, QC)["passed"]
    # one lung missing: said, ratio undefined (never a division by zero)
    lm = _lungs()
    lm[lm == 2] = 0
    q = check_segmentation(lm, LABELS, QC)
    assert not q["passed"] and "no left_lung found" in q["failures"]
    assert q["measures"]["left_right_ratio"] is None
    # unbalanced
    lm = _lungs()
    lm[0, 20:80, 55:65] = 2
    lm[0, 20:80, 65:90] = 0
    q = check_segmentation(lm, LABELS, QC)
    assert any("area ratio 3.50" in f for f in q["failures"])
    assert check_segmentation(_lungs(), LABELS, None) is None


@pytest.mark.parametrize("qc, field", [
    ({"area_fraction": [0.7, 0.1]}, "quality_checks.area_fraction"),
    ({"area_fraction": [0, 2]}, "quality_checks.area_fraction"),
    ({"max_pieces_per_label": 0}, "quality_checks.max_pieces_per_label"),
    ({"max_pieces_per_label": True}, "quality_checks.max_pieces_per_label"),
    ({"left_right_ratio": [0.5, 2], "ratio_labels": ["right_lung", "heart"]}, "quality_checks.ratio_labels"),
    ({"min_piece_fraction": 1.5, "max_pieces_per_label": 1}, "quality_checks.min_piece_fraction"),
    ({}, "names no check"),
    ({"area": [0.1, 0.5]}, "unknown key"),
])
def test_bad_quality_check_blocks_are_named_card_errors(qc, field):
    d = json.loads((W / "cxr-lung-seg" / "model.json").read_text())
    d["quality_checks"] = qc
    with pytest.raises(ModelCardError, match=field.replace(".", r"\.")):
        validate_card(d)


def test_classifiers_cannot_have_quality_checks():
    d = json.loads((W / "cxr-pneumonia" / "model.json").read_text())
    d["quality_checks"] = {"area_fraction": [0.1, 0.5]}
    with pytest.raises(ModelCardError, match="only used by segmenters"):
        validate_card(d)


def test_shipped_lung_card_states_checks_that_jsrt_references_pass():
    """The card's ranges hold every JSRT reference mask (the data they were derived from)."""
    import csv

    card = load_card(W / "cxr-lung-seg")
    qc = card.quality_checks
    assert qc is not None and qc.max_pieces_per_label == 1
    rows = list(csv.DictReader(need(JSRT / "labels.csv").open()))
    for r in rows:
        a, b = int(r["right_lung_px"]), int(r["left_lung_px"])
        assert qc.area_fraction[0] <= (a + b) / 224 ** 2 <= qc.area_fraction[1], r["file"]
        assert qc.left_right_ratio[0] <= a / b <= qc.left_right_ratio[1], r["file"]


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    d = tmp_path_factory.mktemp("films")
    child = need(KERMANY / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg")
    adult = need(JSRT / "images" / "JPCLN001.png")
    shutil.copy(child, d / child.name)
    shutil.copy(adult, d / adult.name)
    return d


def test_slivers_on_a_childs_film_are_flagged_in_results_and_cli(films, tmp_path, monkeypatch, capsys):
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    assert main(["analyze", str(films), "--model", "cxr-lung-seg", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    items = {it["source"].rsplit("/", 1)[-1]: it for it in
             json.loads((tmp_path / "o" / "results.json").read_text())["items"]}
    child = items["person100_bacteria_475.jpeg"]
    q = child["quality"]
    assert q["checked"] and not q["passed"], q
    assert sum(child["area_px"].values()) < 3000  # the slivers
    assert any("of the image, expected 12%-60%" in f for f in q["failures"])
    assert any(w.startswith("QUALITY CHECK FAILED") for w in child["warnings"])
    line = next(x for x in err.splitlines() if "person100_bacteria_475" in x)
    assert "QUALITY CHECK FAILED" in line
    adult = items["JPCLN001.png"]
    assert adult["quality"]["passed"], adult["quality"]
    assert not any("QUALITY" in w for w in adult["warnings"])
    line = next(x for x in err.splitlines() if "JPCLN001" in x)
    assert "quality checks passed" in line


def test_pneumonia_heat_map_region_on_slivers_is_said_to_be_meaningless(films, tmp_path, monkeypatch, capsys):
    """The lungs behind the pneumonia heat map's 'share inside the lungs' are cxr-lung-seg's:
    on the child's film they are slivers, so the share is flagged, not reported as normal."""
    from imaging_assist.cli.main import main

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(films / "person100_bacteria_475.jpeg", src)
    assert main(["analyze", str(src), "--model", "cxr-pneumonia", "--explain", "gradcam",
                 "--no-faithfulness", "--out", str(tmp_path / "o")]) == 0
    (it,) = json.loads((tmp_path / "o" / "results.json").read_text())["items"]
    er = it["explanation_region"]
    assert er["quality"]["checked"] and not er["quality"]["passed"]
    assert any("fail its quality checks" in w and "not meaningful" in w for w in it["warnings"])


def test_viewer_result_text_flags_a_failing_segmentation_and_words_a_rule_out_review():
    """The model panel's result text (ui/ai/model_panel.result_html): the lung card's quality
    checks on slivers; us-breast's low malignant threshold under a more probable benign class."""
    from imaging_assist.inference.results import ClassificationResult, SegmentationResult
    from imaging_assist_ui.ai.model_panel import result_html

    def plain(html):
        import re

        return re.sub(r"<[^>]+>", "", html).replace("&gt;", ">").replace("&lt;", "<")

    lung = load_card(W / "cxr-lung-seg")
    lm = np.zeros((1, 224, 224), np.uint8)
    lm[0, 100:120, 60:100] = 1
    lm[0, 100:115, 130:160] = 2
    res = SegmentationResult(lung.id, lung.version, "segmentation", list(lung.labels), label_map=lm,
                             voxel_counts={"background": int((lm == 0).sum()), "right_lung": int((lm == 1).sum()),
                                           "left_lung": int((lm == 2).sum())},
                             area_px={"right_lung": int((lm == 1).sum()), "left_lung": int((lm == 2).sum())})
    assert "QUALITY CHECK FAILED" in plain(result_html(res, lung, 0.0))
    us = load_card(W / "us-breast")
    t = us.thresholds["malignant"].threshold
    probs = {"benign": 0.7, "malignant": t + 0.05, "normal": 0.3 - t - 0.05}
    from imaging_assist.inference.results import decide

    res = ClassificationResult(us.id, us.version, "classification", list(us.labels), probabilities=probs,
                               decisions=decide(probs, us.thresholds))
    text = plain(result_html(res, us, 0.0))
    assert "above rule-out threshold: review" in text and "positive" not in text
    findings = text[text.index("Findings"):]
    assert findings.index("benign") < findings.index("malignant")  # most likely first
    assert "test:" in text and "specificity" in text


def test_quality_is_checked_at_segmentation_time_on_the_result(films):
    """run_model itself (used by analyze, demo, viewer, report writers) attaches `quality`
    to the segmentation result and its results.json dict, with one warning when it fails."""
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.registry import Registry

    model = Registry().load("cxr-lung-seg")
    res = run_model(model, read_image(films / "person100_bacteria_475.jpeg"), RunOptions(device="cpu"))
    assert res.quality is not None and not res.quality["passed"]
    assert sum(w.startswith("QUALITY CHECK FAILED") for w in res.warnings) == 1
    d = res.to_dict()
    assert d["quality"]["passed"] is False
    res = run_model(model, read_image(films / "JPCLN001.png"), RunOptions(device="cpu"))
    assert res.quality["passed"] and res.to_dict()["quality"]["passed"]
