"""The prediction log: one SQLite row per model run, in ``userdirs.data_dir()/predictions.sqlite``.

What a row holds (nothing else; no names, no pixels): time, model id / version / weights
sha256, a keyed pseudonym of the input and of the patient (HMAC with the site key,
:func:`imaging_assist.privacy.sitekey.pseudonym`), input statistics (size, spacing, an
intensity summary from a strided sample of the pixels, modality, manufacturer, OOD score),
outputs (probabilities, decisions, areas/volumes), run time and device.  Reader feedback,
label-map corrections and model-version events (fine-tune, promote, rollback, alerts) live in
the same database (:mod:`.feedback`, :mod:`.versions`), so one file is the site's record.

Schema: versioned with ``PRAGMA user_version`` and applied by :data:`MIGRATIONS` in order, so
an older file is upgraded in place and a newer one (from a later release) is refused with one
line.  WAL journal: readers (the monitor, the GUI panel) never block a run that is writing.

The engine calls :func:`record_safely` from the one place every model run passes through
(``inference.pipelines._run_on``); a logging failure never breaks a run: it warns once and
the run goes on.  ``IMAGING_ASSIST_PREDICTION_LOG=off`` or ``with paused():`` switches the log
off (benchmarks, the evaluate command's re-runs of labelled data if a site wants them out).

Hand-written over an ORM on purpose: a dozen SQL statements, and the stdlib ``sqlite3`` keeps
the per-run cost well under a millisecond (scripts/bench_log.py measures it).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import logging
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["DB_NAME", "SCHEMA_VERSION", "PredictionLog", "LogError", "db_path", "open_log",
           "record_run", "record_safely", "paused", "input_stats", "row_from_result"]

DB_NAME = "predictions.sqlite"
ENV_SWITCH = "IMAGING_ASSIST_PREDICTION_LOG"
_log = logging.getLogger(__name__)


class LogError(UserError):
    """The prediction log cannot be opened or is from a newer release."""


# --------------------------------------------------------------------------- schema
# Each entry upgrades the file from version i to i + 1.  Never edit a released step: add one.
MIGRATIONS: list[list[str]] = [
    # 1: runs and reader feedback
    ["""CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            time_utc TEXT NOT NULL, time_unix REAL NOT NULL,
            model_id TEXT NOT NULL, model_version TEXT, weights_sha256 TEXT, task TEXT,
            input_key TEXT, patient_key TEXT, kind TEXT,
            rows INTEGER, cols INTEGER, slices INTEGER, channels INTEGER,
            spacing_x REAL, spacing_y REAL, spacing_z REAL,
            int_mean REAL, int_std REAL, int_p1 REAL, int_p50 REAL, int_p99 REAL,
            modality TEXT, manufacturer TEXT,
            ood_score REAL, ood_threshold REAL, ood_flagged INTEGER,
            score REAL, positive INTEGER, top_label TEXT,
            probabilities TEXT, decisions TEXT, areas TEXT,
            run_s REAL, device TEXT, precision TEXT, n_warnings INTEGER, app_version TEXT)""",
     """CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            time_utc TEXT NOT NULL, time_unix REAL NOT NULL,
            finding TEXT NOT NULL, verdict TEXT NOT NULL
                CHECK (verdict IN ('agree', 'disagree', 'unsure')),
            correct_label TEXT, reader TEXT, note TEXT)""",
     "CREATE INDEX feedback_run ON feedback(run_id)"],
    # 2: segmentation corrections, model-version events, the monitor's index
    ["""CREATE TABLE corrections (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            time_utc TEXT NOT NULL, time_unix REAL NOT NULL,
            label_map_file TEXT NOT NULL, seg_file TEXT, labels TEXT,
            dice_vs_prediction REAL, changed_voxels INTEGER, reader TEXT)""",
     "CREATE INDEX corrections_run ON corrections(run_id)",
     """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            time_utc TEXT NOT NULL, time_unix REAL NOT NULL,
            kind TEXT NOT NULL, model_id TEXT, version TEXT, detail TEXT)""",
     "CREATE INDEX runs_model_time ON runs(model_id, time_unix)"],
]
SCHEMA_VERSION = len(MIGRATIONS)

RUN_COLUMNS = ("time_utc", "time_unix", "model_id", "model_version", "weights_sha256", "task",
               "input_key", "patient_key", "kind", "rows", "cols", "slices", "channels",
               "spacing_x", "spacing_y", "spacing_z", "int_mean", "int_std", "int_p1", "int_p50",
               "int_p99", "modality", "manufacturer", "ood_score", "ood_threshold", "ood_flagged",
               "score", "positive", "top_label", "probabilities", "decisions", "areas", "run_s",
               "device", "precision", "n_warnings", "app_version")
_INSERT_RUN = (f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})")


def db_path() -> Path:
    from ..userdirs import data_dir

    return data_dir() / DB_NAME


def now_utc() -> tuple[str, float]:
    t = time.time()
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds"), t


class PredictionLog:
    """One open database (thread-safe: one connection behind a lock; WAL for readers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # the user's own record: not readable by other accounts
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.conn = sqlite3.connect(str(self.path), timeout=5.0, check_same_thread=False,
                                        isolation_level=None)
            self._journal_wal()
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise LogError(f"prediction log {self.path} cannot be opened: {e}") from None
        except UnicodeDecodeError:  # a damaged header page: SQLite's own text is not UTF-8
            raise LogError(f"prediction log {self.path} cannot be opened: damaged (a text that is "
                           f"not UTF-8)") from None

    def _journal_wal(self, wait_s: float = 10.0) -> None:
        """PRAGMA journal_mode=WAL, retried while another process holds the new file's lock
        (switching the journal mode does not wait on SQLite's busy timeout: two processes
        opening a new log at once got 'database is locked')."""
        t0 = time.monotonic()
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() - t0 > wait_s:
                    raise
                time.sleep(0.02)

    def _migrate(self) -> None:
        v = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if v > SCHEMA_VERSION:
            raise LogError(f"prediction log {self.path} has schema version {v}, newer than this "
                           f"program's {SCHEMA_VERSION}: use the newer program (the file is left as it is)")
        while v < SCHEMA_VERSION:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                # read again under the write lock: another process opening the same new log may
                # have applied this step between the first read and the lock
                v = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
                if v < SCHEMA_VERSION:
                    for sql in MIGRATIONS[v]:
                        self.conn.execute(sql)
                    self.conn.execute(f"PRAGMA user_version={v + 1}")
                    v += 1
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ------------------------------------------------------------------ writes
    def add_run(self, row: dict) -> int:
        vals = tuple(row.get(c) for c in RUN_COLUMNS)
        with self.lock:
            cur = self.conn.execute(_INSERT_RUN, vals)
            return int(cur.lastrowid)

    def withhold_run(self, ref: dict) -> None:
        """The decision of run ``ref`` (``res.prediction_log_ref``) withheld after it was logged
        (a research override is applied after the run): ``positive`` NULL, never a positive."""
        with self.lock:
            self.conn.execute("UPDATE runs SET positive = NULL WHERE id = ? AND time_utc IS ? AND model_id IS ? "
                              "AND input_key IS ?", (ref.get("id"), *(ref.get(k) for k in RUN_REF_KEYS)))

    def add_runs(self, rows: list[dict]) -> None:
        """Many rows in one transaction (benchmarks, imports)."""
        with self.lock:
            self.conn.execute("BEGIN")
            self.conn.executemany(_INSERT_RUN, [tuple(r.get(c) for c in RUN_COLUMNS) for r in rows])
            self.conn.execute("COMMIT")

    def add_event(self, kind: str, model_id: str | None = None, version: str | None = None,
                  detail: dict | None = None) -> int:
        t, tu = now_utc()
        with self.lock:
            cur = self.conn.execute(
                "INSERT INTO events (time_utc, time_unix, kind, model_id, version, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (t, tu, kind, model_id, version, json.dumps(detail or {}, sort_keys=True)))
            return int(cur.lastrowid)

    @contextlib.contextmanager
    def writing(self):
        """The lock, and one LogError line for a write SQLite refuses (another program holds
        the write lock past the 5 s timeout, a read-only or damaged file): the GUI's feedback
        and correction slots show it instead of letting ``sqlite3`` errors escape."""
        with self.lock:
            try:
                yield self.conn
            except sqlite3.Error as e:
                text = (str(e).splitlines() or [type(e).__name__])[0][:120]
                why = (" (another program is writing to it; try again)" if "locked" in text or "busy" in text
                       else "")
                raise LogError(f"prediction log {self.path} could not be written: {text}{why}") from None

    # ------------------------------------------------------------------ reads
    @contextlib.contextmanager
    def _reading(self):
        """The lock, and one LogError line for a file damaged where a read meets it (SQLite
        finds a broken page only when a query reaches it; a damaged text is not UTF-8; a
        damaged JSON detail does not parse): the monitor and the export say so, no traceback."""
        with self.lock:
            try:
                yield
            except (sqlite3.DatabaseError, UnicodeDecodeError, ValueError) as e:
                text = (str(e).splitlines() or [type(e).__name__])[0]
                # sqlite3 names the column and quotes the undecodable bytes: the kind is enough
                utf8 = isinstance(e, UnicodeDecodeError) or "decode to UTF-8" in text
                why = "a text that is not UTF-8" if utf8 else text[:120]
                raise LogError(f"prediction log {self.path} is damaged ({why}); keep a copy of it "
                               f"and move it aside to start a new one") from None

    def query(self, sql: str, params=()) -> list[tuple]:
        with self._reading():
            return self.conn.execute(sql, params).fetchall()

    def run(self, run_id: int) -> dict | None:
        with self._reading():
            cur = self.conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),))
            r = cur.fetchone()
            names = [d[0] for d in cur.description]
        return dict(zip(names, r)) if r else None

    def events(self, model_id: str | None = None, kind: str | None = None) -> list[dict]:
        sql, p = "SELECT id, time_utc, kind, model_id, version, detail FROM events WHERE 1=1", []
        if model_id:
            sql += " AND model_id = ?"
            p.append(model_id)
        if kind:
            sql += " AND kind = ?"
            p.append(kind)
        rows = self.query(sql + " ORDER BY id", p)
        with self._reading():
            return [{"id": r[0], "time_utc": r[1], "kind": r[2], "model_id": r[3], "version": r[4],
                     "detail": json.loads(r[5] or "{}")} for r in rows]

    def export_csv(self, out, table: str = "runs", escape_controls: bool = False) -> int:
        """Write a table as CSV to a text stream; returns the number of rows.  A text cell a
        spreadsheet would take for a formula (``=``, ``+``, ``-``, ``@``, TAB, CR first: the
        manufacturer and modality come from DICOM headers, the feedback's reader and note from
        a person) gets a leading ``'`` (:func:`imaging_assist.safe_text.csv_cell`).
        ``escape_controls`` (the CSV on a terminal): control characters in the cells are shown
        escaped too (:func:`imaging_assist.safe_text.printable`), so no ESC sequence acts on it."""
        import csv

        from ..safe_text import csv_cell, printable

        if table not in ("runs", "feedback", "corrections", "events"):
            raise LogError(f"no table {table!r} in the prediction log")
        with self._reading():
            cur = self.conn.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - fixed names
            w = csv.writer(out)
            w.writerow([d[0] for d in cur.description])
            n = 0
            for r in cur:
                w.writerow([csv_cell(printable(c) if escape_controls and isinstance(c, str) else c) for c in r])
                n += 1
        return n


