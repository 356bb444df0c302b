"""``OUT/batch.sqlite`` that cannot be used (not a database, another program's table, a full
disk, an edited value) is one line naming the file; the file is never replaced or deleted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import DICOM, need
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


def test_a_zip_member_with_a_damaged_deflate_stream_is_one_line_when_hashed(tmp_path):
    """The scanner inflates a member to check it, so a damaged deflate stream is normally its
    problem; should the member change before the batch hashes it, ``zlib.error`` (not an
    OSError) must still be the item's one-line reason, not an internal error of the batch."""
    import io
    import random
    import types
    import zipfile
    import zlib

    from imaging_assist.batch.sources import content_hash
    from imaging_assist.errors import UserError

    src = need(DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm").read_bytes()  # 388 kB
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("film.dcm", src)
    base = buf.getvalue()
    zi = zipfile.ZipFile(io.BytesIO(base)).infolist()[0]
    start = zi.header_offset + 30 + len(zi.filename)
    rnd = random.Random(1)
    for _ in range(500):  # a corruption that deflate itself rejects (most fail the CRC instead)
        d = bytearray(base)
        k = rnd.randrange(start + zi.compress_size // 2, start + zi.compress_size - 60)
        d[k:k + 50] = bytes(rnd.randrange(256) for _ in range(50))
        try:
            with zipfile.ZipFile(io.BytesIO(bytes(d))).open("film.dcm") as f:
                while f.read(1 << 20):
                    pass
        except zlib.error:
            break
        except zipfile.BadZipFile:
            continue
    else:
        pytest.fail("no corruption gave zlib.error")
    z = tmp_path / "films.zip"
    z.write_bytes(bytes(d))
    c = types.SimpleNamespace(kind="series", source=str(z), files=lambda: [(str(z), "film.dcm")])
    with pytest.raises(UserError, match=r"films.zip: cannot be read to hash it \(Error -3 while decompressing"):
        content_hash(c)
