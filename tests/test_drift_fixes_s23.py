"""Drift monitor fixes (session 23): one version's runs per comparison, damaged rows as one line,
repeated analyses of a film counted once, damaged probabilities, the expected positive rate at a
site threshold, an AUC interval that cannot be estimated.  Logs are built from synthetic rows drawn
from the shipped reference (scripts/bench_log.py), no model runs: a few seconds."""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest

from conftest import ROOT
from imaging_assist.cli.main import main
from imaging_assist.monitoring import drift, feedback
from imaging_assist.monitoring import log as plog
from test_monitor_audit_fixes import MODEL, _register, home  # noqa: F401

sys.path.insert(0, str(ROOT / "scripts"))
from bench_log import synthetic_rows  # noqa: E402

T0 = 1_800_000_000.0


def _card():
    from imaging_assist.models.registry import Registry

    return Registry().get(MODEL).card


def _rows(n, shifted=False, version=None, t0=T0, seed=0, **kw):
    """n rows of the shipped reference's own values (or shifted: another scanner), one a minute."""
    from imaging_assist.monitoring.reference import load_reference

    card = _card()
    rows = synthetic_rows(load_reference(card), card, 2 * n, 1.0, seed=seed)
    rows = rows[n:] if shifted else rows[:n]
    out = []
    for i, r in enumerate(rows):
        r = dict(r, time_unix=t0 + 60.0 * i, **kw)
        if version:
            r["model_version"] = version
        out.append(r)
    return out


def _add(rows) -> list[int]:
    lg = plog.open_log()
    return [lg.add_run(r) for r in rows]


def _damage(sql: str) -> None:
    plog.close_all()
    c = sqlite3.connect(plog.db_path())
    c.execute(sql)
    c.commit()
    c.close()


# --------------------------------------------------------------------------- 1. versions
def test_runs_of_another_version_are_counted_not_compared_with_the_active_reference(home, capsys):  # noqa: F811
    """Shifted runs of 1.0.0, then a promoted 1.0.0+site.1 (its own reference) with in-distribution
    runs: only the site.1 runs are compared (no alert); the 1.0.0 runs and their feedback are not
    pooled in, and the report says how many there were.  Before: 1.0.0's runs were judged against
    the active version's reference and pooled in its windows and reader numbers."""
    from imaging_assist.monitoring import versions as V

    old = _add(_rows(40, shifted=True, version="1.0.0"))
    _register(home, "1.0.0+site.1")
    (home / "1.0.0+site.1" / "monitor_reference.json").write_text(
        (ROOT / "weights" / MODEL / "monitor_reference.json").read_text())
    V.promote(MODEL, "1.0.0+site.1")
    new = _add(_rows(40, version="1.0.0+site.1", t0=T0 + 86400))
    # a run logged under the new version string but with other weights is another model too
    _add(_rows(1, version="1.0.0+site.1", t0=T0 + 2 * 86400, weights_sha256="0" * 64))
    for rid in old[:10] + new[:5]:
        feedback.add_feedback(rid, "pneumonia", "disagree")
    rep = drift.monitor(MODEL, window="200", record_alerts=False)
    m = rep["models"][0]
    assert m["card_version"] == "1.0.0+site.1" and m["n_runs"] == 40, m["n_runs"]
    assert [w["model_versions"] for w in m["windows"]] == [["1.0.0+site.1"]]
    assert m["other_versions"] == {"1.0.0": 40, "1.0.0+site.1 (other weights)": 1}
    assert not rep["alerts"], [a["text"] for a in rep["alerts"]]
    assert m["windows"][0]["readers"]["n_feedback"] == 5
    note = "41 runs of other versions (1.0.0: 40, 1.0.0+site.1 (other weights): 1) not compared"
    assert any(n.startswith(note) for n in m["notes"]), m["notes"]
    assert any(note in line for line in drift.summary_lines(rep))
    assert main(["monitor", "--model", MODEL, "--window", "200"]) == 0
    assert "each version is compared with its own reference" in capsys.readouterr().out


