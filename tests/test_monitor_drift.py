"""Drift monitor (issue 18): a replayed stream of real runs through the engine.  In-distribution
films (Kermany test split) -> no alert; a shifted stream made from real films (gamma, inversion,
adult films) -> alerts on that window only, in the JSON, the log's events and the audit trail.
Readers' feedback gives agreement and reader-confirmed AUC with CIs per window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _monitor_stream import in_distribution, shifted
from imaging_assist.cli.main import main
from imaging_assist.monitoring import drift, feedback
from imaging_assist.monitoring import log as plog

N = 60


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    from imaging_assist.inference import RunOptions, read_image, run_model
    from imaging_assist.models.registry import Registry

    home = tmp_path_factory.mktemp("monitor_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("IMAGING_ASSIST_DATA_DIR", str(home / "data"))
    mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(home / "config"))
    mp.delenv(plog.ENV_SWITCH, raising=False)
    model = Registry().load("cxr-pneumonia")
    ids, shift_ids = [], []
    for p, label in in_distribution(N):
        res = run_model(model, read_image(p), RunOptions(device="cpu"))
        ids.append((res.prediction_log_id, label))
    for p in shifted(N, home / "shifted"):
        res = run_model(model, read_image(p), RunOptions(device="cpu"))
        shift_ids.append(res.prediction_log_id)
    yield {"home": home, "ids": ids, "shift_ids": shift_ids}
    plog.close_all()
    mp.undo()


@pytest.mark.slow
def test_alert_on_the_shifted_window_only(stream):
    rep = drift.monitor("cxr-pneumonia", window=str(N))
    m = rep["models"][0]
    assert m["n_runs"] == 2 * N and len(m["windows"]) == 2
    w0, w1 = m["windows"]
    assert not w0["alert"], [a["text"] for a in rep["alerts"] if a["window"] == 0]
    assert w1["alert"]
    stats = {a["statistic"] for a in rep["alerts"]}
    assert all(a["window"] == 1 for a in rep["alerts"])
    assert "input.ood_score" in stats and "input.ood_flag_rate" in stats
    # the numbers behind it
    assert w1["input"]["ood_score"]["ks_p"] < 0.001 and w1["input"]["ood_score"]["psi"] >= 0.2
    assert w0["input"]["ood_score"]["ks_p"] > 0.001
    assert w1["input"]["ood_flag_rate"]["rate"] > 0.3 > w0["input"]["ood_flag_rate"]["rate"]


@pytest.mark.slow
def test_cli_json_events_and_audit_trail(stream, capsys):
    from imaging_assist.privacy import audit

    capsys.readouterr()
    assert main(["monitor", "--model", "cxr-pneumonia", "--window", str(N), "--json"]) == 3
    rep = json.loads(capsys.readouterr().out)
    assert rep["alerts"] and {a["window"] for a in rep["alerts"]} == {1}
    ev = plog.open_log().events(kind="drift_alert")
    assert len(ev) == len(rep["alerts"])
    # a second run does not record the same alerts again
    assert main(["monitor", "--model", "cxr-pneumonia", "--window", str(N)]) == 3
    out = capsys.readouterr().out
    assert "ALERT" in out and "Not for clinical use" in out
    assert len(plog.open_log().events(kind="drift_alert")) == len(ev)
    entries = [e for e in audit.read_entries() if e and e.get("event") == "drift_alert"]
    assert len(entries) == len(ev)
    # bad arguments are one line
    assert main(["monitor", "--window", "0d"]) == 2
    assert main(["monitor", "--since", "yesterday"]) == 2
    assert main(["monitor", "--model", "no-such-model"]) == 2


@pytest.mark.slow
def test_reader_agreement_and_confirmed_performance_per_window(stream):
    lg = plog.open_log()
    # readers give the truth on the in-distribution window ...
    for rid, label in stream["ids"]:
        run = lg.run(rid)
        said = feedback.implied_label(run, "pneumonia", "agree")
        feedback.add_feedback(rid, "pneumonia", "agree" if said == label else "disagree", reader="r1")
    # ... and disagree with every decision of the shifted window
    for rid in stream["shift_ids"]:
        feedback.add_feedback(rid, "pneumonia", "disagree", reader="r1")
    rep = drift.monitor("cxr-pneumonia", window=str(N), record_alerts=False)
    w0, w1 = rep["models"][0]["windows"]
    ag0 = w0["readers"]["agreement"]
    assert ag0["n"] == N and ag0["ci95"][0] <= ag0["value"] <= ag0["ci95"][1] and ag0["value"] > 0.85
    rc = w0["readers"]["reader_confirmed"]
    assert rc["n"] == N and rc["auc"]["value"] > 0.9 and rc["auc"]["ci95"][0] < rc["auc"]["value"]
    assert "patient" in rc["auc"]["method"] and "sensitivity" in rc and "specificity" in rc
    assert not w0["readers"]["alert"]
    assert w1["readers"]["agreement"]["value"] == 0.0 and w1["readers"]["alert"]
    assert not any(a["window"] == 0 for a in rep["alerts"])


def test_psi_and_windows():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=2000)
    assert drift.psi(ref, rng.normal(size=2000)) < 0.05
    assert drift.psi(ref, rng.normal(1.0, 1.0, size=2000)) > 0.5
    assert drift.parse_window("7d") == ("days", 7.0) and drift.parse_window("200") == ("runs", 200.0)
    t = np.array([0.0, 1.0, 86400 * 2.5, 86400 * 9.0])
    assert drift._windows(t, "days", 7) == [(0, 3), (3, 4)]
    assert drift._windows(t, "runs", 3) == [(0, 3), (3, 4)]


def test_metadata_drift_and_since_on_logged_rows(tmp_path, monkeypatch):
    """Rows with the reference's own values but another manufacturer in the second window:
    an alert on the manufacturer only there (against a reference made from GE films; the shipped
    reference has plain JPEGs without a manufacturer and is never compared); --since keeps the
    later window only."""
    import sys

    from conftest import ROOT
    from imaging_assist.models.registry import Registry
    from imaging_assist.monitoring.reference import load_reference

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_log import synthetic_rows

    card = Registry().get("cxr-pneumonia").card
    ref = load_reference(card)
    rows = synthetic_rows(ref, card, 200, 2.0)[:100] * 2  # unshifted values, twice
    for i, r in enumerate(rows):
        r = rows[i] = dict(r)
        r["time_unix"] = 1_800_000_000 + i * 60.0
        r["manufacturer"] = "SIEMENS" if i >= 100 else "GE"
    lg = plog.open_log()
    lg.add_runs(rows)
    rep0 = drift.monitor("cxr-pneumonia", window="100", log=lg, record_alerts=False)
    assert not rep0["alerts"]  # shipped reference: no manufacturer known, so not compared
    assert "not compared" in rep0["models"][0]["windows"][1]["input"]["manufacturer"]["note"]
    ge = dict(ref, categories={"manufacturer": {"GE": 706}, "modality": ref["categories"]["modality"]})
    monkeypatch.setattr(drift, "load_reference", lambda c: ge)
    rep = drift.monitor("cxr-pneumonia", window="100", log=lg, record_alerts=False)
    stats = {(a["window"], a["statistic"]) for a in rep["alerts"]}
    assert stats == {(1, "input.manufacturer")}, stats
    w1 = rep["models"][0]["windows"][1]["input"]["manufacturer"]
    assert w1["not_in_reference"] == ["SIEMENS"] and w1["psi"] >= 0.2
    since = drift._dt.datetime.fromtimestamp(1_800_000_000 + 100 * 60, drift._dt.timezone.utc).isoformat()
    rep2 = drift.monitor("cxr-pneumonia", since=since, window="100", log=lg, record_alerts=False)
    assert rep2["models"][0]["n_runs"] == 100
    assert rep2["models"][0]["windows"][0]["readers"]["corrections"] == {"n": 0, "median_dice_vs_prediction": None}
    plog.close_all()


def test_a_site_threshold_sets_the_expected_positive_rate(tmp_path, monkeypatch):
    """Runs decided at a saved site threshold were compared with the positive rate the reference
    had at the card's threshold: a false alert on in-distribution data (an audit: 50.6% against
    72.9%). The expected rate is now the reference's scores at the threshold in use."""
    import sys

    import numpy as np

    from conftest import ROOT
    from imaging_assist.models.registry import Registry
    from imaging_assist.models.site import save_site_threshold
    from imaging_assist.monitoring.reference import load_reference

    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_log import synthetic_rows

    card = Registry().get("cxr-pneumonia").card
    ref = load_reference(card)
    site = float(np.quantile(ref["values"]["score"], 0.5))  # far from the card's 0.7477
    save_site_threshold(card, "pneumonia", site, 50, data="test")
    rows = [dict(r) for r in synthetic_rows(ref, card, 400, 2.0)[:200]]  # unshifted
    for i, r in enumerate(rows):
        r["time_unix"] = 1_800_000_000 + i * 60.0
        r["positive"] = int(r["score"] >= site)
    lg = plog.open_log()
    lg.add_runs(rows)
    rep = drift.monitor("cxr-pneumonia", window="200", log=lg, record_alerts=False)
    pr = rep["models"][0]["windows"][0]["output"]["positive_rate"]
    assert not [a for a in rep["alerts"] if a["statistic"] == "output.positive_rate"], pr
    plog.close_all()
