"""``imaging-assist nodule-growth``: the real LIDC-IDRI-0001 slab analysed as a current study
and, copied with an earlier StudyDate and new UIDs, as its prior (same pixels: stable, +0%);
handmade results.json files for a grown nodule, several nodules, and what is refused."""

from __future__ import annotations

import json
import math

import pytest
from pydicom.uid import generate_uid

from conftest import SHARED, dated_copy
from test_nodule_workflow import _cli

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
CENTRE = "56.21,86.34,-115.87"  # the nodule (labels.csv, LPS mm)


@pytest.fixture(scope="module")
def analyses(tmp_path_factory):
    from imaging_assist.cli import main

    root = tmp_path_factory.mktemp("growth")
    prior = root / "prior_study"
    dated_copy(SLAB, prior, "19990701")
    for name, src in (("cur", SLAB), ("pri", prior)):
        assert main(["analyze", str(src), "--model", "ct-nodule-malignancy", "--at", CENTRE,
                     "--out", str(root / name)]) == 0
    return root


def test_real_slab_and_its_copy_a_year_earlier_are_stable(analyses, capsys):
    item = json.loads((analyses / "cur" / "results.json").read_text())["items"][0]
    assert item["study_date"] == "2000-01-01" and item["slice_thickness_mm"] == 2.5
    rc, o = _cli(["nodule-growth", str(analyses / "pri"), str(analyses / "cur" / "results.json")], capsys)
    assert rc == 0, o.err
    lines = o.out.splitlines()
    assert lines[0].startswith("nodule N1 (1999-07-01, ") and "N1 (2000-01-01, " in lines[0]
    assert lines[0].endswith("stable: +0% in 184 days (within ±25% volumetry variability), mean diameter +0.0 mm")
    assert lines[-1].startswith("NOT FOR CLINICAL USE")
    rc, o = _cli(["nodule-growth", str(analyses / "pri"), str(analyses / "cur"), "--json"], capsys)
    d = json.loads(o.out)
    assert d["verdict"] == "stable" and d["interval_days"] == 184 and d["vdt_days"] is None
    assert d["not_for_clinical_use"] is True and d["warnings"] == []
    # the wrong way round, and a series against itself: one line each
    rc, o = _cli(["nodule-growth", str(analyses / "cur"), str(analyses / "pri")], capsys)
    assert rc == 2 and "must be older" in o.err and len(o.err.strip().splitlines()) == 1
    rc, o = _cli(["nodule-growth", str(analyses / "cur"), str(analyses / "cur")], capsys)
    assert rc == 2 and "same series" in o.err


def _results(path, nodules, date="20230101", thickness=1.0, uid=None):
    item = {"task": "nodule", "series_uid": uid or generate_uid(), "study_date": date,
            "slice_thickness_mm": thickness, "nodules": nodules}
    path.write_text(json.dumps({"schema_version": 1, "items": [item]}))
    return path


def _n(i, v, la=10.0, sa=8.0, found=True):
    return {"id": i, "found": found, "volume_mm3": v, "long_axis_mm": la, "short_axis_mm": sa}


def test_a_grown_nodule_named_among_several(tmp_path, capsys):
    a = _results(tmp_path / "a.json", [_n("N1", 300.0), _n("N2", 500.0)], "2023-01-01")
    b = _results(tmp_path / "b.json", [_n("N1", 1000.0, 13, 11), _n("x", None, found=False)], "2024-01-01")
    rc, o = _cli(["nodule-growth", str(a), str(b)], capsys)
    assert rc == 2 and "2 nodules (N1, N2): name one with --prior-id" in o.err
    rc, o = _cli(["nodule-growth", str(a), str(b), "--prior-id", "N2", "--json"], capsys)
    d = json.loads(o.out)
    assert d["verdict"] == "grew" and d["volume_change_pct"] == 100.0
    assert d["vdt_days"] == pytest.approx(365.0, abs=0.01) and d["mean_diameter_change_mm"] == 3.0
    rc, o = _cli(["nodule-growth", str(a), str(b), "--prior-id", "N1", "--current-id", "nope"], capsys)
    assert rc == 2 and "no nodule 'nope'" in o.err
    d = json.loads(_cli(["nodule-growth", str(a), str(b), "--prior-id", "N1", "--json"], capsys)[1].out)
    assert d["vdt_days"] == pytest.approx(365 * math.log(2) / math.log(1000 / 300), abs=0.01)


@pytest.mark.parametrize("text,why", [
    ("{not json", "not a readable results.json"),
    ('{"items": 3}', "no items"),
    ('{"items": [{"task": "classification"}]}', "no nodule found"),
    ('{"items": [{"task": "nodule", "nodules": [{"id": "N1", "found": true, "volume_mm3": 5}]}]}', "no study date"),
    ('{"items": [{"task": "nodule", "study_date": "2023", "nodules": [{"id": "N1", "found": true, "volume_mm3": 5}]}]}',
     "is not a date"),
    ('{"items": [{"task": "nodule", "study_date": "20230101", "nodules": [{"id": "N1", "found": true, '
     '"volume_mm3": -1}]}]}', "not a positive number"),
    ("[" * 100000 + "]" * 100000, "not a"),
])
def test_bad_results_files_are_one_line(tmp_path, capsys, text, why):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    good = _results(tmp_path / "good.json", [_n("N1", 100.0)], "2025-01-01")
    rc, o = _cli(["nodule-growth", str(bad), str(good)], capsys)
    assert rc == 2 and why in o.err and len(o.err.strip().splitlines()) == 1
    rc, o = _cli(["nodule-growth", str(tmp_path / "missing"), str(good)], capsys)
    assert rc == 2 and "no such file" in o.err