# --------------------------------------------------------------------------- 2. damaged values
@pytest.mark.parametrize("sql, shown", [
    ("UPDATE runs SET positive = 112 WHERE id = 3", "run 3: positive 112"),
    ("UPDATE runs SET positive = -1 WHERE id = 4", "run 4: positive -1"),
    ("UPDATE runs SET ood_flagged = 2 WHERE id = 5", "run 5: ood_flagged 2"),
    ("UPDATE runs SET score = 'abc' WHERE id = 6", "run 6: score 'abc'"),
    ("UPDATE runs SET time_unix = 'abc' WHERE id = 7", "run 7: time_unix 'abc'"),
    ("UPDATE runs SET manufacturer = x'00ff' WHERE id = 8", "run 8: manufacturer"),
])
def test_a_damaged_value_in_a_run_is_one_line_naming_the_run(home, capsys, sql, shown):  # noqa: F811
    _add(_rows(40))
    _damage(sql)
    with pytest.raises(plog.LogError, match="is damaged") as e:
        drift.monitor(MODEL, window="20", record_alerts=False)
    assert f"({shown}" in str(e.value) and "\n" not in str(e.value)
    capsys.readouterr()
    assert main(["monitor", "--model", MODEL, "--window", "20"]) == 2
    err = capsys.readouterr().err
    assert shown in err and "internal error" not in err and "Traceback" not in err
    plog.close_all()


def test_the_monitor_panel_shows_damage_and_any_other_error_in_its_summary(home, qapp, monkeypatch):  # noqa: F811
    from imaging_assist_ui.monitor.monitor_panel import MonitorDialog

    _add(_rows(40))
    _damage("UPDATE runs SET positive = 112 WHERE id = 1")
    dlg = MonitorDialog(model_id=MODEL, window="20")
    assert "is damaged (run 1: positive 112)" in dlg.summary.text() and dlg.report is None

    def boom(*a, **k):
        raise ValueError("k (125) must not be greater than n (20)")

    monkeypatch.setattr(drift, "monitor", boom)
    assert dlg.refresh() is None  # before: the ValueError escaped the Qt slot
    text = dlg.summary.text()
    assert text.startswith("error: internal error (ValueError: k (125)") and "\n" not in text
    dlg.close()
    plog.close_all()


# --------------------------------------------------------------------------- 3. films analysed twice
def test_a_film_analysed_twice_is_one_verdict_for_agreement_and_min_n(home):  # noqa: F811
    """16 films, each run twice (a reader reopening the study), disagree on 6 of them on both runs:
    agreement 10/16 (n below min_n 30: no alert).  Before: 20/32, Wilson upper 0.77 < 0.80, an alert."""
    films = _rows(16)
    again = [dict(r, time_unix=r["time_unix"] + 3600) for r in films]
    ids = _add(films + again)
    for k, rid in enumerate(ids):
        feedback.add_feedback(rid, "pneumonia", "disagree" if k % 16 < 6 else "agree")
    rep = drift.monitor(MODEL, window="100", record_alerts=False)
    r = rep["models"][0]["windows"][0]["readers"]
    assert r["agreement"]["n"] == 16 and r["agreement"]["value"] == 0.625, r["agreement"]
    assert not r["alert"] and not rep["alerts"]
    assert r["n_feedback"] == 32 and r["n_inputs"] == 16
    assert r["reader_confirmed"]["n"] == 16


def test_the_latest_verdict_on_a_film_counts(home):  # noqa: F811
    rows = _rows(2)
    ids = _add([rows[0], dict(rows[0], time_unix=rows[0]["time_unix"] + 60), rows[1]])
    feedback.add_feedback(ids[0], "pneumonia", "disagree")
    feedback.add_feedback(ids[1], "pneumonia", "agree")  # the later analysis, agreed with
    feedback.add_feedback(ids[2], "pneumonia", "agree")
    r = drift.monitor(MODEL, window="100", record_alerts=False)["models"][0]["windows"][0]["readers"]
    assert (r["agree"], r["disagree"], r["agreement"]["n"]) == (2, 0, 2)


