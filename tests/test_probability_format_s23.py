"""Session 23: one rule prints a probability beside its threshold everywhere (CLI decision
lines, the headless demo's lines, the nodule line, the viewer's panels, the PDF report), and a
nodule's probability is stored unrounded (a 4-decimal rounding crossed the threshold in the SR).
"""

from __future__ import annotations

import pytest

from imaging_assist.models.operating_point import decision_text, format_probability


@pytest.mark.parametrize("p,thr,expected", [
    (0.17224, 0.1722, "0.1722"),        # above: 3 decimals would read "0.172 >= 0.1722"
    (0.61996, 0.62, "0.61996"),         # below: 3 decimals would read "0.620 < 0.62"
    (0.61999999, 0.62, "0.61999999"),   # the viewer's old rule stopped at 6 decimals: "0.620000 < 0.62"
    (0.62, 0.62, "0.620"),              # equal reads ">=": fine at 3 decimals
    (0.9104, 0.62, "0.910"),
    (0.25, None, "0.250"),
    (float("nan"), 0.5, "not a number"),
])
def test_format_probability_reads_on_its_side(p, thr, expected):
    assert format_probability(p, thr) == expected


def _negative(p, thr):
    return {"most_likely": "normal", "labels": [
        {"label": "pneumonia", "probability": p, "threshold": thr, "state": "negative", "operating_point": None}]}


def test_engine_decision_line_never_reads_equal_to_the_threshold():
    assert "pneumonia 0.61996 < threshold 0.62: negative" in decision_text(_negative(0.61996, 0.62))
    d = {"most_likely": "pneumonia", "labels": [
        {"label": "pneumonia", "probability": 0.62034, "threshold": 0.6203, "state": "positive", "operating_point": None}]}
    assert "pneumonia 0.6203 >= threshold 0.6203: positive" in decision_text(d)


def test_demo_lines_use_the_rule():
    from imaging_assist.demo import analysis_lines

    lines = analysis_lines({"probabilities": {"pneumonia": 0.17224},
                            "decisions": {"pneumonia": {"threshold": 0.1722, "positive": True}}})
    assert "pneumonia 0.1722 ≥ 0.1722 → positive" in lines


def test_viewer_decision_text_uses_the_rule():
    from imaging_assist_ui.ai.model_support import decision_text as gui_text

    s = gui_text("pneumonia", 0.61999999, {"threshold": 0.62, "positive": False})
    assert s.startswith("pneumonia 0.61999999 < 0.62"), s


def _nodule(p, thr, state):
    from imaging_assist.nodules.analysis import NoduleResult

    return NoduleResult(id="N1", point_lps=[0.0, 0.0, 0.0], found=True, volume_mm3=500.0,
                        long_axis_mm=12.0, short_axis_mm=9.0, mean_hu=-50.0, density="solid",
                        p_malignant=p, threshold=thr,
                        decision={"most_likely": "benign", "labels": [
                            {"label": "malignant", "probability": p, "threshold": thr, "state": state}]})


def test_nodule_line_and_stored_probability():
    r = _nodule(0.17196, 0.172, "negative")
    assert "malignant 0.17196 < threshold 0.172: negative" in r.text, r.text
    d = _nodule(0.17216, 0.1722, "negative").to_dict()  # 4 decimals stored 0.1722: positive side
    assert d["p_malignant"] == 0.17216 and d["p_malignant"] < d["threshold"]


def test_sr_probability_is_the_unrounded_one():
    """A results.json written before this session holds p_malignant rounded to 4 decimals
    (0.1722) beside the decision's unrounded probability (0.17216, negative): the SR's
    Probability of cancer is the unrounded one, on the same side of the threshold as its
    decision."""
    from imaging_assist.export.sr import _nodule_groups

    nd = _nodule(0.17216, 0.1722, "negative").to_dict()
    nd["p_malignant"] = 0.1722  # as older versions stored it
    (group,) = _nodule_groups({"nodules": [nd], "model": "ct-nodule-malignancy"}, None, None, [], [])
    values = {}

    def walk(items):
        for item in items:
            if getattr(item, "ValueType", None) == "NUM":
                values[item.ConceptNameCodeSequence[0].CodeMeaning] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(getattr(item, "ContentSequence", []))

    walk(group)
    assert values["Probability of cancer"] == pytest.approx(0.17216, abs=1e-9), values
    assert values["Operating threshold"] == pytest.approx(0.1722)