_open: dict[str, PredictionLog] = {}
_open_lock = threading.Lock()


def open_log(path: str | Path | None = None) -> PredictionLog:
    """The (cached) log at ``path`` or the user's default one."""
    p = Path(path) if path is not None else db_path()
    key = str(p.resolve()) if p.exists() else str(p.absolute())
    with _open_lock:
        lg = _open.get(key)
        if lg is None or not lg.path.exists():
            lg = PredictionLog(p)
            _open[key] = lg
        return lg


def close_all() -> None:
    with _open_lock:
        for lg in _open.values():
            with contextlib.suppress(Exception):
                lg.close()
        _open.clear()


# --------------------------------------------------------------------------- switches
_paused: contextvars.ContextVar[bool] = contextvars.ContextVar("prediction_log_paused", default=False)


@contextlib.contextmanager
def paused():
    """Runs inside this block are not logged (in this thread/context)."""
    tok = _paused.set(True)
    try:
        yield
    finally:
        _paused.reset(tok)


def enabled() -> bool:
    if _paused.get():
        return False
    return os.environ.get(ENV_SWITCH, "on").strip().lower() not in ("0", "off", "no", "false")


# --------------------------------------------------------------------------- one row
_SAMPLE = 1 << 16  # pixels sampled for the intensity summary (bounded cost on any volume)


