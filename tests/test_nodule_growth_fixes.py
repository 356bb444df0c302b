"""Nodule growth, the auditor's defects (session 20): another patient's study, dates shifted by
de-identification on one side, each nodule's own quality flags, the segmenter's size bias of
small nodules, the same id in several items of a results.json, the viewer's stale growth after
the prior nodule is deleted or analysed again, and Lung-RADS diameter growth.  Handmade results
and facts where the arithmetic is the point; the LIDC-IDRI-0001 slab where the path matters."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from conftest import SHARED, dated_copy
from test_nodule_workflow import _cli

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
CENTRE = "56.21,86.34,-115.87"  # the nodule (labels.csv, LPS mm)
EDGE = ("the segmented nodule reaches the edge of the models' 32 mm window (1011 voxels on its faces): the "
        "nodule may extend beyond it (volume and diameters are then lower bounds), or the segmentation runs "
        "into neighbouring tissue; check the mask")  # the engine's warning (nodules.analysis)


def _facts(date, uid, patient="p1", **kw):
    return dict({"study_date": date, "slice_thickness_mm": 1.0, "series_uid": uid, "patient_key": patient,
                 "dates_modified": None}, **kw)


def _n(v, la=None, sa=None, i="N1", **kw):
    return dict({"id": i, "found": True, "volume_mm3": v, "long_axis_mm": la, "short_axis_mm": sa}, **kw)


def _compare(p, c, pf=None, cf=None):
    from imaging_assist.nodules.growth import compare

    return compare(p, pf or _facts("20230101", "1.2.1"), c, cf or _facts("20230701", "1.2.2"))


def _volume(**header):
    return SimpleNamespace(headers=[dict({"StudyDate": "20000101", "SliceThickness": "2.5"}, **header)],
                           has_geometry=False, spacing=(1.0, 1.0, 2.5))


# ------------------------------------------------------------------ 1. another patient
def test_study_facts_record_a_patient_pseudonym_not_the_patient_id():
    from imaging_assist.nodules.growth import study_facts

    a = study_facts(_volume(PatientID="LIDC-IDRI-0001"))
    assert isinstance(a.get("patient_key"), str) and len(a["patient_key"]) == 32
    assert "LIDC" not in json.dumps(a)  # results.json carries no Patient ID in clear
    assert study_facts(_volume(PatientID="LIDC-IDRI-0001"))["patient_key"] == a["patient_key"]
    assert study_facts(_volume(PatientID="OTHER-PATIENT-9"))["patient_key"] != a["patient_key"]
    assert study_facts(_volume(PatientID="LIDC-IDRI-0001", IssuerOfPatientID="B"))["patient_key"] != a["patient_key"]
    assert study_facts(_volume(PatientID=""))["patient_key"] is None


@pytest.mark.parametrize("pf,why", [
    (_facts("20230101", "1.2.1", patient="p2"), "of different patients"),
    ({"study_date": "20230101", "slice_thickness_mm": 1.0, "series_uid": "1.2.1"},
     "the prior's results.json names no patient (written by an older version): analyse it again"),
    (_facts("20230101", "1.2.1", patient=None), "the prior records no patient"),
    (_facts("20230101", "1.2.1", patient=["p1"]), "the prior records no patient"),
])
def test_compare_refuses_another_patient_or_none_in_one_line(pf, why):
    with pytest.raises(ValueError, match=re.escape(why)) as e:
        _compare(_n(100.0), _n(200.0), pf=pf)
    assert len(str(e.value).splitlines()) == 1
    assert _compare(_n(100.0), _n(200.0))["verdict"] == "grew"  # the same patient: compared


def test_analyze_prior_of_another_patient_or_an_older_results_json_is_a_warning_and_no_growth():
    """``analyze --prior``'s linker (cli.analyze_nodules.add_growth) gets the refusals from compare."""
    from imaging_assist.cli.analyze_nodules import add_growth

    cur = dict(_facts("20230701", "1.2.2"), nodules=[_n(200.0)])
    for pit, why in ((_facts("20230101", "1.2.1", patient="p9"), "of different patients"),
                     ({"study_date": "20230101", "slice_thickness_mm": 1.0, "series_uid": "1.2.1"},
                      "names no patient (written by an older version): analyse it again")):
        d = json.loads(json.dumps(cur))
        run = SimpleNamespace(nodules=[SimpleNamespace(growth=None)])
        warnings = add_growth(d, run, "prior.json", {"N1": [(_n(100.0), pit)]})
        assert "growth" not in d["nodules"][0] and run.nodules[0].growth is None
        assert len(warnings) == 1 and "nodule N1: not compared with the prior (" in warnings[0] and why in warnings[0]


