"""Prediction log (issue 18): the engine hook records every run, schema migrations, CSV export,
a logging failure never breaks a run."""

from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from conftest import SHARED, need
from imaging_assist.cli.main import main
from imaging_assist.monitoring import log as plog

KERMANY = SHARED / "cxr" / "pneumonia_kermany"


@pytest.fixture()
def logdir(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv(plog.ENV_SWITCH, raising=False)
    yield tmp_path
    plog.close_all()


@pytest.fixture(scope="module")
def pneumonia():
    from imaging_assist.models.registry import Registry

    return Registry().load("cxr-pneumonia")


def _image(name="test/NORMAL"):
    d = need(KERMANY / name)
    return sorted(d.iterdir())[0]


def test_every_run_is_logged_with_its_inputs_and_outputs(logdir, pneumonia):
    from imaging_assist.inference import RunOptions, read_image, run_model

    p = _image()
    res = run_model(pneumonia, read_image(p), RunOptions(device="cpu"))
    row = plog.open_log().run(res.prediction_log_id)
    assert plog.db_path() == logdir / "data" / "predictions.sqlite"
    assert plog.db_path().stat().st_mode & 0o077 == 0  # readable by this account only
    assert row["model_id"] == "cxr-pneumonia" and row["model_version"] == pneumonia.card.version
    assert row["weights_sha256"] == pneumonia.card.weights[0].sha256
    assert (row["rows"], row["cols"], row["slices"]) == (224, 224, 1)
    assert row["score"] == pytest.approx(res.probabilities["pneumonia"])
    assert row["ood_score"] == pytest.approx(res.ood["score"])
    assert row["device"] == "cpu" and row["run_s"] > 0
    assert 0 <= row["int_p1"] <= row["int_p50"] <= row["int_p99"] <= 255
    # a keyed pseudonym, never the path or name
    assert row["input_key"] and len(row["input_key"]) == 32
    assert p.name not in str(row.values()) and str(p.parent) not in str(row.values())
    # the same input gives the same pseudonym (so repeated reads of one study can be grouped)
    res2 = run_model(pneumonia, read_image(p), RunOptions(device="cpu"))
    assert plog.open_log().run(res2.prediction_log_id)["input_key"] == row["input_key"]


def test_a_broken_log_never_breaks_a_run(logdir, pneumonia, monkeypatch):
    from imaging_assist.inference import RunOptions, read_image, run_model

    # the data folder is a file: the database cannot be created
    (logdir / "data").write_text("not a folder")
    monkeypatch.setattr(plog, "_warned", False)
    with pytest.warns(RuntimeWarning, match="prediction log could not record"):
        res = run_model(pneumonia, read_image(_image()), RunOptions(device="cpu"))
    assert res.probabilities and getattr(res, "prediction_log_id", None) is None


def test_switched_off_and_paused(logdir, pneumonia, monkeypatch):
    from imaging_assist.inference import RunOptions, read_image, run_model

    with plog.paused():
        res = run_model(pneumonia, read_image(_image()), RunOptions(device="cpu"))
    assert getattr(res, "prediction_log_id", None) is None
    monkeypatch.setenv(plog.ENV_SWITCH, "off")
    res = run_model(pneumonia, read_image(_image()), RunOptions(device="cpu"))
    assert getattr(res, "prediction_log_id", None) is None
    assert not plog.db_path().exists()


def test_migrations_upgrade_an_old_file_and_refuse_a_newer_one(tmp_path):
    p = tmp_path / "old.sqlite"
    c = sqlite3.connect(p)
    for sql in plog.MIGRATIONS[0]:
        c.execute(sql)
    c.execute("PRAGMA user_version=1")
    c.execute("INSERT INTO runs (time_utc, time_unix, model_id) VALUES ('2026-01-01', 1.0, 'm')")
    c.commit()
    c.close()
    lg = plog.PredictionLog(p)
    assert lg.schema_version == plog.SCHEMA_VERSION >= 2
    assert lg.query("SELECT model_id FROM runs") == [("m",)]  # kept
    lg.add_event("test", "m")  # table from migration 2
    assert lg.query("PRAGMA journal_mode")[0][0] == "wal"
    lg.close()
    c = sqlite3.connect(p)
    c.execute(f"PRAGMA user_version={plog.SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(plog.LogError, match="newer than this program"):
        plog.PredictionLog(p)


def test_log_export_csv(logdir, pneumonia, capsys):
    from imaging_assist.inference import RunOptions, read_image, run_model

    assert main(["log", "export", "--csv"]) == 2  # no log yet: one line
    assert "no prediction log yet" in capsys.readouterr().err
    for name in ("test/NORMAL", "test/PNEUMONIA"):
        run_model(pneumonia, read_image(_image(name)), RunOptions(device="cpu"))
    out = logdir / "runs.csv"
    assert main(["log", "export", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and rows[0]["model_id"] == "cxr-pneumonia"
    assert {"input_key", "ood_score", "score", "int_p50", "weights_sha256"} <= set(rows[0])
    capsys.readouterr()
    assert main(["log", "export", "--csv"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 2
    assert main(["log", "export", "--csv", str(logdir)]) == 2


def _log_with_runs(path, n=20):
    lg = plog.PredictionLog(path)
    lg.add_runs([{"time_utc": f"2026-01-{1 + k % 28:02d}T00:00:00", "time_unix": 1.767e9 + k * 86400,
                  "model_id": "cxr-pneumonia", "model_version": "1.0.0", "score": k / n,
                  "ood_score": 1.0 + k / n} for k in range(n)])
    lg.add_event("alert", "cxr-pneumonia", "1.0.0", {"why": "test"})
    lg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    lg.close()


def test_a_damaged_log_is_one_line_for_monitor_and_export(logdir, capsys):
    """A prediction log damaged on disk (flipped bytes, cut short; 120 seeded copies): `monitor`
    and `log export` report it in one line (exit 2) or read it; never an internal error.
    Before: a damaged header page made SQLite's own text invalid UTF-8, an 'internal error'."""
    import os
    import random

    path = plog.db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    _log_with_runs(path)
    orig = path.read_bytes()
    r = random.Random(5)
    codes = []
    for t in range(120):
        b = bytearray(orig)
        if t % 4 == 0:
            b = b[: r.randrange(len(b))]
        else:
            for _ in range(r.randint(1, 20)):
                b[r.randrange(len(b))] = r.randrange(256)
        plog.close_all()
        for extra in ("-wal", "-shm"):
            if os.path.exists(str(path) + extra):
                os.remove(str(path) + extra)
        path.write_bytes(bytes(b))
        for cmd in (["monitor"], ["log", "export"]):
            rc = main(cmd)
            err = capsys.readouterr().err.strip().splitlines()
            codes.append(rc)
            assert rc in (0, 2), (t, cmd, err)
            if rc == 2:
                assert len(err) == 1 and "prediction log" in err[0], err
    assert codes.count(2) > 20 and codes.count(0) > 20, codes


def test_damaged_text_or_detail_in_a_row_is_one_line(tmp_path):
    p = tmp_path / "log.sqlite"
    _log_with_runs(p, 3)
    c = sqlite3.connect(p)
    c.execute("UPDATE events SET detail = 'not json' WHERE kind = 'alert'")
    c.commit()
    lg = plog.PredictionLog(p)
    with pytest.raises(plog.LogError, match=r"is damaged \(Expecting value"):
        lg.events()
    c.execute("UPDATE runs SET model_version = CAST(X'DDFF41' AS TEXT) WHERE id = 2")
    c.commit()
    c.close()
    with pytest.raises(plog.LogError, match=r"is damaged \(a text that is not UTF-8\); keep a copy"):
        lg.query("SELECT model_version FROM runs")
    with pytest.raises(plog.LogError, match="is damaged"):
        lg.export_csv(io.StringIO())
    lg.close()


def test_feedback_on_a_result_never_lands_on_another_run_after_the_log_was_moved(logdir, pneumonia):
    """The log moved aside while results are on screen: a new log numbers its runs from 1 again,
    so the old result's run number names another film's run; feedback and corrections given on
    the old result are refused (one line), never written onto that run."""
    import numpy as np

    from imaging_assist.errors import UserError
    from imaging_assist.inference import RunOptions, read_image, run_model
    from imaging_assist.monitoring import feedback

    old = run_model(pneumonia, read_image(_image("test/NORMAL")), RunOptions(device="cpu"))
    assert old.prediction_log_ref["id"] == old.prediction_log_id == 1
    assert feedback.run_matches(1, old.prediction_log_ref)
    plog.db_path().rename(plog.db_path().with_name("old.sqlite"))  # moved aside
    new = run_model(pneumonia, read_image(_image("test/PNEUMONIA")), RunOptions(device="cpu"))
    assert new.prediction_log_id == 1  # the same number, another film
    assert not feedback.run_matches(1, old.prediction_log_ref)
    with pytest.raises(UserError, match="another run now"):
        feedback.add_feedback(1, "pneumonia", "agree", expect=old.prediction_log_ref)
    with pytest.raises(UserError, match="another run now"):
        feedback.save_correction(1, np.zeros((1, 224, 224), np.uint8), ["background", "x"],
                                 expect=old.prediction_log_ref)
    assert feedback.latest_feedback(1) == {}
    feedback.add_feedback(1, "pneumonia", "agree", expect=new.prediction_log_ref)  # its own run: kept
    assert feedback.latest_feedback(1)["pneumonia"]["verdict"] == "agree"