def input_stats(array: np.ndarray) -> dict:
    """Intensity summary of a strided sample of ~65k values (mean, sd, 1/50/99th percentile).
    A fixed stride, not random: the same image always gives the same numbers."""
    a = np.asarray(array)
    flat = a.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    s = flat[::step].astype(np.float32, copy=False)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {"int_mean": None, "int_std": None, "int_p1": None, "int_p50": None, "int_p99": None}
    p1, p50, p99 = np.percentile(s, [1, 50, 99])
    return {"int_mean": float(s.mean()), "int_std": float(s.std()), "int_p1": float(p1),
            "int_p50": float(p50), "int_p99": float(p99)}


def _header(volume, keyword: str) -> str:
    for h in (getattr(volume, "headers", None) or [])[:1]:
        with contextlib.suppress(Exception):
            v = h.get(keyword)
            if v:
                return str(v).strip()
    return ""


def _pseudonyms(volume, res) -> tuple[str | None, str | None]:
    """Keyed pseudonyms of the input (series UID, else the file path) and of the patient
    (PatientID, else the input key: a plain image is its own patient)."""
    from ..privacy.sitekey import pseudonym  # the audit room's keyed HMAC (site key)

    uid = getattr(volume, "series_uid", "") or getattr(res, "series_uid", "")
    src = (getattr(volume, "source_paths", None) or [getattr(res, "source", "")])[0]
    if uid:
        key = pseudonym(uid, "uid")
    elif src:
        key = pseudonym(str(Path(src).resolve()), "file")
    else:
        key = None
    pid = _header(volume, "PatientID")
    pkey = pseudonym(pid, "patient-id") if pid else key
    return key, pkey


