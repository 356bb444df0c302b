"""Remembered reading positions (no Qt): the slice or frame where the reader left a series,
keyed by SeriesInstanceUID, kept in ``userdirs.data_dir() / "positions.json"``.

Convention (docs/reading.md): a series seen before opens where the reader left it, in the same
session and after the study is reopened; a series never seen opens on its first image
(:func:`viewing.start_index`).  A position is used only when the series still has the same
number of images (another stack or a partial copy starts at the first image).  Only UIDs
and indices are stored: no names, no pixel data.  The file holds the most recent
``MAX_SERIES`` series; a malformed file is ignored (one warning line) and rewritten.
Two windows (processes) share the file: :meth:`PositionStore.flush` reads it again under its
lock and keeps, per series, the newer position of the two (the other window's are not lost).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from .userdirs import data_dir, locked, write_json_atomic

FILE_NAME = "positions.json"
MAX_SERIES = 2000
MAX_FILE_BYTES = 4 << 20
_UNUSABLE = (OSError, UnicodeDecodeError, ValueError, TypeError, OverflowError, RecursionError)


def series_uid(vol) -> str:
    """SeriesInstanceUID of a volume's first header ('' when unknown)."""
    for rec in (getattr(vol, "headers", None) or [])[:1]:
        get = getattr(rec, "get", None)
        if get is not None:
            return str(get("SeriesInstanceUID") or "").strip()
    return ""


class PositionStore:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else data_dir() / FILE_NAME
        self.warning = ""
        self._items: dict[str, dict] = {}
        self._forgotten: dict[str, float] = {}  # uid -> when forgotten here: the file's older entry stays out
        self._dirty = False
        self._load()

    def _load(self):
        try:
            self._items = self._read()
        except _UNUSABLE as e:
            self._items = {}
            self.warning = f"remembered positions file {self.path} is not usable ({str(e)[:120]}): not used"

    def _read(self) -> dict[str, dict]:
        """The file's positions ({} when there is none); raises one of _UNUSABLE when it is not usable."""
        out: dict[str, dict] = {}
        if not self.path.is_file():
            return out
        if self.path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError("too large")
        data = json.loads(self.path.read_text(encoding="utf-8"))
        items = data.get("series") if isinstance(data, dict) else None
        if not isinstance(items, dict):
            raise ValueError('no "series" object')
        for uid, v in items.items():
            if isinstance(uid, str) and isinstance(v, dict) and isinstance(v.get("index"), int) \
                    and isinstance(v.get("n"), int) and 0 <= v["index"] < v["n"]:
                t = float(v.get("t", 0) or 0)
                out[uid] = {"index": v["index"], "n": v["n"], "t": t if math.isfinite(t) else 0.0}
        return out

    def recall(self, vol) -> int | None:
        """The remembered slice / frame index of ``vol``'s series, or None (never seen, no UID,
        or the series now has another number of images)."""
        uid = series_uid(vol)
        v = self._items.get(uid) if uid else None
        if v is None or v["n"] != int(vol.n_slices):
            return None
        return int(v["index"])

    def remember(self, vol, index: int):
        """Note where the reader is in ``vol`` (in memory; :meth:`flush` writes it)."""
        uid = series_uid(vol)
        n = int(vol.n_slices)
        if not uid or not (0 <= int(index) < n):
            return
        old = self._items.get(uid)
        if old is not None and old["index"] == int(index) and old["n"] == n:
            return
        self._items[uid] = {"index": int(index), "n": n, "t": time.time()}
        self._dirty = True

    def forget(self, uid: str):
        if self._items.pop(uid, None) is not None:
            self._forgotten[uid] = time.time()
            self._dirty = True

    def flush(self) -> bool:
        """Write the positions when something changed (atomically); False when it could not.
        Under the file's lock the file is read again: another window's positions stay, and of
        two positions of one series the newer (``t``) is kept; a file not usable is written over."""
        if not self._dirty:
            return True
        try:
            with locked(self.path):
                try:
                    theirs = self._read()
                except _UNUSABLE:
                    theirs = {}  # said at load (or it broke since): rewritten with this window's
                merged = dict(self._items)
                for uid, v in theirs.items():
                    mine = merged.get(uid)
                    newer = v["t"] > (mine["t"] if mine is not None else self._forgotten.get(uid, -1.0))
                    if newer:
                        merged[uid] = v
                items = dict(sorted(merged.items(), key=lambda kv: kv[1]["t"], reverse=True)[:MAX_SERIES])
                write_json_atomic(self.path, {"version": 1, "series": items})
        except OSError as e:
            self.warning = f"could not save reading positions to {self.path}: {e.strerror or e}"
            return False
        self._items = items
        self._forgotten.clear()
        self._dirty = False
        return True


# The store the viewer uses (None: positions are not remembered, e.g. in the engine's CLI).
_active: PositionStore | None = None


def activate(store: PositionStore | None):
    global _active
    _active = store


def active() -> PositionStore | None:
    return _active
