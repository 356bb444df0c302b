"""A sanity.json made with other weights (a retrained or fine-tuned model) is said to be so in
the model card dialog and the PDF report: the dialog left the section out as if no check had
ever been made, and the report said "no sanity check recorded"."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from conftest import ROOT  # noqa: E402

SHIPPED = ROOT / "weights" / "cxr-pneumonia"


def _copy(tmp_path, weights_sha256):
    from imaging_assist.models.card import load_card

    f = tmp_path / "cxr-pneumonia"
    shutil.copytree(SHIPPED, f)
    doc = json.loads((f / "sanity.json").read_text())
    doc["weights_sha256"] = weights_sha256
    (f / "sanity.json").write_text(json.dumps(doc))
    return load_card(f)


def _item():
    return {"heatmaps": [{"method": "gradcam", "label": "pneumonia"}]}


def test_the_report_says_a_check_of_other_weights_is_not_a_check_of_these(tmp_path):
    from imaging_assist.export.report_pdf import _explanations, card_summary

    card = _copy(tmp_path, "0" * 64)
    summ = card_summary(card)
    assert summ["sanity"] == {} and "gradcam" in summ["sanity_other_weights"]
    line = _explanations(_item(), summ)[0]
    assert "not checked for these weights" in line and "no sanity check recorded" not in line, line
    # the shipped file, of these weights: its verdict, as before
    ok = card_summary(_copy(tmp_path / "b", json.loads((SHIPPED / "sanity.json").read_text())["weights_sha256"]))
    assert ok["sanity"].get("gradcam") is True and ok["sanity_other_weights"] == []
    assert "sanity check passed" in _explanations(_item(), ok)[0]


def test_the_card_dialog_says_the_check_on_record_is_of_other_weights(qapp, tmp_path):
    from imaging_assist_ui.ai.model_card_dialog import card_html

    html = card_html(_copy(tmp_path, "0" * 64))
    assert "Explanation sanity check" in html
    assert "gradcam, integrated gradients, saliency, occlusion: not checked for these weights: the " \
        "weight-randomisation sanity check of model cxr-pneumonia was made with other weights" in html
    assert html.count("not checked for these weights") == 1 and "rerun scripts/check_explanations.py" in html
    assert "passed</span>" not in html