def _score_and_decision(res) -> tuple[float | None, int | None, str | None]:
    """One number per run for the output-drift plots: the probability of the (first) label
    the card has a threshold for, else the top probability; ``positive`` from its decision."""
    probs = getattr(res, "probabilities", None)
    if not isinstance(probs, dict) or not probs:
        return None, None, None
    decs = getattr(res, "decisions", None) or {}
    top = max(probs, key=probs.get)
    for lab, d in decs.items():
        if isinstance(d, dict) and lab in probs:
            # a decision withheld (OOD) has no "positive" -> None, never a silent negative
            pos = d.get("positive")
            return float(probs[lab]), (None if pos is None else int(bool(pos))), top
    return float(probs[top]), None, top


def _json(v) -> str | None:
    if v is None:
        return None
    return json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o),
                      separators=(",", ":"))


def row_from_result(model, volume, res, pseudonymise: bool = True) -> dict:
    """The ``runs`` row of one finished run (``pseudonymise=False``: no input keys, for the
    monitor's reference statistics, which need no site key)."""
    from .. import __version__

    card = model.card
    arr = volume.array
    shape = tuple(arr.shape)
    color = bool(getattr(volume, "is_color", False))
    spatial = shape[:-1] if color and len(shape) >= 3 else shape
    if len(spatial) == 2:
        spatial = (1,) + tuple(spatial)
    sp = getattr(res, "spacing", None)
    key, pkey = _pseudonyms(volume, res) if pseudonymise else (None, None)
    ood = getattr(res, "ood", None) or {}
    score, pos, top = _score_and_decision(res)
    areas = None
    if getattr(res, "task", "") == "segmentation" or hasattr(res, "voxel_counts"):
        areas = {k: v for k, v in (("volume_ml", getattr(res, "volume_ml", None)),
                                   ("area_mm2", getattr(res, "area_mm2", None)),
                                   ("area_px", getattr(res, "area_px", None)),
                                   ("voxel_counts", getattr(res, "voxel_counts", None))) if v}
    w = (getattr(card, "weights", None) or [None])[0]
    t, tu = now_utc()
    row = {"time_utc": t, "time_unix": tu, "model_id": card.id, "model_version": card.version,
           "weights_sha256": getattr(w, "sha256", None) or getattr(w, "md5", None),
           "task": card.task, "input_key": key, "patient_key": pkey,
           "kind": "image" if getattr(res, "is_plain_image", False) else "series",
           "slices": int(spatial[0]), "rows": int(spatial[1]), "cols": int(spatial[2]),
           "channels": int(shape[-1]) if color else 1,
           "spacing_x": sp[0] if sp else None, "spacing_y": sp[1] if sp else None,
           "spacing_z": sp[2] if sp and len(sp) > 2 else None,
           "modality": getattr(volume, "modality", "") or None,
           "manufacturer": _header(volume, "Manufacturer") or None,
           "ood_score": ood.get("score"), "ood_threshold": ood.get("threshold"),
           "ood_flagged": None if ood.get("score") is None and not ood.get("flagged") else int(bool(ood.get("flagged"))),
           "score": score, "positive": pos, "top_label": top,
           "probabilities": _json(getattr(res, "probabilities", None) if isinstance(getattr(res, "probabilities", None), dict) else None),
           "decisions": _json(getattr(res, "decisions", None)), "areas": _json(areas),
           "run_s": (getattr(res, "timings", None) or {}).get("total_s"),
           "device": getattr(res, "device", None), "precision": getattr(res, "precision", None),
           "n_warnings": len(getattr(res, "warnings", None) or []), "app_version": __version__}
    if score is None and areas and areas.get("voxel_counts"):
        # a segmenter's one number: the labelled fraction of the input (its output drift)
        n = max(1, int(spatial[0]) * int(spatial[1]) * int(spatial[2]))
        row["score"] = float(sum(areas["voxel_counts"].values())) / n
    row.update(input_stats(arr))
    return row


