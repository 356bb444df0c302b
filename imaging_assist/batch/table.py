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
import json
import sqlite3
from pathlib import Path

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
}
JSON_COLUMNS = {k for k, v in COLUMNS.items() if v == "JSON"}


class ResultsTable:
    """Open (create) ``OUT/batch.sqlite``.  Every :meth:`put` is one committed transaction."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / TABLE_FILE
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{k} {v.replace('JSON', 'TEXT')}" for k, v in COLUMNS.items())
        self.db.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, "
                        "PRIMARY KEY (content_hash, model, model_version))")
        self.db.execute("CREATE TABLE IF NOT EXISTS runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, "
                        "started TEXT, finished TEXT, engine TEXT, command TEXT, state TEXT, "
                        "done INTEGER, failed INTEGER, skipped INTEGER, resumed INTEGER, seconds REAL)")
        have = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
        for k, v in COLUMNS.items():  # a table from an older version gains the new columns
            if k not in have:
                self.db.execute(f"ALTER TABLE results ADD COLUMN {k} {v.replace('JSON', 'TEXT')}")

    # ------------------------------------------------------------------ runs
    def start_run(self, engine: str, command: str) -> int:
        cur = self.db.execute("INSERT INTO runs (started, engine, command, state) VALUES (?, ?, ?, 'running')",
                              (_now(), engine, command))
        return int(cur.lastrowid)

    def end_run(self, run_id: int, state: str, counts: dict, seconds: float) -> None:
        self.db.execute("UPDATE runs SET finished=?, state=?, done=?, failed=?, skipped=?, resumed=?, seconds=? "
                        "WHERE run_id=?", (_now(), state, counts.get("ok", 0), counts.get("failed", 0),
                                           counts.get("skipped", 0), counts.get("resumed", 0), seconds, run_id))

    # ------------------------------------------------------------------ rows
    def done(self, content_hash: str, model: str, version: str) -> bool:
        """Already analysed (ok) or known not to fit (skipped) for this content and model
        version?  Failed rows are tried again."""
        r = self.db.execute("SELECT status FROM results WHERE content_hash=? AND model=? AND model_version=?",
                            (content_hash, model, version)).fetchone()
        return r is not None and r[0] in ("ok", "skipped")

    def put(self, row: dict) -> None:
        row = dict(row)
        row.setdefault("finished", _now())
        keys = [k for k in COLUMNS if k in row]
        vals = []
        for k in keys:
            v = row[k]
            if k in JSON_COLUMNS and v is not None:
                v = json.dumps(v, default=str)
            elif k == "ood_flagged" and v is not None:
                v = int(bool(v))
            vals.append(v)
        self.db.execute(f"INSERT OR REPLACE INTO results ({', '.join(keys)}) VALUES "
                        f"({', '.join('?' * len(keys))})", vals)

    def rows(self, where: str = "", args: tuple = ()) -> list[dict]:
        cur = self.db.execute(f"SELECT * FROM results {where}", args)
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(names, r))
            for k in JSON_COLUMNS:
                if d.get(k) is not None:
                    d[k] = json.loads(d[k])
            out.append(d)
        return out

    def close(self) -> None:
        self.db.close()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