def test_nodule_growth_refuses_another_patient_on_the_real_slab(analyses, tmp_path, capsys):
    item = json.loads((analyses / "cur" / "results.json").read_text())["items"][0]
    doc = json.loads((analyses / "pri" / "results.json").read_text())
    assert item["patient_key"] and item["patient_key"] == doc["items"][0]["patient_key"]  # the same patient
    assert item["dates_modified"] == doc["items"][0]["dates_modified"] == "MODIFIED"  # TCIA shifted the LIDC dates
    rc, o = _cli(["nodule-growth", str(analyses / "pri"), str(analyses / "cur"), "--json"], capsys)
    assert rc == 0, o.err
    doc["items"][0]["patient_key"] = "0" * 32  # the prior of another patient
    (tmp_path / "other.json").write_text(json.dumps(doc))
    rc, o = _cli(["nodule-growth", str(tmp_path / "other.json"), str(analyses / "cur")], capsys)
    assert rc == 2 and "of different patients" in o.err and len(o.err.strip().splitlines()) == 1
    del doc["items"][0]["patient_key"]  # written by an older version
    (tmp_path / "old.json").write_text(json.dumps(doc))
    rc, o = _cli(["nodule-growth", str(tmp_path / "old.json"), str(analyses / "cur")], capsys)
    assert rc == 2 and "names no patient (written by an older version): analyse it again" in o.err


@pytest.fixture(scope="module")
def analyses(tmp_path_factory):
    """The real slab (current) and its copy dated 1999-07-01 (prior), analysed by the CLI."""
    from imaging_assist.cli import main

    root = tmp_path_factory.mktemp("growth_fixes")
    dated_copy(SLAB, root / "prior_study", "19990701")
    for name, src in (("cur", SLAB), ("pri", root / "prior_study")):
        assert main(["analyze", str(src), "--model", "ct-nodule-malignancy", "--at", CENTRE,
                     "--out", str(root / name)]) == 0
    return root


# ------------------------------------------------------------------ 2. dates shifted on one side
def test_dates_shifted_by_deidentification_on_one_side_are_refused():
    from imaging_assist.nodules.growth import study_facts

    shifted = study_facts(_volume(PatientID="P", LongitudinalTemporalInformationModified="MODIFIED"))
    original = study_facts(_volume(PatientID="P"))
    assert shifted["dates_modified"] == "MODIFIED" and original["dates_modified"] is None
    with pytest.raises(ValueError, match="MODIFIED and the current study's UNMODIFIED .*interval would be wrong"):
        _compare(_n(100.0), _n(200.0), pf=_facts("20230101", "1.2.1", dates_modified="MODIFIED"))
    with pytest.raises(ValueError, match="UNMODIFIED and the current study's MODIFIED"):
        _compare(_n(100.0), _n(200.0), cf=_facts("20230701", "1.2.2", dates_modified="MODIFIED"))
    # both shifted together (one site key, one patient: the same offset), or "UNMODIFIED" said: compared
    assert _compare(_n(100.0), _n(200.0), pf=_facts("20230101", "1.2.1", dates_modified="MODIFIED"),
                    cf=_facts("20230701", "1.2.2", dates_modified="MODIFIED"))["verdict"] == "grew"
    unmodified = _facts("20230101", "1.2.1", dates_modified="UNMODIFIED")
    assert _compare(_n(100.0), _n(200.0), pf=unmodified)["verdict"] == "grew"


