"""What the CLI and the GUI call: echo, find and get on any node (DIMSE or DICOMweb)."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from .nodes import Node, PacsError, Settings, load_settings
from .query import DEFAULT_LIMIT, Query
from .transfer import InstanceSink, TransferResult, valid_uid


def echo(node: Node, settings: Settings | None = None) -> float:
    """C-ECHO or a QIDO request; returns the round trip in seconds."""
    t0 = time.perf_counter()
    if node.is_dimse:
        from . import dimse
        dimse.echo(node, settings or load_settings())
    else:
        from . import dicomweb
        dicomweb.echo(node)
    return time.perf_counter() - t0


def find(node: Node, query: Query, settings: Settings | None = None,
         limit: int = DEFAULT_LIMIT) -> list[dict]:
    """Rows (a list; ``.truncated`` when the node had more than ``limit`` matches)."""
    if node.is_dimse:
        from . import dimse
        return dimse.find(node, settings or load_settings(), query, limit)
    from . import dicomweb
    return dicomweb.find(node, query, limit)


def list_instances(node: Node, study_uid: str, series_uids=(), settings: Settings | None = None):
    if node.is_dimse:
        from . import dimse
        return dimse.list_instances(node, settings or load_settings(), study_uid, series_uids)
    from . import dicomweb
    return dicomweb.list_instances(node, study_uid, series_uids)


def get(node: Node, study_uid: str, out_dir: str | os.PathLike, series_uids=(),
        method: str = "auto", settings: Settings | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        on_instance: Callable[[str, str], None] | None = None,
        cancel: threading.Event | None = None,
        on_plan: Callable[[InstanceSink], None] | None = None) -> TransferResult:
    """Retrieve a study (or some of its series) into ``out_dir/<study>/<series>/<sop>.dcm``.

    ``method``: ``auto`` (C-GET when the node accepts it, else C-MOVE; WADO-RS for DICOMweb),
    ``get``, ``move`` or ``wado``.  Instances already on disk are skipped (resume).  Per-instance
    failures are collected in the result; a failure of the whole transfer raises PacsError.
    """
    settings = settings or load_settings()
    series_uids = list(series_uids)
    for uid in [study_uid, *series_uids]:
        if not valid_uid(uid):
            raise PacsError(f"invalid UID {uid!r}: digits and dots, at most 64 characters")
    if method not in ("auto", "get", "move", "wado"):
        raise PacsError(f"unknown method {method!r}: auto, get, move or wado")
    if node.is_dimse and method == "wado":
        raise PacsError(f"{node.label()} is a DIMSE node: WADO-RS needs a DICOMweb node")
    if not node.is_dimse and method in ("get", "move"):
        raise PacsError(f"{node.label()} is a DICOMweb node: C-GET/C-MOVE need a DIMSE node")
    out = os.fspath(out_dir)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PacsError(f"cannot create {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise PacsError(f"cannot write into {out}")

    chosen = "wado" if not node.is_dimse else ("get" if method == "auto" else method)
    sink = InstanceSink(out, study_uid, chosen, progress=progress, on_instance=on_instance,
                        cancel=cancel)
    listing = list_instances(node, study_uid, series_uids, settings)
    if not listing:
        what = f"series {', '.join(series_uids)} of study" if series_uids else "study"
        raise PacsError(f"{node.label()}: {what} {study_uid} not found (no instances)")
    missing = sink.plan([(s, i) for s, i, _c in listing])
    if on_plan:
        on_plan(sink)
    if progress:
        progress(sink._done, sink.result.expected, "")
    try:
        _transfer(node, settings, sink, listing, missing, method, chosen)
    except PacsError as e:
        part = sink.finish()  # no temporary file stays behind, whatever ended the transfer
        if part.written:
            raise PacsError(f"{e} ({part.written} instances kept in {part.study_dir}; "
                            f"retrieving again fetches the rest)") from None
        raise
    except BaseException:
        sink.finish()
        raise
    res = sink.finish()
    if not res.cancelled:
        got = {f.sop_instance_uid for f in res.failures}
        for series, sops in missing.items():
            for sop in sops:
                if sop not in got and not sink.present(series, sop):
                    res.failures.append(_failure(sop, "not received from the node", series))
    from ..privacy.audit import record_transfer
    record_transfer("retrieve", res, node=node.label())  # the audit trail (never raises)
    return res


def _transfer(node, settings, sink, listing, missing, method, chosen) -> None:
    if missing:
        if not node.is_dimse:
            from . import dicomweb
            dicomweb.retrieve(node, sink, listing, missing)
        else:
            from . import dimse
            if chosen == "get":
                try:
                    dimse.retrieve_get(node, settings, sink, listing, missing)
                except dimse.NoGet as e:
                    if method == "get":
                        raise PacsError(f"{e} (try --method move)") from None
                    sink.result.method = chosen = "move"
                    sink.result.notes.append(f"{node.label()} does not accept C-GET: used C-MOVE "
                                             f"to our AE {settings.ae_title} on port "
                                             f"{settings.storage_port}")
            if chosen == "move":
                dimse.retrieve_move(node, settings, sink, listing, missing)


def _failure(sop, reason, series):
    from .transfer import Failure
    return Failure(sop, reason, series)


def index_study(result: TransferResult):
    """The retrieved study indexed like any folder (imaging_assist.dicom.scan)."""
    from ..dicom import scan
    return scan(result.study_dir)
