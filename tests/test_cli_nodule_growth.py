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
    assert lines[0].endswith("no verdict, no VDT: +0% in 184 days (prior size a lower bound; current size a lower "
                             "bound), mean diameter +0.0 mm")
    assert lines[-1].startswith("NOT FOR CLINICAL USE")
    rc, o = _cli(["nodule-growth", str(analyses / "pri"), str(analyses / "cur"), "--json"], capsys)
    d = json.loads(o.out)
    assert d["verdict"] == "withheld" and d["interval_days"] == 184 and d["vdt_days"] is None
    assert d["not_for_clinical_use"] is True and len(d["warnings"]) == 2
    assert all("lower bound" in w for w in d["warnings"])
    # the wrong way round, and a series against itself: one line each
    rc, o = _cli(["nodule-growth", str(analyses / "cur"), str(analyses / "pri")], capsys)
    assert rc == 2 and "must be older" in o.err and len(o.err.strip().splitlines()) == 1
    rc, o = _cli(["nodule-growth", str(analyses / "cur"), str(analyses / "cur")], capsys)
    assert rc == 2 and "same series" in o.err


def _results(path, nodules, date="20230101", thickness=1.0, uid=None):
    item = {"task": "nodule", "series_uid": uid or generate_uid(), "study_date": date,
            "slice_thickness_mm": thickness, "patient_key": "p1", "dates_modified": None, "nodules": nodules}
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
    ('{"items": [{"task": "nodule", "study_date": "20230101", "nodules": 5}]}', "no nodule found"),
    ('{"items": [{"task": "nodule", "nodules": [{"id": "N1", "found": true, "volume_mm3": 5}]}]}', "no study date"),
    ('{"items": [{"task": "nodule", "study_date": "2023", "nodules": [{"id": "N1", "found": true, "volume_mm3": 5}]}]}',
     "is not a date"),
    ('{"items": [{"task": "nodule", "study_date": "20230101", "nodules": [{"id": "N1", "found": true, '
     '"volume_mm3": -1}]}]}', "not a positive number"),
    ("[" * 100000 + "]" * 100000, "not a"),
    # damaged or edited values: one line, never a computation with them (before: TypeError)
    ('{"items": [{"task": "nodule", "study_date": "20230101", "nodules": [{"id": "N1", "found": true, '
     '"volume_mm3": [5]}]}]}', "not a positive number"),
    ('{"items": [{"task": "nodule", "study_date": "20230101", "nodules": [{"id": "N1", "found": true, '
     '"volume_mm3": 1e300}]}]}', "not a positive number"),
    ('{"items": [{"task": "nodule", "study_date": "20230101", "nodules": [{"id": "N1", "found": true, '
     '"volume_mm3": 5, "long_axis_mm": "x"}]}]}', "long_axis_mm 'x' is not a length"),
    ('{"items": [{"task": "nodule", "study_date": "20230101", "slice_thickness_mm": {"a": 1}, "nodules": '
     '[{"id": "N1", "found": true, "volume_mm3": 5}]}]}', "slice_thickness_mm"),
])
def test_bad_results_files_are_one_line(tmp_path, capsys, text, why):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    good = _results(tmp_path / "good.json", [_n("N1", 100.0)], "2025-01-01")
    rc, o = _cli(["nodule-growth", str(bad), str(good)], capsys)
    assert rc == 2 and why in o.err and len(o.err.strip().splitlines()) == 1
    rc, o = _cli(["nodule-growth", str(tmp_path / "missing"), str(good)], capsys)
    assert rc == 2 and "no such file" in o.err


# ------------------------------------------------------------------ analyze --prior: growth in results.json, report, SR
def _sr_content(ds) -> dict:
    """{concept meaning: (value, unit)} of the numeric and coded items anywhere in an SR."""
    out = {}

    def walk(seq):
        for it in seq:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else None
            if it.ValueType == "NUM" and "MeasuredValueSequence" in it:
                mv = it.MeasuredValueSequence[0]
                out.setdefault(name, (float(mv.NumericValue), mv.MeasurementUnitsCodeSequence[0].CodeValue))
            elif it.ValueType == "CODE":
                out.setdefault(name, (it.ConceptCodeSequence[0].CodeMeaning, None))
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return out