def record_run(model, volume, res, path: str | Path | None = None) -> int:
    """Log one run; sets ``res.prediction_log_id`` (the GUI links feedback to it) and returns it.
    ``res.prediction_log_ref`` names the row by more than its number (time, model, input key):
    a log moved aside and started again numbers its runs from 1, and feedback on a result made
    before must not land on another film's run (``monitoring.feedback``'s ``expect``)."""
    row = row_from_result(model, volume, res)
    rid = open_log(path).add_run(row)
    res.prediction_log_id = rid
    res.prediction_log_ref = {"id": rid, **{k: row.get(k) for k in RUN_REF_KEYS}}
    return rid


RUN_REF_KEYS = ("time_utc", "model_id", "input_key")


_warned = False


def warn_once(msg: str) -> None:
    """One warning per process when the log cannot record a run (the run goes on)."""
    global _warned
    if not _warned:
        _warned = True
        _log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def record_safely(model, volume, res) -> int | None:
    """The engine's hook: log the run unless switched off; never raises (warns once)."""
    if not enabled():
        return None
    try:
        return record_run(model, volume, res)
    except Exception as e:  # noqa: BLE001 - a logging failure must never break a run
        warn_once(f"the prediction log could not record this run ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''}); runs go on without it")
        return None


def withhold_logged(res) -> None:
    """The logged run of ``res`` gets its decision withheld (``positive`` NULL); never raises."""
    ref = getattr(res, "prediction_log_ref", None)
    if not enabled() or not isinstance(ref, dict):
        return
    try:
        open_log().withhold_run(ref)
    except Exception as e:  # noqa: BLE001 - a logging failure must never break a run
        warn_once(f"the prediction log could not record a withheld decision ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''})")


# public names for the slide hook (monitoring/slide_log.py): the same pseudonyms and JSON
pseudonyms_of = _pseudonyms
to_json = _json
