"""The batch results table: ``OUT/batch.sqlite``, one row per item and model.

Why SQLite and not Parquet: rows arrive one at a time over hours and a run can be stopped at
any moment.  SQLite (standard library, no extra dependency; pyarrow is not installed here)
commits each row in its own transaction, so the table is consistent after a Ctrl-C, a crash
or a power cut (WAL journal), a re-run can look up "done for this content hash and model
version?" with an index, and failed rows are replaced in place.  A Parquet file is
written once, whole: appending row by row means many small files and a compaction step.
For analysis, ``SELECT`` it directly or load it with ``pandas.read_sql``.

Columns (JSON text where a value is a list or a mapping): see :data:`COLUMNS`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import sqlite3
from pathlib import Path

from ..errors import UserError
from ..privacy.sitekey import text_bytes

TABLE_FILE = "batch.sqlite"

# name -> SQL type; JSON columns hold dicts/lists
COLUMNS = {
    "content_hash": "TEXT NOT NULL",  # sha256 of the item's bytes (batch.sources.content_hash)
    "model": "TEXT NOT NULL",  # model id ("" for a file that no model could read)
    "model_version": "TEXT NOT NULL",
    "status": "TEXT NOT NULL",  # ok, failed, skipped (the loaded image does not fit the card)
    "error": "TEXT",  # why it failed or was skipped (one line)
    "kind": "TEXT",  # image, series, slide, file
    "source": "TEXT",
    "stem": "TEXT",
    "series_uid": "TEXT",
    "task": "TEXT",
    "probabilities": "JSON",
    "most_likely": "TEXT",
    "decision": "TEXT",  # the decision line with the card's test figures, or why withheld
    "decision_states": "JSON",  # label -> positive/negative/withheld
    "ood_score": "REAL",
    "ood_flagged": "INTEGER",
    "areas": "JSON",  # {"unit": mL/mm2/px/px2, "values": {label: size}}
    "quality": "TEXT",
    "warnings": "JSON",
    "label_map": "TEXT",
    "heatmaps": "JSON",
    "key_images": "JSON",
    "report": "TEXT",
    "report_error": "TEXT",
    "dicom": "JSON",
    "dicom_error": "TEXT",
    "dicom_notes": "TEXT",
    "results_json": "TEXT",
    "item_dir": "TEXT",
    "timings": "JSON",  # the pipeline's own timings (results.json timings_s)
    "decode_s": "REAL",  # reading + decoding the pixels
    "infer_s": "REAL",  # run_model (+ region explainer)
    "write_s": "REAL",  # files, checks, results.json, report, DICOM
    "run_s": "REAL",  # everything after decoding
    "worker": "TEXT",  # host:pid that ran it
    "engine": "TEXT",
    "run_id": "INTEGER",
    "finished": "TEXT",  # UTC ISO time the row was written
    # added later (an older table gains them, empty, when it is opened):
    "other_sources": "JSON",  # the same content found under these names too (analysed once)
    "outputs": "JSON",  # what the run asked for: {explain, explain_labels, report, dicom, override}
}
JSON_COLUMNS = {k for k, v in COLUMNS.items() if v == "JSON"}


def db_text(v):
    r"""``v`` with each text in it as SQLite (and any JSON reader) takes it.  A file name that is
    not UTF-8 (the bytes M \xfc l l e r, copied from a Latin-1 system) comes from the OS with a
    lone surrogate ('M\udcfcller.jpeg'), which SQLite refuses: it is stored as its bytes with the
    undecodable ones escaped (the text M\xfcller.jpeg, backslash and all).  Valid text is kept as
    it is, and an escaped text escapes to itself, so sources compare in either form (resuming
    goes by content hash, never by name)."""
    if isinstance(v, str):
        if v.isascii():
            return v
        try:
            v.encode("utf-8")
            return v
        except UnicodeEncodeError:
            return text_bytes(v).decode("utf-8", "backslashreplace")
    if isinstance(v, dict):
        return {db_text(k): db_text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [db_text(x) for x in v]
    return v


class ResultsTableError(UserError):
    """``batch.sqlite`` cannot be used (not a database, another schema, disk full, locked)."""


def _one_line(method):
    """SQLite's errors as one line naming the table (the file is never replaced or deleted)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            if method.__name__ == "__init__":
                if getattr(self, "db", None) is not None:
                    self.db.close()
                hint = "it is left as it is: move it away or choose another --out"
            else:
                hint = "the rows committed before are kept"
            raise ResultsTableError(f"{self.path}: {self._doing(method.__name__)} ({e}); {hint}") from None
    return wrapper


