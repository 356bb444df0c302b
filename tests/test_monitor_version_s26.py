"""``imaging-assist monitor --model ID --version V``: the runs of one version against its own
reference (a version rolled back, a candidate), where the monitor could compare only the active
version; and one version's drift alert no longer stands for another's of the same window (alerts
were recorded once per statistic, window start and model, whatever the version)."""

from __future__ import annotations

from conftest import ROOT
from imaging_assist.cli.main import main
from imaging_assist.monitoring import drift
from imaging_assist.monitoring import log as plog
from test_drift_fixes_s23 import MODEL, T0, _add, _rows
from test_monitor_audit_fixes import _register, home  # noqa: F401


def _two_versions(home):
    """Shifted runs of 1.0.0 (another scanner), then 1.0.0+site.1 promoted with in-distribution runs."""
    from imaging_assist.monitoring import versions as V

    _add(_rows(40, shifted=True, version="1.0.0"))
    _register(home, "1.0.0+site.1")
    (home / "1.0.0+site.1" / "monitor_reference.json").write_text(
        (ROOT / "weights" / MODEL / "monitor_reference.json").read_text())
    V.promote(MODEL, "1.0.0+site.1")
    _add(_rows(40, version="1.0.0+site.1", t0=T0 + 86400))


def test_monitor_a_version_that_is_not_the_active_one(home, capsys):  # noqa: F811
    _two_versions(home)
    active = drift.monitor(MODEL, window="200", record_alerts=False)
    assert active["models"][0]["card_version"] == "1.0.0+site.1" and not active["alerts"]
    rep = drift.monitor(MODEL, window="200", record_alerts=False, version="1.0.0")
    m = rep["models"][0]
    assert m["card_version"] == "1.0.0" and m["n_runs"] == 40
    assert [w["model_versions"] for w in m["windows"]] == [["1.0.0"]]
    assert m["other_versions"] == {"1.0.0+site.1": 40}
    assert rep["alerts"] and all(a["model_version"] == "1.0.0" for a in rep["alerts"])
    capsys.readouterr()
    assert main(["monitor", "--model", MODEL, "--version", "1.0.0", "--window", "200"]) == 3
    out = capsys.readouterr().out
    assert "1.0.0" in out and "ALERT" in out.upper(), out
    # recorded once, with the version it is of
    evs = plog.open_log().events(kind="drift_alert")
    assert evs and {e["detail"]["model_version"] for e in evs} == {"1.0.0"}


def test_version_needs_a_model_and_an_unknown_version_is_one_line(home, capsys):  # noqa: F811
    _two_versions(home)
    capsys.readouterr()
    assert main(["monitor", "--version", "1.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--version needs --model" in err
    assert main(["monitor", "--model", MODEL, "--version", "9.9.9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no version '9.9.9'" in err and "1.0.0+site.1" in err


def test_one_versions_alert_does_not_stand_for_anothers(home):  # noqa: F811
    _add(_rows(1, version="1.0.0"))  # the log exists
    lg = plog.open_log()
    al = {"model_id": MODEL, "window": 0, "start": "2027-01-11T00:00:00+00:00", "end": "2027-01-18T00:00:00+00:00",
          "statistic": "ood_rate", "text": "x"}
    drift._record_alerts(lg, [dict(al, model_version="1.0.0")])
    drift._record_alerts(lg, [dict(al, model_version="1.0.0")])  # the same alert: once
    drift._record_alerts(lg, [dict(al, model_version="1.0.0+site.1")])  # another version's: recorded
    got = sorted(e["detail"]["model_version"] for e in lg.events(kind="drift_alert"))
    assert got == ["1.0.0", "1.0.0+site.1"]
    # an alert recorded before alerts named their version is not recorded again for any version
    old = {k: v for k, v in al.items()}
    old["statistic"] = "positive_rate"
    lg.add_event("drift_alert", MODEL, None, old)
    drift._record_alerts(lg, [dict(old, model_version="1.0.0")])
    assert sum(e["detail"]["statistic"] == "positive_rate" for e in lg.events(kind="drift_alert")) == 1