# --------------------------------------------------------------------------- 4. damaged probabilities
@pytest.mark.parametrize("probs, shown", [
    ('{"normal":NaN,"pneumonia":NaN}', "probability of 'normal' nan"),
    ('{"normal":0.1,"pneumonia":null}', "probability of 'pneumonia' None"),
    ("5", "probabilities '5'"),
])
def test_a_damaged_probability_is_one_line_not_a_negative_call(home, probs, shown):  # noqa: F811
    ids = _add(_rows(40))
    for rid in ids:
        feedback.add_feedback(rid, "pneumonia", "agree")
    _damage(f"UPDATE runs SET probabilities = '{probs}' WHERE id = {ids[3]}")
    with pytest.raises(plog.LogError, match=f"run {ids[3]}: {shown}"):
        drift.monitor(MODEL, window="100", record_alerts=False)
    plog.close_all()


def test_summary_lines_with_an_auc_that_has_no_value(home):  # noqa: F811
    ids = _add(_rows(40))
    for rid in ids:
        feedback.add_feedback(rid, "pneumonia", "agree")
    rep = drift.monitor(MODEL, window="100", record_alerts=False)
    auc = rep["models"][0]["windows"][0]["readers"]["reader_confirmed"]["auc"]
    auc.update(value=None, ci95=[None, None])
    assert drift.summary_lines(rep)[-1] == "Not for clinical use."


# --------------------------------------------------------------------------- 5. expected positive rate
def test_expected_positive_rate_excludes_withheld_decisions_and_matches_the_stored_rate():
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring.reference import load_reference

    for mid in ("cxr-pneumonia", "us-breast"):
        card = Registry().get(mid).card
        ref = load_reference(card)
        lab = next(iter(card.thresholds))
        got = drift.expected_positive_rate(ref["values"], card.thresholds[lab].threshold, card.ood["threshold"])
        # us-breast: one image's stored OOD score (rounded) ties with the threshold: within 1/n
        assert got == pytest.approx(ref["rates"]["positive"], abs=0 if mid == "cxr-pneumonia" else 1.0 / ref["n"]), mid


def test_a_site_threshold_expected_rate_leaves_out_ood_flagged_reference_images(home):  # noqa: F811
    """A site threshold just above the card's (no reference score between them): the expected rate is
    the stored one, 0.7286.  Before: every reference score counted, OOD-flagged ones too: 0.7125."""
    from imaging_assist.models.site import effective_thresholds, save_site_threshold
    from imaging_assist.monitoring.reference import load_reference

    card = _card()
    ref = load_reference(card)
    t = card.thresholds["pneumonia"].threshold
    above = min(s for s in ref["values"]["score"] if s > t)
    save_site_threshold(card, "pneumonia", (t + above) / 2, 50, data="test")
    assert effective_thresholds(card)[0]["pneumonia"].threshold != t
    _add(_rows(40))
    rep = drift.monitor(MODEL, window="100", record_alerts=False)
    pr = rep["models"][0]["windows"][0]["output"]["positive_rate"]
    assert pr["reference_rate"] == pytest.approx(ref["rates"]["positive"], abs=1e-4), pr


# --------------------------------------------------------------------------- AUC of 1
def test_an_auc_of_one_has_no_collapsed_interval(home):  # noqa: F811
    ids = _add(_rows(40))
    for rid in ids:  # agreeing with every top label: the score separates the truth perfectly
        feedback.add_feedback(rid, "pneumonia", "agree")
    rep = drift.monitor(MODEL, window="100", record_alerts=False)
    auc = rep["models"][0]["windows"][0]["readers"]["reader_confirmed"]["auc"]
    assert auc["value"] == 1.0 and auc["ci95"] == [None, None], auc
    assert "interval not estimable" in auc["method"]
    assert any("AUC 1.000 [interval not estimable]" in line for line in drift.summary_lines(rep))
    json.dumps(rep)
