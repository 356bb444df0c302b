"""``imaging-assist batch``: the defects of the batch audit, each with the case that showed it.

1. ``--model FOLDER`` runs that folder (not the registered model of the same id); the same
   model named twice counts once; two folders of one id are one line.
2. A new model version writes its own item folder; the old version's row keeps its files.
3. The same content under several names is one work unit (one row naming the others).
4. The table's paths are absolute with a relative ``--out`` and SOURCE.
5. A failed row goes once its source is analysed (the file was fixed).
6. A resume re-runs skipped rows with ``--research-override`` and ok rows made without an
   output now asked (``--report``, ``--explain``).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from test_batch import _rows  # the table's rows, as test_batch reads them

from conftest import DICOM, SHARED, need

ROOT = Path(__file__).resolve().parents[1]
PNEUMONIA = SHARED / "cxr" / "pneumonia_kermany"


def _films(n: int) -> list[Path]:
    rows = (need(PNEUMONIA / "labels.csv")).read_text().splitlines()[1:]
    files = [PNEUMONIA / r.split(",")[0] for r in rows if r.split(",")[3] == "test"]
    return files[::7][:n]


@pytest.fixture(autouse=True)
def _own_config(tmp_path, monkeypatch):
    """No user models, audit trail or prediction log outside this test's folder."""
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _batch(*args) -> tuple[int, dict | None, str]:
    """``imaging-assist batch ... --json`` in this process: (exit code, counts, stderr)."""
    import contextlib
    import io

    from imaging_assist.cli.main import main

    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        rc = main(["batch", *map(str, args), "--json"])
    out = so.getvalue().strip().splitlines()
    return rc, (json.loads(out[-1]) if out else None), se.getvalue()




def _site_copy(dst: Path, version: str = "1.0.1", model_id: str | None = None) -> Path:
    """A site copy of cxr-pneumonia: another version, decision threshold 0.3 (0.7477 shipped)."""
    shutil.copytree(ROOT / "weights" / "cxr-pneumonia", dst)
    card = dst / "model.json"
    s = card.read_text()
    s = s.replace('"version": "1.0.0"', f'"version": "{version}"', 1).replace('"threshold": 0.7477', '"threshold": 0.3')
    if model_id:
        s = s.replace('"id": "cxr-pneumonia"', f'"id": "{model_id}"', 1)
    card.write_text(s)
    return dst


