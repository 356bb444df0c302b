"""Where retrieved instances land: atomic writes, resume, failure list, progress and cancel.

Layout: ``OUT/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.  UIDs come from the
network, so each is checked (digits and dots, at most 64 characters) before it becomes part of a
path: a malformed or hostile UID is a failure for that instance, never a path outside ``OUT``.
Each file is written under a temporary name in its final folder and renamed when complete
(``os.replace`` is atomic on one file system), so an interrupted transfer, a full disk or Ctrl-C
leaves no half file; the next run skips what is already there and fetches the rest.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PARTIAL = ".partial"


def valid_uid(uid) -> bool:
    return isinstance(uid, str) and len(uid) <= 64 and bool(_UID_RE.match(uid))


@dataclass
class Failure:
    sop_instance_uid: str
    reason: str
    #: the series the instance was listed in ("" for an instance that was not asked for)
    series_instance_uid: str = ""

    def to_dict(self) -> dict:
        return {"sop_instance_uid": self.sop_instance_uid, "reason": self.reason,
                "series_instance_uid": self.series_instance_uid}


@dataclass
class TransferResult:
    out_dir: str
    study_uid: str
    method: str
    expected: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    first_instance_s: float | None = None
    bytes: int = 0

    @property
    def study_dir(self) -> str:
        return os.path.join(self.out_dir, self.study_uid)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "study_dir": self.study_dir, "study_uid": self.study_uid,
                "method": self.method, "expected": self.expected, "written": self.written,
                "skipped": self.skipped, "failures": [f.to_dict() for f in self.failures],
                "notes": self.notes, "cancelled": self.cancelled,
                "seconds": round(self.seconds, 3), "first_instance_s": self.first_instance_s,
                "bytes": self.bytes}


class Cancelled(Exception):
    pass


class InstanceSink:
    """Writes instances atomically under ``out_dir`` and keeps count.

    ``progress(done, total, series_uid)`` is called after every instance (done counts written,
    skipped and failed); ``on_instance(path, series_uid)`` after each file is in place (the GUI
    shows the first image before the series is complete).  Thread-safe: pynetdicom calls
    :meth:`write` from its association thread.
    """

    def __init__(self, out_dir: str | os.PathLike, study_uid: str, method: str,
                 progress: Callable[[int, int, str], None] | None = None,
                 on_instance: Callable[[str, str], None] | None = None,
                 cancel: threading.Event | None = None):
        if not valid_uid(study_uid):
            from .nodes import PacsError
            raise PacsError(f"invalid Study Instance UID {study_uid!r}")
        self.out_dir = Path(out_dir)
        self.result = TransferResult(str(self.out_dir), study_uid, method)
        self.progress = progress
        self.on_instance = on_instance
        self.cancel = cancel or threading.Event()
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._done = 0
        self._series_done: dict[str, int] = {}
        self.series_total: dict[str, int] = {}
        self._series_failed: dict[str, int] = {}

    # ------------------------------------------------------------------ planning
    def path_for(self, series_uid: str, sop_uid: str) -> Path:
        return self.out_dir / self.result.study_uid / series_uid / f"{sop_uid}.dcm"

    def present(self, series_uid: str, sop_uid: str) -> bool:
        """A file at the instance's place counts as present (not fetched again) only when its
        header reads as DICOM and names this SOP Instance UID: a file cut off in its header, a
        file of another instance or garbage is fetched again (and replaced).  Our own writes
        are atomic, so a damaged file there was put there by something else."""
        p = self.path_for(series_uid, sop_uid)
        try:
            if not p.is_file() or p.stat().st_size <= 132:
                return False
            from pydicom import dcmread
            ds = dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            return str(ds.get("SOPInstanceUID", "")) == sop_uid
        except Exception:  # noqa: BLE001 - unreadable: not present, fetched again
            return False

    def plan(self, instances: list[tuple[str, str]]) -> dict[str, list[str]]:
        """``instances``: (series UID, SOP instance UID) pairs listed by the node.  Returns
        the missing SOP instance UIDs per series; counts the present ones as skipped."""
        missing: dict[str, list[str]] = {}
        for series_uid, sop_uid in instances:
            if not (valid_uid(series_uid) and valid_uid(sop_uid)):
                self.result.failures.append(Failure(str(sop_uid), "malformed UID in the node's answer",
                                                   str(series_uid)))
                continue
            self.series_total[series_uid] = self.series_total.get(series_uid, 0) + 1
            self.result.expected += 1
            if self.present(series_uid, sop_uid):
                self.result.skipped += 1
                self._series_done[series_uid] = self._series_done.get(series_uid, 0) + 1
                self._done += 1
            else:
                missing.setdefault(series_uid, []).append(sop_uid)
        self._clean_partials()
        return missing

    def _clean_partials(self) -> None:
        """Our own temporary files left by an earlier run that was killed (kill -9, power)."""
        study = self.out_dir / self.result.study_uid
        if study.is_dir():
            for p in study.glob(f"*/.*{PARTIAL}"):
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ writing
    def write(self, series_uid: str, sop_uid: str, chunks) -> bool:
        """Write ``chunks`` (bytes or an iterable of bytes: a complete DICOM Part 10 file) as
        one file.  Returns False (and records why) when it could not be written."""
        if not (valid_uid(series_uid) and valid_uid(sop_uid)):
            self.fail(str(sop_uid), "malformed UID in the received instance", str(series_uid))
            return False
        final = self.path_for(series_uid, sop_uid)
        tmp = final.with_name(f".{sop_uid}.{os.getpid()}.{threading.get_ident()}{PARTIAL}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            n = 0
            # O_EXCL|O_NOFOLLOW: never write through a link someone placed in the folder
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                for c in ([chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks):
                    f.write(c)
                    n += len(c)
            os.replace(tmp, final)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if e.errno == errno.ENOSPC:
                reason = f"disk full writing {final.parent} (nothing half-written kept)"
            else:
                reason = f"cannot write {final}: {e.strerror or e}"
            self.fail(sop_uid, reason, series_uid)
            return False
        with self._lock:
            self.result.written += 1
            self.result.bytes += n
            if self.result.first_instance_s is None:
                self.result.first_instance_s = round(time.perf_counter() - self._t0, 4)
        self._step(series_uid)
        if self.on_instance:
            self.on_instance(str(final), series_uid)
        return True

    def fail(self, sop_uid: str, reason: str, series_uid: str = "") -> None:
        with self._lock:
            self.result.failures.append(Failure(sop_uid, reason, series_uid))
            self._series_failed[series_uid] = self._series_failed.get(series_uid, 0) + 1
        self._step(series_uid)

    def _step(self, series_uid: str) -> None:
        with self._lock:
            self._done += 1
            self._series_done[series_uid] = self._series_done.get(series_uid, 0) + 1
            done, total = self._done, self.result.expected
        if self.progress:
            self.progress(done, max(total, done), series_uid)

    def series_progress(self, series_uid: str) -> tuple[int, int, int]:
        """(instances ended: written, skipped or failed; instances listed; failed) of a series."""
        return (self._series_done.get(series_uid, 0), self.series_total.get(series_uid, 0),
                self._series_failed.get(series_uid, 0))

    def finish(self) -> TransferResult:
        self._clean_partials()
        self.result.seconds = time.perf_counter() - self._t0
        self.result.cancelled = self.cancel.is_set()
        return self.result
