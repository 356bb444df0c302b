"""The PDF report says what results.json says about each nodule (an audit found it did not):
its warnings, its out-of-distribution flag (a click on the mediastinum printed as a clean 2 mL
solid nodule), its decision with the card's test figures, and the cards of every model whose
numbers it prints; a decision withheld for two reasons gives both."""

import subprocess

from imaging_assist.export.report_pdf import build_report, write_report_pdf


def _text(pdf) -> str:
    return " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                                   check=True).stdout.split())


def _nodule(**kw):
    nd = {"id": "N1", "found": True, "label_value": 1, "center_lps": [23.0, -12.7, -106.2],
          "volume_mm3": 1966.0, "long_axis_mm": 18.9, "short_axis_mm": 13.4, "mean_hu": -59.0,
          "density": "solid", "p_malignant": 0.9234, "threshold": 0.1722,
          "models": {"ct-nodule-seg": "1.1.0", "ct-nodule-malignancy": "1.0.0"},
          "warnings": ["the segmenter is less sure of this outline (0.63 < 0.83): it may not be a nodule"],
          "decision": {"withheld": True, "withheld_reason": "outside what this model was trained on"},
          "ood": {"flagged": True, "score": 3.33, "threshold": 2.56,
                  "reasons": ["image features unlike the training images"]}}
    nd.update(kw)
    return nd


def _doc(item):
    base = {"model": "ct-nodule-malignancy", "model_version": "1.0.0", "task": "nodule", "kind": "series",
            "description": "slab", "source": "slab", "warnings": []}
    return {"items": [dict(base, **item)]}


def test_a_flagged_nodule_gets_its_box_and_its_warnings(tmp_path):
    pdf = write_report_pdf(build_report(_doc({"nodules": [_nodule()]}), load_missing=False), tmp_path / "r.pdf")
    t = _text(pdf)
    assert "N1: Outside what this model was trained on (score 3.33, limit 2.56)" in t
    assert "may not describe a nodule" in t and "image features unlike the training images" in t
    assert "N1: the segmenter is less sure of this outline" in t
    assert "0.923 (decision withheld)" in t
    # the segmenter's numbers are printed too: its card is listed
    assert "ct-nodule-seg 1.1.0 —" in t and "ct-nodule-malignancy 1.0.0 —" in t


def test_a_nodule_decision_says_positive_with_its_test_figures(tmp_path):
    nd = _nodule(p_malignant=0.999, warnings=[], ood={"flagged": False},
                 decision={"text": "positive [patient-split test (73 patients): sensitivity 0.90 (0.81-0.98), "
                                   "specificity 0.71 (0.60-0.81)]"})
    t = _text(write_report_pdf(build_report(_doc({"nodules": [nd]}), load_missing=False), tmp_path / "r.pdf"))
    assert "0.999 >= 0.1722: positive" in t
    assert "N1: malignancy positive [patient-split test (73 patients): sensitivity 0.90 (0.81-0.98)" in t
    assert "Outside what this model" not in t


def test_a_decision_withheld_for_two_reasons_gives_both(tmp_path):
    item = {"model": "cxr-pneumonia", "model_version": "1.0.0", "task": "classification",
            "probabilities": {"normal": 0.1, "pneumonia": 0.9},
            "decisions": {"pneumonia": {"threshold": 0.7477, "positive": None,
                                        "withheld": "research override: the model card does not fit this series"}},
            "ood": {"flagged": True, "score": 2.2, "threshold": 1.57, "reasons": ["x"]},
            "research_override": {"reasons": ["the patient is 47 years"]}}
    t = _text(write_report_pdf(build_report(_doc(item), load_missing=False), tmp_path / "r.pdf"))
    assert "Research override: the model card does not fit this input (the patient is 47 years)" in t
    assert "Outside what this model was trained on (score 2.2, limit 1.57)" in t
    assert "outside what this model was trained on; research override: the model card does not fit" in t


def _review_nodule(p=0.4307, state="review"):
    text = (f"malignant {p:.3f} above rule-out threshold 0.1722: review (most likely: benign)" if state == "review"
            else f"malignant {p:.3f} < threshold 0.1722: negative")
    return _nodule(p_malignant=round(p, 4), warnings=[], ood={"flagged": False},
                   decision={"withheld": False, "most_likely": "benign" if p < 0.5 else "malignant", "text": text,
                             "labels": [{"label": "malignant", "probability": p, "threshold": 0.1722,
                                         "state": state}]})


def test_a_nodule_is_said_as_the_engine_decided_it_everywhere(tmp_path):
    """Above the rule-out threshold while benign is more likely the engine decides "review";
    the CLI line, the PDF table and the SR said "positive" / Present (recomputed p >= t), and a
    probability just under the threshold, rounded to 4 decimals, became "positive" too."""
    import pydicom

    from conftest import SHARED, need
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.export import dicom_common as dc
    from imaging_assist.export.sr import _nodule_groups
    from imaging_assist.nodules.analysis import NoduleResult

    t = _text(write_report_pdf(build_report(_doc({"nodules": [_review_nodule()]}), load_missing=False),
                               tmp_path / "r.pdf"))
    assert "0.431 >= 0.1722: review" in t and "positive" not in t
    t = _text(write_report_pdf(build_report(_doc({"nodules": [_review_nodule(0.17216, "negative")]}),
                                            load_missing=False), tmp_path / "r2.pdf"))
    assert "0.172 < 0.1722: negative" in t and "positive" not in t
    r = NoduleResult(id="N1", point_lps=(0.0, 0.0, 0.0), found=True, volume_mm3=100.0, long_axis_mm=6.0,
                     short_axis_mm=5.0, p_malignant=0.17216, threshold=0.1722,
                     decision=_review_nodule(0.17216, "negative")["decision"])
    assert "< threshold 0.1722: negative" in r.text
    r.p_malignant, r.decision = 0.4307, _review_nodule()["decision"]
    assert ">= threshold 0.1722: review (benign more likely)" in r.text
    # the SR: "Review" as the model's decision, never "Present"
    vol = load_series(scan(str(need(SHARED / "ct" / "lidc_idri_0001_slab"))).image_series()[0])
    warns: list = []
    for nd, want in ((_review_nodule(), "REVIEW"), (_review_nodule(0.17216, "negative"), "Absent")):
        (g,) = _nodule_groups({"model": "ct-nodule-malignancy", "nodules": [nd]}, None, vol,
                              dc.source_datasets(vol), warns)
        ds = pydicom.Dataset()
        ds.ContentSequence = g
        text = str(ds)
        assert want in text and "Present" not in text, want
