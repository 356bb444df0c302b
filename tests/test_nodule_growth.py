"""Nodule growth between a prior and a current CT (imaging_assist/nodules/growth.py): known
answers for the volume doubling time, the 25% volumetry variability, the mean-diameter change,
warnings, refusals, and the command line on two results.json files."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from imaging_assist.nodules.growth import Measured, growth, parse_date


def _m(v, date, la=None, sa=None, th=1.0, label=""):
    return Measured(v, parse_date(date), la, sa, th, label)


def test_a_doubled_volume_gives_the_interval_as_vdt():
    g = growth(_m(500, "20230101", 10, 8), _m(1000, "20230701", 12.5, 10))
    assert g.interval_days == 181 and g.verdict == "grew"
    assert g.vdt_days == pytest.approx(181.0) and g.change_pct == pytest.approx(100.0)
    assert g.diameter_change_mm == pytest.approx(2.25)
    assert g.text() == "grew +100% in 181 days (VDT 181 days), mean diameter +2.2 mm"
    assert g.warnings == []


def test_vdt_formula_and_the_25_percent_band():
    g = growth(_m(400, "2022-01-01"), _m(600, "2023-01-01"))  # 1.5x in 365 days
    assert g.vdt_days == pytest.approx(365 * math.log(2) / math.log(1.5))
    assert g.vdt_days == pytest.approx(624.0, abs=0.5)
    assert growth(_m(400, "20220101"), _m(500, "20230101")).verdict == "grew"     # +25%: at the edge
    s = growth(_m(400, "20220101"), _m(499, "20230101"))
    assert s.verdict == "stable" and s.vdt_days is None and "within ±25% volumetry variability" in s.text()
    assert growth(_m(400, "20220101"), _m(301, "20230101")).verdict == "stable"
    small = growth(_m(400, "20220101"), _m(300, "20230101"))
    assert small.verdict == "smaller" and small.vdt_days is None and small.text().startswith("smaller: -25% in 365 days")


def test_warnings_short_interval_and_different_slices():
    g = growth(_m(100, "20230101", th=1.0), _m(200, "20230115", th=2.5))
    assert any("interval of 14 days" in w for w in g.warnings)
    assert any("slice thickness 1 vs 2.5 mm" in w for w in g.warnings)
    u = growth(_m(100, "20230101", th=None), _m(200, "20240101"))
    assert any("slice thickness of a study unknown" in w for w in u.warnings)


@pytest.mark.parametrize("prior,current,why", [
    (("20230101", 100), ("20230101", 200), "must be older"),
    (("20240101", 100), ("20230101", 200), "must be older"),
])
def test_the_prior_must_be_older(prior, current, why):
    with pytest.raises(ValueError, match=why):
        growth(_m(prior[1], prior[0]), _m(current[1], current[0]))


@pytest.mark.parametrize("volume", [0, -5, float("nan"), float("inf"), None])
def test_volumes_must_be_positive_numbers(volume):
    with pytest.raises(ValueError, match="not a positive number"):
        Measured(volume, dt.date(2023, 1, 1))


@pytest.mark.parametrize("text", ["", "2023", "20231301", "yesterday", None])
def test_dates_are_checked(text):
    with pytest.raises(ValueError, match="date"):
        parse_date(text)


def test_from_a_results_entry_and_to_dict():
    d = {"id": "N1", "found": True, "volume_mm3": 250.0, "long_axis_mm": 9.0, "short_axis_mm": 7.0}
    m = Measured.from_result(d, "20230105", "1.25")
    assert (m.volume_mm3, m.date, m.slice_thickness_mm, m.label) == (250.0, dt.date(2023, 1, 5), 1.25, "N1")
    with pytest.raises(ValueError, match="no nodule found"):
        Measured.from_result({"id": "N2", "found": False, "reason": "no nodule found at this point"}, "20230105")
    g = growth(m, Measured.from_result(dict(d, id="N7", volume_mm3=500.0), "20240105", 1.25))
    out = g.to_dict()
    assert out["vdt_days"] == pytest.approx(365.0) and out["verdict"] == "grew"
    assert out["prior"] == {"label": "N1", "date": "2023-01-05", "volume_mm3": 250.0}
    json.dumps(out)


BAD_VALUES = [None, "x", "", [1], {"a": 1}, True, float("nan"), float("inf"), -1.0, 0.0, 1e300, 1e-300, "1e400"]


@pytest.mark.parametrize("where,key", [("prior", "volume_mm3"), ("current", "volume_mm3"), ("prior", "long_axis_mm"),
                                       ("current", "short_axis_mm"), ("prior_facts", "slice_thickness_mm"),
                                       ("current_facts", "study_date"), ("prior_facts", "series_uid")])
def test_compare_with_damaged_values_is_a_result_or_one_line(where, key):
    """A results.json can be edited or damaged: every value either gives a growth that is plain
    JSON (no NaN or infinity) or a one-line ValueError, never another exception."""
    import json

    from imaging_assist.nodules.growth import compare

    for bad in BAD_VALUES:
        args = {"prior": {"id": "N1", "found": True, "volume_mm3": 100.0, "long_axis_mm": 6.0, "short_axis_mm": 5.0},
                "prior_facts": {"study_date": "20200101", "slice_thickness_mm": 1.0, "series_uid": "1.2"},
                "current": {"id": "N1", "found": True, "volume_mm3": 200.0, "long_axis_mm": 7.0, "short_axis_mm": 6.0},
                "current_facts": {"study_date": "20210101", "slice_thickness_mm": 1.0, "series_uid": "1.3"}}
        args[where][key] = bad
        try:
            d = compare(args["prior"], args["prior_facts"], args["current"], args["current_facts"])
        except ValueError as e:
            assert len(str(e).splitlines()) == 1 and len(str(e)) < 200, (key, bad, e)
            continue
        json.dumps(d, allow_nan=False)
        assert d["verdict"] in ("grew", "stable", "smaller")