@pytest.fixture
def one_film(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(_films(1)[0], d / _films(1)[0].name)
    return d


# =========================================================================== 1. --model FOLDER
@pytest.mark.parametrize("processes", [0, 2])
def test_model_folder_runs_that_folder_not_the_registered_model(tmp_path, one_film, processes):
    site = _site_copy(tmp_path / "site-model")  # same id as the registered model, version 1.0.1
    out = tmp_path / "out"
    extra = ["--processes", processes] if processes else []
    rc, r, err = _batch(one_film, "--model", site, "--out", out, *extra)
    assert rc == 0 and r["ok"] == 1, err
    assert not processes or "2 worker processes" in err, err
    (row,) = _rows(out)
    doc = json.loads(Path(row["results_json"]).read_text())
    assert row["model"] == "cxr-pneumonia" and row["model_version"] == "1.0.1"
    assert doc["model"]["version"] == "1.0.1"
    assert "0.3" in row["decision"] and "0.7477" not in row["decision"], row["decision"]
    # a re-run resumes it: the card checked is the card run
    rc, r, err = _batch(one_film, "--model", site, "--out", out, *extra)
    assert rc == 0 and r["ok"] == 0 and r["resumed"] == 1, err


def test_model_folder_whose_id_is_not_registered(tmp_path, one_film):
    site = _site_copy(tmp_path / "site2", model_id="cxr-pneumonia-site")
    out = tmp_path / "out"
    rc, r, err = _batch(one_film, "--model", site, "--out", out)
    assert rc == 0 and r["ok"] == 1, err
    (row,) = _rows(out)
    assert row["model"] == "cxr-pneumonia-site" and "0.3" in row["decision"]


def test_one_model_named_by_id_and_folder_is_one_model(tmp_path, one_film):
    out = tmp_path / "out"
    rc, r, err = _batch(one_film, "--model", "cxr-pneumonia", "--model", ROOT / "weights" / "cxr-pneumonia",
                        "--out", out)
    assert rc == 0 and r["total"] == 1 and r["ok"] == 1, err
    assert "1 to run" in err, err


def test_two_folders_of_one_model_id_are_one_line(tmp_path, one_film, capsys):
    from imaging_assist.cli.main import main

    site = _site_copy(tmp_path / "site-model")
    rc = main(["batch", str(one_film), "--model", "cxr-pneumonia", "--model", str(site),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "cxr-pneumonia" in err and str(site) in err and "different folders" in err
    assert not (tmp_path / "out" / "batch.sqlite").exists()


# =========================================================================== 2. versions
def test_a_new_model_version_keeps_the_old_versions_files(tmp_path, one_film):
    out = tmp_path / "out"
    rc, r, err = _batch(one_film, "--model", "cxr-pneumonia", "--out", out)
    assert rc == 0 and r["ok"] == 1, err
    _site_copy(tmp_path / "cfg" / "models" / "cxr-pneumonia")  # the user's models: 1.0.1 wins
    rc, r, err = _batch(one_film, "--model", "cxr-pneumonia", "--out", out)
    assert rc == 0 and r["ok"] == 1, err
    rows = {r["model_version"]: r for r in _rows(out)}
    assert set(rows) == {"1.0.0", "1.0.1"}
    assert rows["1.0.0"]["item_dir"] != rows["1.0.1"]["item_dir"]
    for v, row in rows.items():
        doc = json.loads(Path(row["results_json"]).read_text())
        assert doc["model"]["version"] == v
        assert doc["items"][0]["decision"]["text"] == row["decision"]
        assert Path(row["item_dir"]).name.endswith("-v" + v)  # OUT/<model>/<stem>-<hash12>-v<version>
        assert Path(row["item_dir"]).parent == out / "cxr-pneumonia"
    # resume still finds it
    rc, r, err = _batch(one_film, "--model", "cxr-pneumonia", "--out", out)
    assert rc == 0 and r["ok"] == 0 and r["resumed"] == 1, err


def test_a_version_that_is_not_a_safe_file_name_gets_its_own_folder():
    from imaging_assist.batch.item import version_dir

    assert version_dir("1.0.0") == "1.0.0"
    a, b = version_dir("1.0 beta"), version_dir("1.0_beta")
    assert a != b and "/" not in version_dir("../x") and version_dir("../x") not in ("..", ".", "")


# =========================================================================== 3. duplicates
def test_the_same_content_under_several_names_is_one_unit(tmp_path, monkeypatch):
    film = _films(1)[0]
    for i in range(3):
        (tmp_path / f"export{i}").mkdir()
        shutil.copy(film, tmp_path / f"export{i}" / "film.jpeg")
    shutil.copy(film, tmp_path / "export2" / "other-name.jpeg")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    # export0 twice: relative and absolute
    rc, r, err = _batch("export0", tmp_path / "export0", tmp_path / "export1", tmp_path / "export2",
                        "--model", "cxr-pneumonia", "--report", "--out", out)
    assert rc == 0, err
    assert r["ok"] == 1 and r["total"] == 1 and r["duplicates"] == 3, (r, err)
    assert "3 duplicate(s) of other items" in err, err
    (row,) = _rows(out)
    others = json.loads(row["other_sources"])
    names = {str(tmp_path / f"export{i}" / "film.jpeg") for i in range(3)} | {str(tmp_path / "export2" / "other-name.jpeg")}
    assert {row["source"], *others} == names and len(others) == 3
    for f in [row["results_json"], row["report"], *json.loads(row["key_images"])]:
        assert Path(f).is_file(), f
    # a re-run: everything resumed, nothing new
    rc, r, err = _batch(tmp_path / "export0", tmp_path / "export1", tmp_path / "export2",
                        "--model", "cxr-pneumonia", "--report", "--out", out)
    assert rc == 0 and r["ok"] == 0 and r["resumed"] == 1, (r, err)


def test_an_older_table_gains_the_new_columns(tmp_path):
    from imaging_assist.batch.table import COLUMNS, ResultsTable

    old = {k: v for k, v in COLUMNS.items() if k not in ("other_sources", "outputs")}
    db = sqlite3.connect(str(tmp_path / "batch.sqlite"))
    cols = ", ".join(f"{k} {v.replace('JSON', 'TEXT')}" for k, v in old.items())
    db.execute(f"CREATE TABLE results ({cols}, PRIMARY KEY (content_hash, model, model_version))")
    db.execute("INSERT INTO results (content_hash, model, model_version, status, source) VALUES "
               "('h', 'm', '1', 'ok', '/a')")
    db.commit()
    db.close()
    t = ResultsTable(tmp_path)
    try:
        (row,) = t.rows()
        assert row["source"] == "/a" and row["other_sources"] is None and row["outputs"] is None
        t.add_sources("h", "m", "1", ["/a", "/b"])
        assert t.rows()[0]["other_sources"] == ["/b"]
    finally:
        t.close()


# =========================================================================== 4. absolute paths
def test_relative_out_and_source_give_absolute_paths(tmp_path, one_film, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, r, err = _batch("in", "--model", "cxr-pneumonia", "--out", "out")
    assert rc == 0 and r["ok"] == 1, err
    assert Path(r["table"]).is_absolute()
    monkeypatch.chdir("/")
    (row,) = _rows(tmp_path / "out")
    for k in ("source", "results_json", "item_dir"):
        assert Path(row[k]).is_absolute() and Path(row[k]).exists(), (k, row[k])
    for f in json.loads(row["key_images"]):
        assert Path(f).is_absolute() and Path(f).is_file()


# =========================================================================== 5. stale failed rows
def test_a_fixed_file_clears_its_failed_rows(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = _films(1)[0].read_bytes()
    (src / "b.jpeg").write_bytes(good[:3000])  # truncated
    (src / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 5)  # no model can read it
    out = tmp_path / "out"
    rc, r, err = _batch(src, "--model", "cxr-lung-seg", "--out", out)
    assert rc == 1 and r["failed"] == 2, err
    assert {(Path(x["source"]).name, x["model"]) for x in _rows(out) if x["status"] == "failed"} == {
        ("b.jpeg", "cxr-lung-seg"), ("x.dcm", "")}
    (src / "b.jpeg").write_bytes(good)  # fixed
    shutil.copy(need(DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"), src / "x.dcm")
    rc, r, err = _batch(src, "--model", "cxr-lung-seg", "--out", out)
    assert rc == 0 and r["ok"] == 2 and r["failed"] == 0, err
    rows = _rows(out)
    assert [x for x in rows if x["status"] == "failed"] == [], rows
    assert len(rows) == 2 and all(x["status"] == "ok" for x in rows)


# =========================================================================== 6. resume and settings
def test_a_skipped_row_runs_again_with_research_override(tmp_path, one_film):
    out = tmp_path / "out"
    rc, r, err = _batch(one_film, "--model", "path-lung-tissue", "--out", out)
    assert rc == 0 and r["skipped"] == 1, err
    rc, r, err = _batch(one_film, "--model", "path-lung-tissue", "--research-override", "--out", out)
    assert rc == 0 and r["ok"] == 1 and r["resumed"] == 0, (r, err)
    assert "--research-override" in err
    (row,) = _rows(out)
    assert row["status"] == "ok" and Path(row["results_json"]).is_file()


def test_an_ok_row_runs_again_for_outputs_it_lacks(tmp_path, one_film):
    out = tmp_path / "out"
    rc, r, err = _batch(one_film, "--model", "cxr-pneumonia", "--out", out)
    assert rc == 0 and r["ok"] == 1, err
    (row,) = _rows(out)
    assert row["report"] is None
    rc, r, err = _batch(one_film, "--model", "cxr-pneumonia", "--report", "--explain", "gradcam", "--out", out)
    assert rc == 0 and r["ok"] == 1 and r["resumed"] == 0 and r["rerun"] == 1, (r, err)
    assert "run again" in err and "--report" in err
    (row,) = _rows(out)
    assert Path(row["report"]).is_file()
    assert json.loads(row["heatmaps"]) and all(Path(h).is_file() for h in json.loads(row["heatmaps"]))
    # what it was made with is done: asking for less, or the same again, resumes
    for extra in ([], ["--report", "--explain", "gradcam"]):
        rc, r, err = _batch(one_film, "--model", "cxr-pneumonia", *extra, "--out", out)
        assert rc == 0 and r["ok"] == 0 and r["resumed"] == 1, (extra, r, err)


def test_rerun_reason_of_rows_from_an_older_table():
    from imaging_assist.batch.run import rerun_reason

    asked = {"explain": None, "explain_labels": None, "report": True, "dicom": False, "override": False}
    assert rerun_reason(None, asked) == ""
    assert rerun_reason({"status": "failed"}, asked) == ""
    assert rerun_reason({"status": "ok", "report": "/r.pdf"}, asked) is None
    assert rerun_reason({"status": "ok", "report_error": "no"}, asked) is None  # tried: not again
    assert "--report" in rerun_reason({"status": "ok"}, asked)
    assert rerun_reason({"status": "skipped"}, asked) is None
    assert "override" in rerun_reason({"status": "skipped"}, dict(asked, override=True))