def test_study_facts_read_the_shifted_dates_and_the_issuer_from_the_series_files(tmp_path):
    """The index keeps neither LongitudinalTemporalInformationModified nor IssuerOfPatientID: the
    facts read them from the series' first file.  The LIDC slab is itself marked MODIFIED (TCIA
    shifted its dates); its copy without the mark stands for an original study."""
    import pydicom

    from imaging_assist.dicom import load_series, scan
    from imaging_assist.nodules.growth import compare, study_facts

    dated_copy(SLAB, tmp_path / "shifted", "19990701")
    facts = {}
    for name in ("shifted", "original", "issuer"):
        if name != "shifted":
            (tmp_path / name).mkdir()
            for f in sorted((tmp_path / "shifted").glob("*.dcm")):
                ds = pydicom.dcmread(f)
                if name == "original":
                    del ds.LongitudinalTemporalInformationModified
                else:
                    ds.IssuerOfPatientID = "HOSPITAL-B"
                ds.save_as(tmp_path / name / f.name)
        facts[name] = study_facts(load_series(scan(str(tmp_path / name)).all_series()[0]))
    assert facts["shifted"]["dates_modified"] == "MODIFIED" and facts["original"]["dates_modified"] is None
    assert facts["original"]["patient_key"] == facts["shifted"]["patient_key"] != facts["issuer"]["patient_key"]
    n = _n(8000.0)
    with pytest.raises(ValueError, match="interval would be wrong"):
        compare(n, dict(facts["shifted"], series_uid="1.1"), n, dict(facts["original"], study_date="2000-01-01",
                                                                     series_uid="1.2"))


# ------------------------------------------------------------------ 3. each nodule's own flags
@pytest.mark.parametrize("side,flags,why", [
    ("current", {"warnings": [EDGE]}, "current size a lower bound"),
    ("prior", {"warnings": ["the nodule reaches the first or last slice of the series: it may extend beyond it, "
                            "so its volume may be underestimated"]}, "prior size a lower bound"),
    ("current", {"ood": {"flagged": True, "reasons": ["the segmentation model's features are unlike its training "
                                                      "nodules"]}}, "current size unreliable"),
    ("prior", {"ood": {"flagged": True, "reasons": ["the segmenter is less sure of this outline"],
                       "segmentation_confidence": {"mean_probability": 0.63, "threshold": 0.8349}}},
     "prior size unreliable"),
])
def test_a_lower_bound_or_flagged_size_withholds_the_verdict_and_the_vdt(side, flags, why):
    # repro_window_cap2: 34 -> 44 mm, the current capped and flagged: read as "smaller: -90%"
    p, c = _n(20009.15, 33.0, 32.0), _n(1980.58, 20.0, 18.0)
    if side == "prior":
        p, c = _n(2000.0, 15.0, 14.0), _n(4000.0, 19.0, 18.0)
    (p if side == "prior" else c).update(flags)
    g = _compare(p, c)
    assert g["verdict"] == "withheld" and g["vdt_days"] is None
    assert g["text"].startswith("no verdict, no VDT: ") and why in g["text"]
    assert any(w.startswith(f"{side} nodule N1: its size is ") and "no verdict and no VDT" in w for w in g["warnings"])
    json.dumps(g, allow_nan=False)


def test_a_withheld_verdict_leaves_the_sr_without_verdict_and_vdt():
    from imaging_assist.export.sr import _growth_items

    g = _compare(_n(2000.0), _n(4000.0, warnings=[EDGE]))
    meas, qual = _growth_items(g, None)
    assert qual == [] and "Volume doubling time" not in [m.name.meaning for m in meas]
    assert "Volume change since the prior study" in [m.name.meaning for m in meas]


def test_an_unflagged_growth_keeps_the_sr_verdict_and_vdt():
    """The counterpart of the withheld case: two unflagged sizes, doubled in the interval, give
    the SR its verdict "grew" and the VDT in days (the slab's own nodule reaches the window, so
    the end-to-end tests on it now check the withheld case)."""
    from imaging_assist.export.sr import _growth_items

    g = _compare(_n(2000.0), _n(4000.0))
    assert g["verdict"] == "grew" and g["vdt_days"] is not None
    meas, qual = _growth_items(g, None)
    got = {m.name.meaning: m for m in meas}
    assert "Volume doubling time" in got and got["Volume doubling time"].value == pytest.approx(g["vdt_days"], abs=0.01)
    assert len(qual) == 1 and qual[0].value.meaning == "grew"


def test_the_real_slab_nodule_reaches_the_window_so_growth_gives_no_verdict(analyses, capsys):
    rc, o = _cli(["nodule-growth", str(analyses / "pri"), str(analyses / "cur"), "--json"], capsys)
    d = json.loads(o.out)
    assert d["verdict"] == "withheld" and d["vdt_days"] is None and d["interval_days"] == 184
    assert "prior size a lower bound; current size a lower bound" in d["text"]


