"""Issue 14, gating: the card's ``population`` (age, view position, image kind) is part of the
one fit rule set (models/matching.py) used by analyze, the demo and the viewer; a series the
card does not fit is refused with the reason, or run under ``--research-override`` with the
decision withheld and the override recorded in results.json."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

from conftest import ROOT
from imaging_assist.models.card import load_card, validate_card
from imaging_assist.models.errors import ModelCardError
from imaging_assist.models.matching import SeriesFacts, match_card

DEMO = ROOT / "imaging_assist" / "data" / "demo"
CHILD = DEMO / "chest_xray" / "cxr_01_ap.dcm"  # 004Y AP
ADULTS = [DEMO / "chest_xray" / "cxr_03_pa.dcm", DEMO / "chest_xray" / "cxr_04_pa.dcm"]  # 047Y, 052Y
CT = DEMO / "ct_head_phantom"
W = ROOT / "weights"


def _cli(argv):
    from imaging_assist.cli import main

    return main(argv)


def _facts(path):
    from imaging_assist.dicom import scan

    (s,) = scan(str(path)).image_series()
    return SeriesFacts.from_series(s)


def test_shipped_cards_state_their_population():
    pn = load_card(W / "cxr-pneumonia").population
    assert pn.age_years == (1, 5) and pn.view_positions == ["AP"]  # Kermany: anterior-posterior films
    assert pn.image_kind == "projection radiograph"
    lung = load_card(W / "cxr-lung-seg").population
    assert lung.age_years == (16, 89) and lung.view_positions == ["PA"]  # JSRT: adults, PA
    assert load_card(W / "us-breast").population.image_kind == "ultrasound"
    assert load_card(W / "path-lung-tissue").population.image_kind == "microscopy"


def test_paediatric_model_does_not_fit_adults_aged_47_and_52():
    card = load_card(W / "cxr-pneumonia")
    for p in ADULTS:
        m = match_card(card, _facts(p))
        assert not m.ok and "aged 1-5 years" in m.reason, (p, m)
    assert "47 years" in match_card(card, _facts(ADULTS[0])).reason
    m = match_card(card, _facts(CHILD))
    assert m.ok and m.score > 0 and not m.warnings, m


def test_unknown_age_or_view_fits_with_a_warning_never_silently(tmp_path):
    card = load_card(W / "cxr-pneumonia")
    ds = pydicom.dcmread(CHILD)
    del ds.PatientAge
    del ds.ViewPosition
    ds.PatientBirthDate = ""
    ds.save_as(tmp_path / "x.dcm")
    m = match_card(card, _facts(tmp_path / "x.dcm"))
    assert m.ok
    assert any("patient age not given" in w and "1-5 years" in w for w in m.warnings), m.warnings
    assert any("view position not given" in w for w in m.warnings), m.warnings
    # a plain image: nothing of the population is known, each is said
    m = match_card(card, SeriesFacts(is_dicom=False, units="", loaded=False))
    assert m.ok and sum("not checked" in w for w in m.warnings) >= 3, m.warnings


def test_lateral_view_and_other_image_kind_are_refused(tmp_path):
    card = load_card(W / "cxr-pneumonia")
    ds = pydicom.dcmread(CHILD)
    ds.ViewPosition = "LL"
    ds.save_as(tmp_path / "ll.dcm")
    m = match_card(card, _facts(tmp_path / "ll.dcm"))
    assert not m.ok and "AP views, the series is LL" in m.reason
    # a card taking any modality (OT) still refuses a CT when its population is radiographs
    d = json.loads((W / "cxr-pneumonia" / "model.json").read_text())
    d["modality"], d["body_part"] = ["OT"], None
    m = match_card(validate_card(d), SeriesFacts("CT", "HEAD", 28, True, "HU"))
    assert not m.ok and "projection radiograph, the series is a cross-sectional" in m.reason
    # months and days: a 6-month-old is not 1-5 years
    m = match_card(card, SeriesFacts("CR", "CHEST", patient_age_years=0.5, view_position="AP"))
    assert not m.ok and "6 months" in m.reason
    # completed years: 5 years 11 months is 5
    assert match_card(card, SeriesFacts("CR", "CHEST", patient_age_years=5.9, view_position="AP")).ok
    assert not match_card(card, SeriesFacts("CR", "CHEST", patient_age_years=6.0, view_position="AP")).ok


@pytest.mark.parametrize("pop, field", [
    ({"age_years": [5, 1]}, "population.age_years"),
    ({"age_years": [1, float("nan")]}, "population.age_years"),
    ({"age_years": "1-5"}, "population.age_years"),
    ({"view_positions": "AP"}, "population.view_positions"),
    ({"image_kind": "xray"}, "population.image_kind"),
    ({"agee": [1, 5]}, "unknown key"),
    ("children", "population"),
])
def test_bad_population_blocks_are_named_card_errors(pop, field):
    d = json.loads((W / "cxr-pneumonia" / "model.json").read_text())
    d["population"] = pop
    with pytest.raises(ModelCardError, match=field.replace(".", r"\.")):
        validate_card(d)


def test_analyze_refuses_adults_and_a_ct_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    src = tmp_path / "adults"
    src.mkdir()
    for p in ADULTS:
        shutil.copy(p, src / p.name)
    assert _cli(["analyze", str(src), "--model", "cxr-pneumonia", "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert "trained on patients aged 1-5 years, the patient is 47 years" in err
    assert "the patient is 52 years" in err
    assert not (tmp_path / "o1" / "results.json").exists()
    assert _cli(["analyze", str(CT), "--model", "path-lung-tissue", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "model is for SM, the series is CT" in err and "microscopy" in err


def test_research_override_runs_with_the_decision_withheld_and_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    out = tmp_path / "o"
    assert _cli(["analyze", str(CT), "--model", "cxr-pneumonia", "--research-override",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "research-override" in err and "positive" not in err and "decision withheld" in err
    (it,) = json.loads((out / "results.json").read_text())["items"]
    ro = it["research_override"]
    assert any("the series is CT" in r for r in ro["reasons"])
    assert any("shows BRAIN" in r for r in ro["reasons"])
    assert it["decision"]["withheld"] and "research override" in it["decision"]["withheld_reason"]
    assert all(x["state"] == "withheld" for x in it["decision"]["labels"])
    assert it["decisions"]["pneumonia"]["positive"] is None  # nothing can act on it
    assert it["probabilities"]["pneumonia"] >= 0  # the probabilities stay
    assert any("research override" in w for w in it["warnings"])
    # adults under the override: recorded with the age reason
    src = tmp_path / "adults"
    src.mkdir()
    shutil.copy(ADULTS[0], src / ADULTS[0].name)
    assert _cli(["analyze", str(src), "--model", "cxr-pneumonia", "--research-override",
                 "--out", str(tmp_path / "o2")]) == 0
    (it,) = json.loads((tmp_path / "o2" / "results.json").read_text())["items"]
    assert any("47 years" in r for r in it["research_override"]["reasons"])
    assert it["decisions"]["pneumonia"]["positive"] is None


def test_a_fitting_series_has_no_override_record(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    src = tmp_path / "child"
    src.mkdir()
    shutil.copy(CHILD, src / CHILD.name)
    assert _cli(["analyze", str(src), "--model", "cxr-pneumonia", "--research-override",
                 "--out", str(tmp_path / "o")]) == 0
    (it,) = json.loads((tmp_path / "o" / "results.json").read_text())["items"]
    assert "research_override" not in it
    # (the decision may still be withheld by the OOD check, never for an override)
    assert "research override" not in str(it["decision"]["withheld_reason"])
    assert not any("research override" in w for w in it["warnings"])


@pytest.mark.parametrize("age, birth, want", [
    ("999Y", "", "unknown"), ("abcY", "", "unknown"), ("-5Y", "", "unknown"), ("", "", "unknown"),
    ("004Y", "", "fits"), ("048M", "", "fits"), ("011M", "", "refused"), ("006Y", "", "refused"),
    ("", "20200105", "fits"), ("", "30000101", "unknown"), ("", "18000101", "unknown"),
    ("\x00\xff", "", "unknown"), ("4 Y", "", "fits"),
])
def test_mutated_age_headers_never_pass_silently(tmp_path, age, birth, want):
    """Mutated PatientAge / birth dates of a real demo film: an unreadable or implausible age is
    unknown (a warning), never a guess; a readable one decides."""
    card = load_card(W / "cxr-pneumonia")
    ds = pydicom.dcmread(CHILD)
    ds.PatientAge = age
    ds.PatientBirthDate = birth
    ds.StudyDate = "20240105"
    f = tmp_path / "x.dcm"
    ds.save_as(f)
    m = match_card(card, _facts(f))
    if want == "unknown":
        assert m.ok and any("patient age not given" in w for w in m.warnings), m
    elif want == "fits":
        assert m.ok and not any("age" in w for w in m.warnings), m
    else:
        assert not m.ok and "aged 1-5 years" in m.reason, m


def test_fit_star_in_the_viewer_uses_the_loaded_series_age():
    """The model panel's star comes from match_card(series_facts(volume, series)): the loaded
    adult films keep PatientAge/ViewPosition, so the paediatric model does not fit them."""
    from imaging_assist.dicom import load_series, scan

    card = load_card(W / "cxr-pneumonia")
    for p, ok in ((ADULTS[0], False), (ADULTS[1], False), (CHILD, True)):
        (s,) = scan(str(p)).image_series()
        vol = load_series(s)
        from imaging_assist.models.matching import series_facts

        for facts in (series_facts(vol, s), series_facts(vol, None)):
            assert match_card(card, facts).ok is ok, (p, facts)


@pytest.mark.parametrize("vp, want", [("ap", "fits"), (" AP ", "fits"), ("AP\x00", "fits"), ("", "unknown"),
                                      ("PA", "refused"), ("LATERAL", "refused"), ("\xff\xfe", "refused")])
def test_mutated_view_positions_of_a_real_film(tmp_path, vp, want):
    card = load_card(W / "cxr-pneumonia")
    ds = pydicom.dcmread(CHILD)
    ds.ViewPosition = vp
    f = tmp_path / "x.dcm"
    ds.save_as(f)
    m = match_card(card, _facts(f))
    if want == "fits":
        assert m.ok and not any("view" in w for w in m.warnings), m
    elif want == "unknown":
        assert m.ok and any("view position not given" in w for w in m.warnings), m
    else:
        assert not m.ok and "AP views" in m.reason, m
