"""Measurements and annotations of a series: undo/redo history and the per-study store.

No Qt here.  :class:`AnnotationSet` is the ordered list of
:class:`~imaging_assist.measure.Measurement` items of one series with a command history
(add, delete, edit/move, clear), so every change can be undone and redone the same way in
the viewer and in tests.  It is engine-side rather than a ``QUndoStack`` so that the model,
its history and the store are tested without a display and the GUI only forwards keys.

:class:`AnnotationStore` keeps them in the user data folder, one JSON file per study
(keyed by StudyInstanceUID, one section per series and stack), written atomically
(temporary file + ``os.replace``) with a schema version.  A malformed file is one warning:
it is kept aside (``*.malformed-<time>.json``) and never overwritten; a file written by a
newer version is left untouched and not written over.

Two windows (two app instances, the viewer and a script) may save the same study: a save takes
the file's lock (:class:`~imaging_assist.userdirs.locked`), reads the file again and merges.  Each
item has a stable ``uid`` (``Measurement.id`` is a per-process counter, so two processes reuse the
same numbers); a store remembers the uids it loaded and saved, so a save replaces this window's
items, removes only those this window deleted, and keeps what another window added, changed or
deleted (one warning says so: it shows when the series is opened again).  So one store per window.

Each item names the image it was drawn on (SOP Instance UID and frame, slice position; for a
reformatted plane the series' shape and a digest of its images), so that it comes back on
that image when the series has gained or lost slices since, and is left in the file with a
warning, never moved to whatever image now has its slice number, when that image is gone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .measure import Measurement
from .userdirs import locked, write_json_atomic

SCHEMA = "imaging-assist-annotations"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024  # a bigger file is not read (no runaway allocation)
MAX_HISTORY = 500


# ---------------------------------------------------------------------------- history
@dataclass
class _Command:
    kind: str  # "add", "remove", "edit", "clear"
    label: str
    items: list = field(default_factory=list)       # [(position, Measurement)]
    before: dict | None = None
    after: dict | None = None


class AnnotationSet:
    """The items of one series and their undo/redo history.

    ``items`` may be a list owned by someone else (the viewer document): every change is
    made in place on it.  ``on_change(measurement_or_None)`` is called after each change,
    undo and redo with the item it touched (None: several)."""

    def __init__(self, items: list | None = None, on_change: Callable | None = None):
        self.items: list[Measurement] = items if items is not None else []
        self.on_change = on_change
        self._undo: list[_Command] = []
        self._redo: list[_Command] = []

    # -- changes (each one undoable) --------------------------------------------------
    def add(self, m: Measurement) -> Measurement:
        self.items.append(m)
        self._push(_Command("add", f"add {m.kind}", [(len(self.items) - 1, m)]))
        self._changed(m)
        return m

    def remove(self, m: Measurement) -> bool:
        if m not in self.items:
            return False
        pos = self.items.index(m)
        del self.items[pos]
        self._push(_Command("remove", f"delete {m.kind}", [(pos, m)]))
        self._changed(None)
        return True

    def clear(self) -> None:
        if not self.items:
            return
        cmd = _Command("clear", "clear all", list(enumerate(self.items)))
        del self.items[:]
        self._push(cmd)
        self._changed(None)

    def edit(self, m: Measurement, before: dict, label: str = "") -> bool:
        """Record an edit already made on ``m`` (points moved, text changed): ``before`` is
        ``m.state()`` taken before it.  Nothing is recorded when nothing changed."""
        after = m.state()
        if after == before or m not in self.items:
            return False
        self._push(_Command("edit", label or f"edit {m.kind}", [(self.items.index(m), m)], before, after))
        self._changed(m)
        return True

    def set_text(self, m: Measurement, text: str) -> bool:
        before = m.state()
        m.text = str(text)
        return self.edit(m, before, f"edit {m.kind} text")

    # -- history ----------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo_label(self) -> str:
        return self._undo[-1].label if self._undo else ""

    def redo_label(self) -> str:
        return self._redo[-1].label if self._redo else ""

    def undo(self) -> Measurement | None:
        if not self._undo:
            return None
        cmd = self._undo.pop()
        touched = self._apply(cmd, reverse=True)
        self._redo.append(cmd)
        self._changed(touched)
        return touched

    def redo(self) -> Measurement | None:
        if not self._redo:
            return None
        cmd = self._redo.pop()
        touched = self._apply(cmd, reverse=False)
        self._undo.append(cmd)
        self._changed(touched)
        return touched

    def reset(self, items: list | None = None) -> None:
        """Forget the history (another series); ``items`` becomes the list worked on."""
        if items is not None:
            self.items = items
        self._undo.clear()
        self._redo.clear()

    # -- internals --------------------------------------------------------------------
    def _push(self, cmd: _Command) -> None:
        self._undo.append(cmd)
        del self._undo[:-MAX_HISTORY]
        self._redo.clear()

    def _changed(self, m) -> None:
        if self.on_change is not None:
            self.on_change(m)

    def _apply(self, cmd: _Command, reverse: bool) -> Measurement | None:
        insert = (cmd.kind == "add") == (not reverse) if cmd.kind in ("add", "remove") else None
        if cmd.kind == "clear":
            insert = reverse
        if cmd.kind == "edit":
            (_, m), = cmd.items
            m.set_state(cmd.before if reverse else cmd.after)
            return m
        if insert:
            for pos, m in sorted(cmd.items, key=lambda t: t[0]):
                self.items.insert(min(pos, len(self.items)), m)
        else:
            for _, m in cmd.items:
                if m in self.items:
                    self.items.remove(m)
        return cmd.items[0][1] if len(cmd.items) == 1 and insert else None


# ---------------------------------------------------------------------------- store
def series_key(series_uid: str, stack: str = "") -> str:
    return f"{series_uid}|{stack}" if stack else str(series_uid)


class AnnotationStore:
    """One JSON file per study under ``root`` (default: ``data_dir()/annotations``).

    Keep one store per window: it remembers which items it loaded and saved (their uids), so
    that a save removes only what this window deleted (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            from .userdirs import data_dir
            root = Path(data_dir()) / "annotations"
        self.root = Path(root)
        self._readonly: dict[str, str] = {}  # study uid -> why it is not written
        # id(measurement) -> its stable uid in the file (not Measurement.id: a copy or an item
        # made with an explicit id may share it); dropped when the measurement goes
        self._uids: dict[int, str] = {}
        # (study, series key) -> {uid: (the item as this window has it, as the file had it)} at
        # its last load or save: what this window knows, so what it changed or deleted since
        self._base: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
        self._told: set[tuple[str, str, str]] = set()  # other windows' items already warned about

    def _uid(self, m: Measurement, uid: str | None = None) -> str:
        """The stable uid of ``m`` (``uid`` when it comes from the file; a new one if it is new)."""
        have = self._uids.get(id(m))
        if have is not None and uid is None:
            return have
        if have is None:  # forgotten when the measurement is (before its id() can be reused)
            weakref.finalize(m, self._uids.pop, id(m), None)
        self._uids[id(m)] = uid or uuid.uuid4().hex
        return self._uids[id(m)]

    def path_for(self, study_uid: str) -> Path:
        # a hash, not the UID itself: a file name from a header could hold "../"
        h = hashlib.sha256(str(study_uid).encode("utf-8")).hexdigest()[:32]
        return self.root / f"study-{h}.json"

    def _read(self, study_uid: str) -> tuple[dict, list[str]]:
        """The study's document and warnings; a malformed file is moved aside (kept)."""
        path = self.path_for(study_uid)
        empty = {"schema": SCHEMA, "version": VERSION, "study_instance_uid": str(study_uid), "series": {}}
        if not path.exists():
            return empty, []
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES // 2**20} MB")
            doc = json.loads(path.read_text("utf-8"))
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise ValueError("not an annotations file")
            version = doc.get("version")
            if not isinstance(version, int):
                raise ValueError("no schema version")
            if version > VERSION:
                why = (f"annotations file {path} was written by a newer version (schema {version} > {VERSION}); "
                       "not loaded and not overwritten")
                self._readonly[str(study_uid)] = why
                return empty, [why]
            if doc.get("study_instance_uid") != str(study_uid) or not isinstance(doc.get("series"), dict):
                raise ValueError("study UID or series table missing")
            return doc, []
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
            kept = path.with_name(f"{path.stem}.malformed-{time.strftime('%Y%m%d-%H%M%S')}.json")
            try:
                os.replace(path, kept)
                where = f"kept as {kept.name}"
            except OSError as e2:
                self._readonly[str(study_uid)] = f"malformed annotations file {path} could not be moved aside ({e2})"
                where = "left in place and not overwritten"
            return empty, [f"annotations file {path.name} is malformed ({str(e).splitlines()[0][:120]}); "
                           f"{where}, starting with none"]

    def load(self, study_uid: str, series_uid: str, stack: str = "",
             shape: tuple | None = None, volume=None) -> tuple[list[Measurement], list[str]]:
        """The saved items of one series (numbers not yet computed) and warnings.

        With ``volume`` each item is put back on the image it was drawn on (found by its SOP
        Instance UID and frame: its slice number follows when slices were added or removed);
        with only ``shape`` an item is shown when the series still has the shape it had then.
        Items whose image is gone, drawn when the series had other images, outside the series
        or malformed are left in the file and named in a warning."""
        if not study_uid or not series_uid:
            return [], []
        doc, warnings = self._read(study_uid)
        sec = doc["series"].get(series_key(series_uid, stack))
        base = self._base[(str(study_uid), series_key(series_uid, stack))] = {}  # what this window shows now
        if not isinstance(sec, dict):
            return [], warnings
        place = _Placer(sec, shape, volume)
        out, left = [], {"bad": 0, "gone": [], "changed": 0}
        items = sec.get("items") or []
        seen: dict = {}
        for d in items if isinstance(items, list) else [items]:  # not a list: one malformed item
            uid = _uid_of(d, seen)
            m, why = place(d)
            if m is None:
                if why == "gone":
                    left["gone"].append(d)
                else:
                    left[why] += 1
                continue
            out.append(m)
            if uid is not None:
                base[self._uid(m, uid)] = (_msig(m), _dsig(d))
        if left["gone"]:
            where = "; ".join(_where(d) for d in left["gone"][:3]) + ("; …" if len(left["gone"]) > 3 else "")
            warnings.append(f"{len(left['gone'])} saved annotation(s) of this series are on images it no longer "
                            f"holds ({where}); not shown, they stay in the file")
        if left["changed"]:
            warnings.append(f"{left['changed']} saved annotation(s) of this series were drawn when it had other "
                            f"images (then {_shape_text(place.saved_shape)}, now {_shape_text(place.shape)}); "
                            "not shown, they stay in the file")
        if left["bad"]:
            warnings.append(f"{left['bad']} saved annotation(s) of this series could not be shown "
                            "(malformed or outside the images); they stay in the file")
        return out, warnings

    def save(self, study_uid: str, series_uid: str, items: list[Measurement], stack: str = "",
             extra: dict | None = None, volume=None) -> tuple[Path | None, list[str]]:
        """Write the items of one series (the other series of the study are kept).

        ``items`` are what the series shows in this window.  Under the file's lock the file is
        read again and merged: items this window never had (added by another window, or saved
        ones it could not show: their image is gone, malformed...) stay; an item this window did
        not change since it loaded it keeps the file's version (another window may have moved or
        deleted it); only items this window loaded or saved and no longer has are removed.  What
        another window did is named in one warning.  With ``volume`` each item records the image
        it is drawn on."""
        if not study_uid or not series_uid:
            return None, ["annotations not saved: the series has no Study/Series Instance UID"]
        path = self.path_for(study_uid)
        key = series_key(series_uid, stack)
        with locked(path):  # no other window writes between this read and this write
            doc, warnings = self._read(study_uid)
            if str(study_uid) in self._readonly:
                return None, warnings + [self._readonly[str(study_uid)]]
            old = doc["series"].get(key)
            old = old if isinstance(old, dict) else {}
            place = _Placer(old, (extra or {}).get("shape"), volume)
            base = self._base.get((str(study_uid), key), {})
            ours = {self._uid(m): m for m in items}
            theirs: dict[str, dict] = {}  # changed in another window, not in this one: the file's version
            kept, news, present = [], 0, set()
            olds = old.get("items") or []
            seen: dict = {}
            for d in olds if isinstance(olds, list) else [olds]:
                uid = _uid_of(d, seen)
                present.add(uid)
                if isinstance(d, dict):
                    # made explicit (an older file had none), and the section's shape is rewritten
                    # below: an old item keeps the one it was drawn with
                    d = {**d, "uid": uid}
                    if "shape" not in d and old.get("shape") is not None:
                        d["shape"] = old["shape"]
                if uid in ours:
                    b = base.get(uid)
                    if b is not None and b[0] == _msig(ours[uid]) and b[1] != _dsig(d):
                        theirs[uid] = d  # another window changed it, this one did not: theirs stays
                        if (str(study_uid), key, uid + _dsig(d)) not in self._told:
                            self._told.add((str(study_uid), key, uid + _dsig(d)))
                            news += 1
                    continue
                if uid in base:
                    continue  # this window deleted it
                kept.append(d)  # another window's, or one this window could not show
                if uid is not None and place(d)[0] is not None and (str(study_uid), key, uid) not in self._told:
                    self._told.add((str(study_uid), key, uid))
                    news += 1
            # deleted in another window and not changed in this one: stays deleted (unless the file
            # could not be read: then this window's items are all that is left)
            gone = {u for u, m in ours.items() if u not in present and not warnings
                    and u in base and base[u][0] == _msig(m)}
            news += len({u for u in gone if (str(study_uid), key, u + "-gone") not in self._told})
            self._told.update((str(study_uid), key, u + "-gone") for u in gone)
            written = {u: theirs.get(u) or {"uid": u, **_item(m, volume, place.refs)}
                       for u, m in ours.items() if u not in gone}
            if written or kept:
                sec = {"series_instance_uid": str(series_uid), "stack": stack,
                       "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "items": list(written.values()) + kept}
                sec.update(extra or {})
                doc["series"][key] = sec
            else:
                doc["series"].pop(key, None)
            write_json_atomic(path, doc, fsync=True, indent=1, allow_nan=False, default=_jsonable)
        known = {u: (_msig(ours[u]), _dsig(d)) for u, d in written.items()}
        for u in theirs.keys() | gone:
            # kept as the other window left it (changed or deleted there): what this window knew of
            # it stays, so it stays theirs until this window changes it
            known[u] = base[u]
        self._base[(str(study_uid), key)] = known
        if news:
            warnings.append(f"{news} annotation(s) of this series were added, changed or deleted in another window "
                            "since this one read them; the file keeps that: open the series again to see it")
        return path, warnings


def _uid_of(d, seen: dict) -> str | None:
    """An item's stable uid: its own, or for an item saved before items had one, one made from
    its content (and how many identical items came before it), the same in every window."""
    if not isinstance(d, dict):
        return None
    uid = d.get("uid")
    if isinstance(uid, str) and 0 < len(uid) <= 100:
        return uid
    try:
        h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode("utf-8", "replace")).hexdigest()[:32]
    except (ValueError, TypeError, RecursionError):
        return None
    seen[h] = seen.get(h, -1) + 1
    return f"{h}-{seen[h]}"


def _msig(m: Measurement) -> str:
    """What an edit in the window changes (to tell whether this window changed an item)."""
    return repr((m.kind, m.axis, m.index, [tuple(p) for p in m.points], m.text))


def _dsig(d) -> str:
    """The same of a stored item (to tell whether another window changed it)."""
    if not isinstance(d, dict):
        return repr(d)
    return json.dumps([d.get(k) for k in ("kind", "axis", "index", "points", "text", "sop_instance_uid",
                                          "frame", "images")], default=str)


def _item(m: Measurement, volume=None, refs: list | None = None) -> dict:
    """What is stored: geometry, note and the image drawn on; the numbers are a record,
    recomputed on load."""
    d = {"id": m.id, "kind": m.kind, "axis": m.axis, "index": m.index,
         "points": [[u, v] for u, v in m.points]}  # full floats: reloaded exactly
    if volume is not None:
        d["shape"] = [int(n) for n in volume.array.shape[:3]]
        if m.axis == 0:
            if refs is not None and 0 <= m.index < len(refs):
                d["sop_instance_uid"], d["frame"] = refs[m.index]
            pos = getattr(volume, "slice_positions", None)
            if pos is not None and 0 <= m.index < len(pos) and math.isfinite(float(pos[m.index])):
                d["position"] = float(pos[m.index])
        elif refs is not None:  # a reformatted plane is made of every image: which ones, in order
            d["images"] = _digest(refs)
    if m.text:
        d["text"] = m.text
    r = m.result or {}
    vals = {k: r[k] for k in ("length", "angle", "mean", "sd", "min", "max", "n", "area_mm2", "units",
                              "length_unit", "spacing_source") if k in r}
    if vals:
        d["values"] = {k: (v if not isinstance(v, float) or v == v else None) for k, v in vals.items()}
    return d


def _jsonable(o):
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def image_refs(volume) -> list[tuple[str, int]] | None:
    """(SOP Instance UID, 1-based frame) of each slice of ``volume``, or None when a slice has
    none or two slices have the same (the images cannot then be told apart)."""
    n = int(volume.array.shape[0])
    heads = list(getattr(volume, "headers", None) or [])
    frames = list(getattr(volume, "frames", None) or [])
    if len(heads) != n:
        return None
    out = []
    for k, h in enumerate(heads):
        uid = h.get("SOPInstanceUID") if hasattr(h, "get") else None
        if not uid:
            return None
        out.append((str(uid), int(frames[k]) + 1 if len(frames) == n else 1))
    return out if len(set(out)) == n else None


def _digest(refs: list) -> str:
    return hashlib.sha256("\n".join(f"{u}/{f}" for u, f in refs).encode("utf-8")).hexdigest()[:32]


class _Placer:
    """Puts saved items back on the series as it is now: ``placer(d)`` is (Measurement, None)
    or (None, why): "gone" (its image is not in the series), "changed" (drawn when the series
    had other images, no image reference to find it by), "bad" (malformed, outside)."""

    def __init__(self, sec: dict, shape=None, volume=None):
        if shape is None and volume is not None:
            shape = tuple(volume.array.shape[:3])
        self.shape = tuple(int(n) for n in shape[:3]) if shape is not None else None
        self.refs = image_refs(volume) if volume is not None else None
        self.where = {r: k for k, r in enumerate(self.refs or [])}
        self.sec_shape = sec.get("shape")
        self.saved_shape = None  # the last differing shape seen (for the warning)

    def __call__(self, d):
        try:
            m = Measurement.from_dict(d)
            uid = d.get("sop_instance_uid")
            if m.axis == 0 and uid and self.refs is not None:
                k = self.where.get((str(uid), int(d.get("frame") or 1)))
                if k is None:
                    return None, "gone"
                m.index = k  # the same image, wherever it is now
            elif m.axis != 0 and d.get("images") and self.refs is not None:
                if d["images"] != _digest(self.refs):
                    self.saved_shape = d.get("shape") or self.sec_shape
                    return None, "changed"
            else:
                # no image reference (an older file, or no volume to look in): the slice number
                # holds only while the series has the shape it had when the item was saved
                saved = d.get("shape") or self.sec_shape
                if saved is not None and self.shape is not None and \
                        tuple(int(n) for n in saved[:3]) != self.shape:
                    self.saved_shape = saved
                    return None, "changed"
            if self.shape is not None and not _fits(m, self.shape):
                raise ValueError("outside the series")
        except (KeyError, ValueError, TypeError, IndexError, OverflowError, AttributeError):
            return None, "bad"  # OverflowError: int(inf); AttributeError: an item that is not a dict
        return m, None


def _where(d: dict) -> str:
    pos = d.get("position")
    at = f", slice position {pos:g} mm" if isinstance(pos, (int, float)) else ""
    return f"{d.get('kind', '?')} on image {int(d.get('index', 0)) + 1}{at}"


def _shape_text(shape) -> str:
    try:
        return "×".join(str(int(n)) for n in shape[:3])
    except (TypeError, ValueError):
        return "?"


def _fits(m: Measurement, shape) -> bool:
    """Is the item's slice in the series and are its points near the image?  ``shape`` is
    the volume's (k, j, i); the plane of axis a shows the other two axes."""
    if len(shape) < 3 or not (0 <= m.index < int(shape[m.axis])):
        return False
    dims = [int(n) for a, n in enumerate(shape[:3]) if a != m.axis]
    lim = max(dims) * 2 + 10  # a point may sit a little outside (a label); not far away
    return all(-lim <= c <= lim for p in m.points for c in p)