# ------------------------------------------------------------------ 4. the segmenter's size bias
def test_small_nodules_warn_that_growth_is_underestimated_and_the_bound_is_the_phantom():
    from imaging_assist.nodules.growth import RIM_BIAS_EXAMPLE, RIM_BIAS_MAX_VOLUME_MM3

    ph = json.loads(_phantom().read_text())
    assert RIM_BIAS_MAX_VOLUME_MM3 == max(s["volume_mm3"] for s in ph["spheres"])
    by = {s["true_diameter_mm"]: s for s in ph["spheres"]}
    a, b, true, read = RIM_BIAS_EXAMPLE
    assert true == pytest.approx(by[b]["true_volume_mm3"] / by[a]["true_volume_mm3"])
    assert read == pytest.approx(by[b]["volume_mm3"] / by[a]["volume_mm3"])
    g = _compare(_n(486.1), _n(866.8))  # the phantom's 8 -> 10 mm spheres as read
    (w,) = [w for w in g["warnings"] if w.startswith("small nodule")]
    assert "volume change is underestimated and the VDT overestimated" in w and "×1.95, reads ×1.78" in w
    assert not any(w.startswith("small nodule") for w in _compare(_n(2000.0), _n(4000.0))["warnings"])


def _phantom():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "weights" / "ct-nodule-seg" / "phantom_sizes.json"


def test_the_docs_no_longer_say_growth_measured_the_same_way_is_comparable():
    from pathlib import Path

    doc = " ".join((Path(__file__).resolve().parent.parent / "docs" / "ct_nodules_workflow.md").read_text().split())
    assert "growth between studies measured the same way), not with" not in doc
    assert "8 → 10 mm (×1.95) ×1.78" in doc and "the VDT overestimated" in doc


# ------------------------------------------------------------------ 5. the same id in several items
def _results(path, items):
    path.write_text(json.dumps({"schema_version": 1, "items": [
        {"task": "nodule", "series_uid": uid, "study_date": date, "slice_thickness_mm": 1.0, "patient_key": "p1",
         "dates_modified": None, "nodules": [_n(v, 10.0, 8.0)]} for uid, date, v in items]}))
    return path


def test_nodule_growth_names_the_item_when_ids_repeat(tmp_path, capsys):
    a = _results(tmp_path / "a.json", [("1.2.9", "2024-01-01", 500.0), ("1.2.1", "2023-01-01", 250.0)])
    b = _results(tmp_path / "b.json", [("1.2.9", "2024-01-01", 500.0)])
    rc, o = _cli(["nodule-growth", str(a), str(b), "--prior-id", "N1"], capsys)
    assert rc == 2 and len(o.err.strip().splitlines()) == 1
    assert "2 nodules (N1, N1): name one with --prior-id and --prior-series (series: 1.2.9, 1.2.1)" in o.err
    rc, o = _cli(["nodule-growth", str(a), str(b), "--prior-series", "1.2.1", "--json"], capsys)
    assert rc == 0, o.err
    d = json.loads(o.out)
    assert d["prior"]["series_uid"] == "1.2.1" and d["volume_change_pct"] == 100.0
    rc, o = _cli(["nodule-growth", str(a), str(b), "--prior-series", "9.9"], capsys)
    assert rc == 2 and "no nodule found of series '9.9'" in o.err


# ------------------------------------------------------------------ 7. Lung-RADS diameter growth
def test_lung_rads_diameter_growth_is_said_when_the_volume_verdict_is_not_grew():
    g = _compare(_n(3400.0, 20.0, 18.0), _n(4150.0, 22.0, 19.5))  # repro_lungrads: +22%, +1.75 mm
    assert g["verdict"] == "stable"
    assert any(w.startswith("mean diameter +1.8 mm: Lung-RADS v2022 calls an increase over 1.5 mm growth")
               for w in g["warnings"]), g["warnings"]
    grew = _compare(_n(3400.0, 20.0, 18.0), _n(6000.0, 22.0, 19.5))
    assert grew["verdict"] == "grew" and not any("Lung-RADS" in w for w in grew["warnings"])
    small = _compare(_n(3400.0, 20.0, 18.0), _n(4150.0, 21.0, 18.5))  # +1.0 mm
    assert not any("Lung-RADS" in w for w in small["warnings"])


