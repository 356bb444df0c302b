"""``OUT/batch.sqlite`` that cannot be used (not a database, another program's table, a full
disk, an edited value) is one line naming the file; the file is never replaced or deleted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imaging_assist.batch import run as batch_run
from imaging_assist.batch.table import ResultsTable, ResultsTableError

ROOT = Path(__file__).resolve().parents[1]
FILMS = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray"


def _batch(out, capsys) -> tuple[int, str]:
    from imaging_assist.cli.main import main

    rc = main(["batch", str(FILMS), "--model", "cxr-pneumonia", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_bytes(bytes(range(256)) * 20), "file is not a database"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE results (a, b)").connection.commit(),
     "not keyed by content hash, model and model version"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE patients (id, name)").connection.commit(),
     "it holds other tables (patients): another program's database?"),
])
def test_a_table_that_is_not_ours_is_one_line_and_left_as_it_is(tmp_path, capsys, make, why):
    out = tmp_path / "out"
    out.mkdir()
    table = out / "batch.sqlite"
    make(table)
    before = table.read_bytes()
    rc, line = _batch(out, capsys)
    assert rc == 2 and line.startswith(f"error: {table}: cannot open the batch results table (")
    assert why in line and "it is left as it is" in line
    assert table.read_bytes() == before


def test_a_full_disk_mid_run_stops_with_one_line_and_keeps_the_rows(tmp_path, capsys, monkeypatch):
    class Small(ResultsTable):  # SQLite's own page limit stands in for a full disk
        def __init__(self, out_dir):
            super().__init__(out_dir)
            self.db.execute("INSERT INTO results (content_hash, model, model_version, status, error) "
                            "VALUES ('fill', '', '', 'failed', ?)", ("x" * 3800,))  # its page is full
            n = self.db.execute("PRAGMA page_count").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count={n}")

    monkeypatch.setattr(batch_run, "ResultsTable", Small)
    out = tmp_path / "out"
    rc, line = _batch(out, capsys)
    assert rc == 2, line
    assert line.startswith(f"error: {out / 'batch.sqlite'}: cannot write the batch results table (")
    assert "full" in line and line.endswith("the rows committed before are kept")
    monkeypatch.undo()
    t = ResultsTable(out)  # still a usable table, which the next run (with room) resumes from
    assert [r["content_hash"] for r in t.rows()] == ["fill"]
    assert t.db.execute("SELECT state FROM runs").fetchall()[-1] == ("failed",)
    t.close()


def test_an_edited_json_value_is_named(tmp_path):
    t = ResultsTable(tmp_path)
    t.put({"content_hash": "h", "model": "m", "model_version": "1", "status": "ok", "source": "a.png",
           "probabilities": {"x": 0.5}})
    assert t.rows()[0]["probabilities"] == {"x": 0.5}
    t.db.execute("UPDATE results SET probabilities='{\"x\": 0.5'")
    with pytest.raises(ResultsTableError, match=r"cannot read the batch results table \(the probabilities of the "
                                                r"row of a.png is not JSON \(edited\?\)\)"):
        t.rows()
    t.close()
