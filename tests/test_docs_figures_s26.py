"""docs/slides.md quoted path-lung-tissue's test figures with the intervals of an earlier
training run (0.962–0.995 where the card says 0.964–0.995) and its augmentation as it was
before: the paragraph is checked against the card, which the training script writes."""
import json
import re
from decimal import ROUND_HALF_UP, Decimal

from conftest import ROOT


def _r3(v) -> str:
    """The card's value (stored to 4 decimals) to 3, half up, as written by hand."""
    return str(Decimal(str(v)).quantize(Decimal("0.001"), ROUND_HALF_UP))


def _card():
    return json.loads((ROOT / "weights" / "path-lung-tissue" / "model.json").read_text())


def test_the_slides_docs_test_figures_are_the_cards():
    text = " ".join((ROOT / "docs" / "slides.md").read_text().split())
    result = text[text.index("* **Result**"):text.index("* **Smoke checks")]
    names = {("macro AUC", None): "macro AUC", ("AUC", "adenocarcinoma"): "adenocarcinoma",
             ("AUC", "squamous_cell_carcinoma"): "squamous", ("accuracy", None): "accuracy",
             ("ECE", None): "ECE"}
    seen = 0
    for m in _card()["metrics"]:
        word = names.get((m["name"], m.get("label")))
        if word is None or "grouped test split" not in m["data"]:
            continue
        lo, hi = m["ci95"]
        want = _r3(m["value"]) + rf"\*{{0,2}} \({_r3(lo)}–{_r3(hi)}\)"
        assert re.search(re.escape(word) + r"[^()]*?" + want.replace(".", r"\."), result), (word, want, result)
        seen += 1
    assert seen == 5


def test_the_slides_docs_augmentation_is_the_cards():
    text = " ".join((ROOT / "docs" / "slides.md").read_text().split())
    aug = _card()["training"]["augmentation"]
    stain = re.search(r"x\(1±([\d.]+)\) ± ([\d.]+) OD", aug)
    bright = re.search(r"brightness ±(\d+)%", aug)
    assert stain and bright, aug
    assert f"×(1 ± {stain[1]}) ± {stain[2]} OD" in text
    assert f"brightness ± {bright[1]} %" in text