# ------------------------------------------------------------------ 6. the viewer: the prior deleted or analysed again
from test_ui_nodule_growth import win  # noqa: E402,F401 - the current slab and a dated copy as its prior


def test_viewer_deleting_or_reanalysing_the_prior_updates_the_linked_growth(win):
    from _qt import wait_until
    from imaging_assist.nodules.analysis import MALIGNANCY_MODEL
    from imaging_assist_ui.ai.session_runs import session_runs

    def show(uid):
        s = next(x for x in win.loading.index.image_series() if x.uid == uid)
        if win.doc.series is None or win.doc.series.uid != uid:
            win.load_series(s.key)
        assert wait_until(lambda: win.load_state == "done" and win.doc.series is not None
                          and win.doc.series.uid == uid and win.doc.volume.loaded.all(), 60), win.last_error

    def analyse():
        n0 = len(win.nodules.history)
        assert win.nodules.analyse_at(tuple(float(x) for x in CENTRE.split(",")))
        assert wait_until(lambda: not win.nodules.busy, 120)
        assert len(win.nodules.history) == n0 + 1, win.nodules.last_line
        return win.nodules.history[-1]

    def logged(n):
        run = session_runs(win).runs[(n.series, MALIGNANCY_MODEL)]
        return [x for x in run.item["nodules"] if x.get("id") == n.id][0]

    cur_uid = next(x.uid for x in win.loading.index.image_series() if x.uid != win.prior_uid)
    show(win.prior_uid)
    prior = analyse()
    show(cur_uid)
    cur = analyse()
    assert win.nodules.link(cur, prior) is not None and logged(cur).get("growth")
    # the prior analysed again: the link follows it and the growth is computed again
    show(win.prior_uid)
    again = analyse()
    assert again is not prior and cur.linked_prior is again
    assert cur.result.growth and "N1's growth computed again" in win.nodules.last_line
    # the prior deleted: the current nodule's growth goes (entry, report, the run the exports read)
    win.nodules.delete(again)
    assert cur.linked_prior is None and cur.result.growth is None and "growth" not in logged(cur)
    assert "N1's growth removed" in win.nodules.last_line
    show(cur_uid)
    assert not any(line.startswith("vs N1 of") for line in win.nodules.entry_lines())
    rep = win.report_exporter.build()
    rows = [r for st in rep["studies"] for e in st["items"] for r in e.get("nodules") or []]
    assert rows and not any(r.get("growth") for r in rows)


def test_analyze_prior_with_one_id_in_several_series_never_takes_the_first_silently(tmp_path):
    """``analyze --prior`` given a results.json of several series, each with an N1: the current
    series' own N1 is no prior; two other series with an N1 are not compared (one warning naming
    them) instead of the first being taken."""
    from types import SimpleNamespace

    from imaging_assist.cli.analyze_nodules import _prior_nodules, add_growth

    cur = dict(_facts("20230701", "1.2.9"), task="nodule", nodules=[_n(4000.0)])
    old = dict(_facts("20230101", "1.2.1"), task="nodule", nodules=[_n(2000.0)])
    older = dict(_facts("20220101", "1.2.0"), task="nodule", nodules=[_n(1500.0)])
    f = tmp_path / "both.json"
    f.write_text(json.dumps({"schema_version": 1, "items": [cur, old]}))
    name, prior = _prior_nodules(str(f))
    d = dict(cur, nodules=[_n(4000.0)])
    run = SimpleNamespace(nodules=[SimpleNamespace(growth=None)])
    assert add_growth(d, run, name, prior) == []
    assert d["nodules"][0]["growth"]["prior"]["series_uid"] == "1.2.1"  # not the current series' own N1
    f.write_text(json.dumps({"schema_version": 1, "items": [older, old]}))
    name, prior = _prior_nodules(str(f))
    d = dict(cur, nodules=[_n(4000.0)])
    warns = add_growth(d, run, name, prior)
    assert "growth" not in d["nodules"][0]
    assert len(warns) == 1 and "in 2 series (1.2.0, 1.2.1)" in warns[0] and "--prior-series" in warns[0]