def test_analyze_with_a_prior_writes_the_growth_into_results_report_and_sr(analyses, tmp_path, capsys):
    import shutil
    import subprocess

    import pydicom

    from test_export_dicom import dciodvfy_errors

    # the real prior analysis with its nodule at half the volume: grew +100% in 184 days, VDT 184 days
    doc = json.loads((analyses / "pri" / "results.json").read_text())
    pn = doc["items"][0]["nodules"][0]
    pn["volume_mm3"] /= 2
    pn["long_axis_mm"] -= 4
    pn["short_axis_mm"] -= 2
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps(doc))
    out = tmp_path / "out"
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-malignancy", "--at", CENTRE, "--prior", str(prior),
                  "--out", str(out), "--dicom"], capsys)
    assert rc == 0, o.err
    # said on the console too (session 25: results.json and the report only)
    assert any(ln.endswith("growth: no verdict, no VDT: +100% in 184 days (prior size a lower bound; current size a "
                           "lower bound), mean diameter +3.0 mm") for ln in o.err.splitlines()), o.err
    (item,) = json.loads((out / "results.json").read_text())["items"]
    (n,) = item["nodules"]
    g = n["growth"]
    assert g["verdict"] == "withheld" and g["interval_days"] == 184  # the slab's nodule reaches the window
    assert g["volume_change_pct"] == pytest.approx(100.0, abs=0.01) and g["vdt_days"] is None
    assert g["mean_diameter_change_mm"] == pytest.approx(3.0, abs=0.01)
    assert g["prior"]["series_uid"] == doc["items"][0]["series_uid"] != item["series_uid"]
    assert shutil.which("pdftotext"), "pdftotext (poppler-utils) is needed: scripts/test installs it"
    text = subprocess.run(["pdftotext", str(out / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "Growth of N1" in " ".join(text.split()) and "no verdict, no VDT: +100% in 184 days" in " ".join(text.split())
    (sr,) = sorted((out / "dicom").glob("*_SR.dcm"))
    assert dciodvfy_errors(sr) == []
    c = _sr_content(pydicom.dcmread(sr))
    assert "Volume doubling time" not in c
    assert c["Volume change since the prior study"] == (pytest.approx(100.0, abs=0.01), "%")
    assert c["Interval since the prior study"] == (184.0, "d")
    assert c["Volume in the prior study"] == (pytest.approx(pn["volume_mm3"], abs=0.01), "mm3")
    assert c["Mean diameter change since the prior study"] == (pytest.approx(3.0, abs=0.01), "mm")
    assert "Growth since the prior study (+-25% volumetry variability)" not in c
    assert c["Volume"] == (pytest.approx(n["volume_mm3"], abs=0.01), "mm3")  # the current nodule's own


def test_analyze_with_a_prior_links_by_id_and_says_what_it_could_not_compare(analyses, tmp_path, capsys):
    pts = tmp_path / "points.csv"
    pts.write_text("x,y,z,id\n" + CENTRE + ",N7\n")
    out = tmp_path / "out"
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-malignancy", "--points", str(pts),
                  "--prior", str(analyses / "pri"), "--out", str(out)], capsys)
    assert rc == 0, o.err
    (item,) = json.loads((out / "results.json").read_text())["items"]
    assert "growth" not in item["nodules"][0]
    assert any("nodule N7: no nodule of that id in the prior analysis (pri): no growth (prior ids: N1)" in w
               for w in item["warnings"]), item["warnings"]
    assert "warning: nodule N7: no nodule of that id in the prior analysis (pri)" in o.err, o.err
    # a prior written by a version that recorded no patient: refused, and said on the console
    # (session 25: only in results.json and the report, the console said nothing of --prior)
    doc = json.loads((analyses / "pri" / "results.json").read_text())
    for it in doc["items"]:
        it.pop("patient_key", None)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-malignancy", "--at", CENTRE,
                  "--prior", str(tmp_path / "old.json"), "--out", str(tmp_path / "o4")], capsys)
    assert rc == 0, o.err
    assert "warning: nodule N1: not compared with the prior (the prior's results.json names no patient (written " \
        "by an older version): analyse it again)" in o.err, o.err
    # the same series as its own prior: said, not compared
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-malignancy", "--at", CENTRE,
                  "--prior", str(analyses / "cur"), "--out", str(tmp_path / "o2")], capsys)
    (item,) = json.loads((tmp_path / "o2" / "results.json").read_text())["items"]
    assert "growth" not in item["nodules"][0]
    assert any("not compared with the prior (the prior is the same series" in w for w in item["warnings"])
    # a prior that is not a nodule analysis, and --prior with another model: one line each
    bad = _results(tmp_path / "empty.json", [_n("N1", None, found=False)])
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-malignancy", "--at", CENTRE, "--prior", str(bad),
                  "--out", str(tmp_path / "o3")], capsys)
    assert rc == 2 and "no nodule found in this results.json" in o.err and len(o.err.strip().splitlines()) == 1
    rc, o = _cli(["analyze", str(SLAB), "--model", "ct-nodule-malignancy", "--at", CENTRE, "--prior",
                  str(analyses / "pri"), "--deidentify", "--out", str(tmp_path / "o5")], capsys)
    assert rc == 2 and "--prior cannot be used with --deidentify" in o.err and len(o.err.strip().splitlines()) == 1
    assert not (tmp_path / "o5" / "results.json").exists()
    rc, o = _cli(["analyze", str(SLAB), "--model", "cxr-pneumonia", "--prior", str(bad),
                  "--out", str(tmp_path / "o4")], capsys)
    assert rc == 2 and "--at/--points/--prior are for the CT nodule models" in o.err


