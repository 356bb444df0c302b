"""What the GUI tells the reader about a model (audit of session 22):

* the nodule panel quotes the malignancy threshold's test figures (it quoted nothing: it read
  keys the engine keeps under ``test``) and never prints the likelihood equal to the threshold
  ("0.17 < 0.17" for 0.1712 against 0.1722);
* a card's ``limitations`` must be a string or a list of strings (a number crashed the card
  dialog and the PDF export; a string printed one bullet per character in the report);
* model-list tooltips and the panel's error line show an added card's text literally (a name
  with ``<img src=file:...>`` and ``<b>VERIFIED</b>`` was rendered as rich text);
* the card dialog shows ``data.splits`` (counts per split), as docs/model_card.md says."""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from conftest import ROOT  # noqa: E402
from imaging_assist.models.card import ModelCardError, load_card, validate_card  # noqa: E402

WEIGHTS = ROOT / "weights"


def _nodule(p):
    from imaging_assist.models.operating_point import decide_item

    c = load_card(WEIGHTS / "ct-nodule-malignancy")
    dec = decide_item(c, {"benign": 1 - p, "malignant": p})
    return SimpleNamespace(p_malignant=p, threshold=c.thresholds["malignant"].threshold, decision=dec,
                           ood={"flagged": False})


def test_the_nodule_panel_quotes_the_thresholds_test_figures():
    from imaging_assist_ui.radiology.nodule_results import operating_point_line

    line = operating_point_line(_nodule(0.9))
    assert "sensitivity" in line and "specificity" in line and "test" in line, line


@pytest.mark.parametrize("p", [0.1712, 0.1725, 0.9])
def test_the_nodule_likelihood_never_reads_equal_to_its_threshold(p):
    from imaging_assist_ui.radiology.nodule_results import malignancy_text

    r = _nodule(p)
    text = malignancy_text(r)
    t = f"{r.threshold:g}"
    shown = text.split("likelihood ", 1)[1].split(" ", 1)[0]
    assert t in text and shown != t and (float(shown) < r.threshold) == (p < r.threshold), text


def _raw(**over):
    d = json.loads((WEIGHTS / "cxr-pneumonia" / "model.json").read_text())
    d = copy.deepcopy(d)
    d.update(over)
    return d


@pytest.mark.parametrize("bad", [5, [1, 2], {"a": "b"}, ["ok", None]])
def test_limitations_that_are_not_text_are_refused(bad):
    with pytest.raises(ModelCardError, match="limitations"):
        validate_card(_raw(limitations=bad), WEIGHTS / "cxr-pneumonia")


def test_a_string_limitation_is_one_line_in_the_dialog_and_the_report():
    from imaging_assist.export.report_pdf import card_summary
    from imaging_assist.models.card import card_limitations

    card = validate_card(_raw(limitations="Only children aged 1-5."), WEIGHTS / "cxr-pneumonia")
    assert card_limitations(card) == ["Only children aged 1-5."]
    assert card_summary(card)["limitations"] == ["Only children aged 1-5."]


def test_tooltips_and_the_error_line_show_card_text_literally(qapp):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QTextDocument

    name = "<img src='file:///tmp/x.png' width=60>Pneumonia <b>VERIFIED</b>\nsecond line"
    from imaging_assist_ui.ai.model_support import plain_tip

    tip = plain_tip(name)
    doc = QTextDocument()
    doc.setHtml(tip)
    assert doc.toPlainText().replace("\u2028", "\n") == name  # shown as written, line break kept
    assert "<img" not in tip and "<b>" not in tip
    from imaging_assist_ui.ai.model_panel import ModelPanel
    from imaging_assist_ui.radiology.document import ViewerDocument

    panel = ModelPanel(ViewerDocument(), add_layer=lambda *a, **k: None)
    assert panel.error.textFormat() == Qt.PlainText


def test_the_card_dialog_shows_the_split_counts(qapp):
    from imaging_assist_ui.ai.model_card_dialog import card_html

    html = card_html(load_card(WEIGHTS / "cxr-pneumonia"))
    assert "original_test" in html and ">281<" in html and ">355<" in html
