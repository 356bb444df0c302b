"""Send files or folders (images and our results: SEG, SR, Parametric Map, Encapsulated PDF) by
C-STORE or STOW-RS, then query the node back: an instance counts as sent only when the node
lists it afterwards (a server that answers "success" and stores nothing is caught)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .nodes import Node, PacsError, Settings, load_settings
from .transfer import valid_uid


@dataclass
class Item:
    path: str
    sop_class: str
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    size: int


@dataclass
class SendResult:
    node: str
    sent: int = 0              # the node said success
    confirmed: int = 0         # ... and lists the instance afterwards
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # not DICOM / unreadable
    cancelled: bool = False
    seconds: float = 0.0
    warnings: list[tuple[str, str]] = field(default_factory=list)  # stored, with a warning
    unconfirmed: int = 0       # the node said success but could not be asked afterwards
    readback_error: str = ""   # why not (one line)

    def to_dict(self) -> dict:
        return {"node": self.node, "sent": self.sent, "confirmed": self.confirmed,
                "unconfirmed": self.unconfirmed, "readback_error": self.readback_error,
                "failures": [{"path": p, "reason": r} for p, r in self.failures],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "warnings": [{"path": p, "reason": r} for p, r in self.warnings],
                "cancelled": self.cancelled, "seconds": round(self.seconds, 3)}


def collect(paths: list[str]) -> tuple[list[Item], list[tuple[str, str]]]:
    """DICOM Part 10 files below ``paths`` (headers only); the rest as (path, reason)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from ..dicom.header import ensure_pydicom
    ensure_pydicom()
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
        elif os.path.isfile(p):
            files.append(p)
        else:
            skipped.append((p, "not found"))
    items: list[Item] = []
    seen: set[str] = set()
    for f in files:
        try:
            ds = dcmread(f, stop_before_pixels=True, specific_tags=[
                "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
            meta = ds.file_meta
            ts = str(meta.TransferSyntaxUID)
            cls = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
            it = Item(f, cls, str(ds.get("SOPInstanceUID", "")), str(ds.get("StudyInstanceUID", "")),
                      str(ds.get("SeriesInstanceUID", "")), ts, os.path.getsize(f))
        except (InvalidDicomError, AttributeError):
            skipped.append((f, "not a DICOM Part 10 file"))
            continue
        except Exception as e:  # noqa: BLE001 - one bad file, the rest goes on
            skipped.append((f, f"unreadable ({type(e).__name__})"))
            continue
        if not all(valid_uid(u) for u in (it.sop_class, it.sop_uid, it.study_uid, it.series_uid, ts)):
            skipped.append((f, "missing or invalid UIDs (SOP class/instance, study, series)"))
            continue
        if it.sop_uid in seen:
            skipped.append((f, "duplicate SOP Instance UID (sent once)"))
            continue
        if os.path.basename(f) == "DICOMDIR" or it.sop_class == "1.2.840.10008.1.3.10":
            skipped.append((f, "DICOMDIR (media directory, not an instance)"))
            continue
        seen.add(it.sop_uid)
        items.append(it)
    return items, skipped


def send(node: Node, paths: list[str], settings: Settings | None = None,
         progress: Callable[[int, int], None] | None = None,
         cancel: threading.Event | None = None) -> SendResult:
    settings = settings or load_settings()
    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    items, skipped = collect(paths)
    res = SendResult(node.label(), skipped=skipped)
    if not items:
        raise PacsError("nothing to send: no DICOM files in " + ", ".join(paths))
    ok: list[Item] = []
    done = [0]

    def on_result(it: Item, err: str | None, warning: str | None = None):
        done[0] += 1
        if err:
            res.failures.append((it.path, err))
        else:
            ok.append(it)
            if warning:
                res.warnings.append((it.path, warning))
        if progress:
            progress(done[0], len(items))

    if node.is_dimse:
        from . import dimse
        dimse.store(node, settings, items, on_result, cancel)
    else:
        from . import dicomweb
        dicomweb.store(node, items, on_result, cancel)
    res.sent = len(ok)
    res.cancelled = cancel.is_set()
    # Read-back: what the node lists now, study by study.
    from .api import list_instances
    by_study: dict[str, list[Item]] = {}
    for it in ok:
        by_study.setdefault(it.study_uid, []).append(it)
    for study, group in by_study.items():
        series = sorted({it.series_uid for it in group})
        try:
            listed = {sop for _s, sop, _c in list_instances(node, study, series, settings)}
        except PacsError as e:
            # A store-only node (no C-FIND / QIDO for us): never counted as confirmed.
            res.unconfirmed += len(group)
            res.readback_error = str(e)
            continue
        for it in group:
            if it.sop_uid in listed:
                res.confirmed += 1
            else:
                res.failures.append((it.path, "the node answered success but does not list the "
                                              "instance afterwards (not stored)"))
    res.seconds = time.perf_counter() - t0
    from ..privacy.audit import record_transfer
    # the audit trail: patient data left this machine (never raises); study UIDs pseudonymised
    record_transfer("send", res, study_uids=sorted({it.study_uid for it in items}))
    return res