class ResultsTable:
    """Open (create) ``OUT/batch.sqlite``.  Every :meth:`put` is one committed transaction.
    Any SQLite error (a file that is not a database, a table of another schema, a full disk)
    is a one-line :class:`ResultsTableError`."""

    @staticmethod
    def _doing(name: str) -> str:
        return {"__init__": "cannot open the batch results table", "rows": "cannot read the batch results table",
                "done": "cannot read the batch results table",
                "lookup": "cannot read the batch results table",
                "failed_sources": "cannot read the batch results table"}.get(name, "cannot write the batch results table")

    @_one_line
    def __init__(self, out_dir):
        self.path = Path(out_dir) / TABLE_FILE
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        # first read what is there, and write nothing into a database that is not ours
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables - {"results", "runs", "sqlite_sequence"}:
            raise sqlite3.DatabaseError(f"it holds other tables ({', '.join(sorted(tables)[:4])}): another "
                                        "program's database?")
        info = list(self.db.execute("PRAGMA table_info(results)"))
        key = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        if info and key != ["content_hash", "model", "model_version"]:  # resuming relies on this key
            raise sqlite3.DatabaseError("its results table is not keyed by content hash, model and model "
                                        "version: another program's table?")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{k} {v.replace('JSON', 'TEXT')}" for k, v in COLUMNS.items())
        self.db.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, "
                        "PRIMARY KEY (content_hash, model, model_version))")
        self.db.execute("CREATE TABLE IF NOT EXISTS runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, "
                        "started TEXT, finished TEXT, engine TEXT, command TEXT, state TEXT, "
                        "done INTEGER, failed INTEGER, skipped INTEGER, resumed INTEGER, seconds REAL)")
        info = info or list(self.db.execute("PRAGMA table_info(results)"))
        have = {r[1] for r in info}
        for k, v in COLUMNS.items():  # a table from an older version gains the new columns
            if k not in have:
                self.db.execute(f"ALTER TABLE results ADD COLUMN {k} {v.replace('JSON', 'TEXT')}")

    # ------------------------------------------------------------------ runs
    @_one_line
    def start_run(self, engine: str, command: str) -> int:
        cur = self.db.execute("INSERT INTO runs (started, engine, command, state) VALUES (?, ?, ?, 'running')",
                              (_now(), engine, command))
        return int(cur.lastrowid)

    @_one_line
    def end_run(self, run_id: int, state: str, counts: dict, seconds: float) -> None:
        self.db.execute("UPDATE runs SET finished=?, state=?, done=?, failed=?, skipped=?, resumed=?, seconds=? "
                        "WHERE run_id=?", (_now(), state, counts.get("ok", 0), counts.get("failed", 0),
                                           counts.get("skipped", 0), counts.get("resumed", 0), seconds, run_id))

    # ------------------------------------------------------------------ rows
    @_one_line
    def done(self, content_hash: str, model: str, version: str) -> bool:
        """Already analysed (ok) or known not to fit (skipped) for this content and model
        version?  Failed rows are tried again."""
        r = self.db.execute("SELECT status FROM results WHERE content_hash=? AND model=? AND model_version=?",
                            (content_hash, model, version)).fetchone()
        return r is not None and r[0] in ("ok", "skipped")

    @_one_line
    def lookup(self, content_hash: str, model: str, version: str) -> dict | None:
        """The row of this content, model and version (JSON columns decoded), or None."""
        rows = self.rows("WHERE content_hash=? AND model=? AND model_version=?", (content_hash, model, version))
        return rows[0] if rows else None

    @_one_line
    def add_sources(self, content_hash: str, model: str, version: str, sources: list[str]) -> None:
        """Name more sources of the same content in its row's ``other_sources`` (a resumed
        duplicate): the row's own ``source`` is not repeated."""
        r = self.lookup(content_hash, model, version)
        if r is None:
            return
        have = list(r.get("other_sources") or [])
        new = [x for x in db_text(list(sources)) if x != r.get("source") and x not in have]
        if new:
            self.db.execute("UPDATE results SET other_sources=? WHERE content_hash=? AND model=? AND model_version=?",
                            (json.dumps(have + new), content_hash, model, version))

    @_one_line
    def failed_sources(self) -> set[str]:
        """The sources of the failed rows (what an ok row may clear: :meth:`clear_failed`), as
        stored (:func:`db_text`)."""
        return {r[0] for r in self.db.execute("SELECT DISTINCT source FROM results WHERE status='failed'")
                if r[0] is not None}

    @_one_line
    def clear_failed(self, sources: list[str], model: str, content_hash: str, files: list[str] = ()) -> int:
        """An item analysed: delete the failed rows of the same source(s) and model for other
        content (the file was fixed or replaced since), and the rows of its files that no
        model could read (model ''); returns how many went."""
        n = 0
        sources, files = db_text(list(sources)), db_text(list(files))  # as put() stored them
        self.db.execute("BEGIN")
        try:
            for src in dict.fromkeys(sources):
                n += self.db.execute("DELETE FROM results WHERE status='failed' AND source=? AND model=? "
                                     "AND content_hash<>?", (src, model, content_hash)).rowcount
            for f in dict.fromkeys([*sources, *files]):
                n += self.db.execute("DELETE FROM results WHERE status='failed' AND source=? AND model=''",
                                     (f,)).rowcount
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return n

    @_one_line
    def put(self, row: dict) -> None:
        row = dict(row)
        row.setdefault("finished", _now())
        keys = [k for k in COLUMNS if k in row]
        vals = []
        for k in keys:
            v = db_text(row[k])
            if k in JSON_COLUMNS and v is not None:
                v = json.dumps(v, default=str)
            elif k == "ood_flagged" and v is not None:
                v = int(bool(v))
            vals.append(v)
        self.db.execute(f"INSERT OR REPLACE INTO results ({', '.join(keys)}) VALUES "
                        f"({', '.join('?' * len(keys))})", vals)

    @_one_line
    def rows(self, where: str = "", args: tuple = ()) -> list[dict]:
        cur = self.db.execute(f"SELECT * FROM results {where}", args)
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(names, r))
            for k in JSON_COLUMNS:
                if d.get(k) is not None:
                    try:
                        d[k] = json.loads(d[k])
                    except (ValueError, RecursionError):
                        raise sqlite3.DataError(f"the {k} of the row of {d.get('source') or d.get('content_hash')} "
                                                "is not JSON (edited?)") from None
            out.append(d)
        return out

    def close(self) -> None:
        self.db.close()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
