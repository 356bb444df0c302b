"""Send files or folders (images and our results: SEG, SR, Parametric Map, Encapsulated PDF) by
C-STORE or STOW-RS, then query the node back: an instance counts as sent only when the node
lists it afterwards (a server that answers "success" and stores nothing is caught)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
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
    # A DICOM data set without File Meta header (no preamble, no "DICM"; `analyze` reads it):
    # the loader's header record (dicom.header.read_record), whose transfer syntax is inferred
    # from the data set's encoding.  send() writes a Part 10 copy with the meta built from the
    # data set (_part10_copy) and sends that.  None for a Part 10 file, sent as it is.
    record: object = field(default=None, repr=False)


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
    """DICOM Part 10 files below ``paths`` (headers only), and DICOM data sets without File
    Meta header that the loader reads (``Item.record`` set); the rest as (path, reason)."""
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
            # no File Meta header (or no transfer syntax in it): read the way the loader does
            it = _bare_item(f)
            if isinstance(it, str):
                skipped.append((f, it))
                continue
        except Exception as e:  # noqa: BLE001 - one bad file, the rest goes on
            skipped.append((f, f"unreadable ({type(e).__name__})"))
            continue
        if not all(valid_uid(u) for u in (it.sop_class, it.sop_uid, it.study_uid, it.series_uid, it.transfer_syntax)):
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


def _bare_item(f: str) -> Item | str:
    """A file without File Meta header, read by the loader (dicom.header.read_record: pydicom
    ``dcmread(force=True)``); its transfer syntax is the loader's inference from the data set's
    encoding (implicit VR little endian, the DICOM default, for the usual bare file).  The
    skip reason (one line) when the loader does not take it for DICOM either."""
    from ..dicom.header import HeaderError, read_record
    try:
        rec = read_record(f)
    except HeaderError:
        return "not a DICOM Part 10 file"
    except Exception as e:  # noqa: BLE001 - one bad file, the rest goes on
        return f"unreadable ({type(e).__name__})"
    if not rec.transfer_syntax:
        return "no File Meta header and the transfer syntax cannot be told from the data set"
    return Item(f, str(rec.get("SOPClassUID", "")), str(rec.get("SOPInstanceUID", "")),
                str(rec.get("StudyInstanceUID", "")), str(rec.get("SeriesInstanceUID", "")),
                rec.transfer_syntax, rec.file_size, record=rec)


def _part10_copy(it: Item, folder: str, n: int) -> Item:
    """``it`` (a file without File Meta header) as a DICOM Part 10 file in ``folder``: the data
    set as the loader reads it (read_dataset refuses a file changed since it was listed), the
    File Meta header built from it (transfer syntax as inferred, Media Storage SOP Class and
    Instance UID from the data set's SOP Class / Instance UID).  The data elements are written
    back in the same encoding, so the pixel data go as they are."""
    from ..dicom.header import read_dataset
    ds = read_dataset(it.record)  # file_meta.TransferSyntaxUID = the record's inferred syntax
    if str(ds.file_meta.get("TransferSyntaxUID", "")) != it.transfer_syntax:
        raise ValueError("the transfer syntax read now differs from the one listed")
    ds.file_meta.MediaStorageSOPClassUID = it.sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = it.sop_uid
    out = os.path.join(folder, f"{n:06d}.dcm")
    # enforce_file_format: preamble, "DICM", and the meta's version and implementation UID
    ds.save_as(out, enforce_file_format=True)
    return replace(it, path=out, size=os.path.getsize(out), record=None)


def send(node: Node, paths: list[str], settings: Settings | None = None,
         progress: Callable[[int, int], None] | None = None,
         cancel: threading.Event | None = None) -> SendResult:
    settings = settings or load_settings()
    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    items, skipped = collect(paths)
    res = SendResult(node.label(), skipped=skipped)
    if not items:
        if skipped:  # say why (e.g. a file without SOP Class/Instance UID), not only "nothing"
            p, why = skipped[0]
            more = f" (and {len(skipped) - 1} more skipped)" if len(skipped) > 1 else ""
            raise PacsError(f"nothing to send: {p}: {why}{more}")
        raise PacsError("nothing to send: no DICOM files in " + ", ".join(paths))
    ok: list[Item] = []
    done = [0]
    source: dict[str, Item] = {}  # temporary Part 10 copy -> the file it was made from

    def on_result(it: Item, err: str | None, warning: str | None = None):
        it = source.get(it.path, it)  # results name the source file, never the copy
        done[0] += 1
        if err:
            res.failures.append((it.path, err))
        else:
            ok.append(it)
            if warning:
                res.warnings.append((it.path, warning))
        if progress:
            progress(done[0], len(items))

    # Files without File Meta header go as Part 10 copies (the peer needs the meta's transfer
    # syntax; the source file is never changed) in a private temporary folder (mode 0700),
    # removed once they are sent, whatever happens.
    with tempfile.TemporaryDirectory(prefix="ia-send-", ignore_cleanup_errors=True) as tmp:
        sendable: list[Item] = []
        for n, it in enumerate(items):
            if it.record is None:
                sendable.append(it)
                continue
            try:
                copy = _part10_copy(it, tmp, n)
            except Exception as e:  # noqa: BLE001 - one bad file, the rest goes on
                why = " ".join(f"{type(e).__name__}: {e}".split())[:200]  # one line
                on_result(it, f"cannot add the File Meta header: {why}")
                continue
            source[copy.path] = it
            sendable.append(copy)
        if node.is_dimse:
            from . import dimse
            dimse.store(node, settings, sendable, on_result, cancel)
        else:
            from . import dicomweb
            dicomweb.store(node, sendable, on_result, cancel)
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