def _mutations(doc, rng, n):
    """``n`` copies of a results.json with one value somewhere replaced by a value of another
    kind (a fuzz of the structure, not only of the numbers)."""
    import copy

    junk = [None, True, 0, -1, 1e300, float("nan"), "", "x" * 300, [], [1, 2], {}, {"a": {"b": 1}}, "20230101"]

    def paths(x, at=()):
        yield at
        if isinstance(x, dict):
            for k, v in x.items():
                yield from paths(v, at + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from paths(v, at + (i,))

    every = [p for p in paths(doc) if p]
    for _ in range(n):
        d = copy.deepcopy(doc)
        p = every[int(rng.integers(len(every)))]
        parent = d
        for k in p[:-1]:
            parent = parent[k]
        parent[p[-1]] = junk[int(rng.integers(len(junk)))]
        yield d


def test_fuzzed_prior_results_are_a_growth_or_one_line(analyses, tmp_path, capsys):
    """400 structural mutations of a real nodule analysis, read as the prior by `nodule-growth`
    and by `analyze --prior`'s reader and linker: a result or one line, never a traceback."""
    import numpy as np

    from imaging_assist.cli.analyze_nodules import _prior_nodules
    from imaging_assist.errors import UserError
    from imaging_assist.nodules.growth import compare

    real = json.loads((analyses / "pri" / "results.json").read_text())
    cur = json.loads((analyses / "cur" / "results.json").read_text())["items"][0]
    f = tmp_path / "prior.json"
    outcomes = {"growth": 0, "refused": 0}
    for d in _mutations(real, np.random.default_rng(7), 400):
        f.write_text(json.dumps(d))
        rc, o = _cli(["nodule-growth", str(f), str(analyses / "cur"), "--json"], capsys)
        assert rc in (0, 2) and (rc == 0 or len(o.err.strip().splitlines()) == 1), o.err
        if rc == 0:
            json.loads(o.out)
        try:
            _, prior = _prior_nodules(str(f))
            for pn, pit in (e for entries in prior.values() for e in entries):
                json.dumps(compare(pn, pit, cur["nodules"][0], cur), allow_nan=False)
            outcomes["growth"] += 1
        except (UserError, ValueError) as e:
            assert len(str(e).splitlines()) == 1
            outcomes["refused"] += 1
    assert outcomes["growth"] > 50 and outcomes["refused"] > 10, outcomes
