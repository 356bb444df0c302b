"""DIMSE with pynetdicom: C-ECHO, C-FIND (study, series, image), C-GET, C-MOVE to our own
Storage SCP (started for the transfer), C-STORE.  Every failure is a :class:`PacsError` with one
line naming the node and the cause (refused, rejected, timeout, context not offered...).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
from typing import Callable, Iterable

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, build_role, evt
from pynetdicom.presentation import (AllStoragePresentationContexts, StoragePresentationContexts,
                                     build_context)
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from .nodes import Node, PacsError, Settings
from .query import DEFAULT_LIMIT, Query, Rows, row_from_dataset
from .transfer import InstanceSink, valid_uid

FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
MAX_CONTEXTS = 128
_SERVICE = {FIND: "C-FIND", GET: "C-GET", MOVE: "C-MOVE", Verification: "C-ECHO"}
UID_LIST_CHUNK = 200  # SOP Instance UIDs per IMAGE-level retrieve (resume)

# pynetdicom logs each rejected association and failed connection as ERROR with details we
# already turn into one line; the user sees ours, not its.
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

_STATUS = {0xA700: "out of resources", 0xA701: "out of resources (cannot calculate matches)",
           0xA702: "out of resources (cannot perform sub-operations)",
           0xA801: "move destination unknown (the node does not know our AE title)",
           0xA900: "identifier does not match SOP class", 0xFE00: "cancelled",
           0x0122: "SOP class not supported", 0x0124: "not authorised",
           0xB000: "sub-operations completed with failures", 0x0211: "unrecognised operation"}


def status_text(code: int) -> str:
    if code in _STATUS:
        return f"status 0x{code:04X} ({_STATUS[code]})"
    if 0xC000 <= code <= 0xCFFF:
        return f"status 0x{code:04X} (unable to process)"
    return f"status 0x{code:04X}"


def _tls_args(node: Node):
    if not node.tls_ca:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=node.tls_ca)
    if node.tls_cert:
        ctx.load_cert_chain(node.tls_cert, node.tls_key or None)
    return ctx, node.host


def _diagnose(node: Node) -> None:
    """Why could we not associate?  Raises the one-line reason (refused, timeout, DNS...)."""
    t = min(node.timeout, 10.0)
    try:
        socket.create_connection((node.host, node.port), timeout=t).close()
    except ConnectionRefusedError:
        raise PacsError(f"{node.label()}: connection refused (no DICOM service on "
                        f"{node.host}:{node.port}; is the PACS running?)") from None
    except socket.timeout:
        raise PacsError(f"{node.label()}: no answer within {t:g} s (host down or port "
                        f"filtered)") from None
    except socket.gaierror:
        raise PacsError(f"{node.label()}: unknown host {node.host!r}") from None
    except OSError as e:
        raise PacsError(f"{node.label()}: cannot connect ({e.strerror or e})") from None


class _Assoc:
    """An established association (context manager); releases on exit, aborts on error."""

    def __init__(self, node: Node, settings: Settings, contexts, roles=(), handlers=()):
        self.node = node
        ae = AE(ae_title=settings.ae_title)
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, attr, node.timeout)
        if len(contexts) > MAX_CONTEXTS:
            raise PacsError(f"too many kinds of object for one association ({len(contexts)} "
                            f"presentation contexts, at most {MAX_CONTEXTS}): send fewer at once")
        ae.requested_contexts = contexts
        self.rejection = None

        def on_acse(event):
            p = event.primitive
            if getattr(p, "result", None) in (1, 2) and hasattr(p, "reason_str"):
                self.rejection = p.reason_str

        self.ae = ae
        self.kwargs = dict(ae_title=node.ae_title, ext_neg=list(roles) or None,
                           evt_handlers=[(evt.EVT_ACSE_RECV, on_acse), *handlers],
                           tls_args=_tls_args(node))

    def _associate(self):
        node = self.node
        try:
            return self.ae.associate(node.host, node.port, **self.kwargs)
        except socket.gaierror:
            raise PacsError(f"{node.label()}: unknown host {node.host!r}") from None
        except (OSError, ssl.SSLError) as e:
            raise PacsError(f"{node.label()}: cannot connect ({e})") from None

    def __enter__(self):
        node = self.node
        t0 = time.monotonic()
        assoc = self._associate()
        if (not assoc.is_established and not assoc.is_rejected and self.rejection is None
                and time.monotonic() - t0 < 0.5 * node.timeout):
            # pynetdicom can see the peer close the socket right after its A-ASSOCIATE-RJ before
            # it reads the RJ (a race seen under load): ask once more to learn the real reason.
            time.sleep(0.2)
            assoc = self._associate()
        if not assoc.is_established:
            if assoc.is_rejected or self.rejection:
                raise PacsError(f"{node.label()}: association rejected: "
                                f"{self.rejection or 'no reason given'} (check the node's AE title, "
                                f"and that the PACS knows our AE title {self.ae.ae_title})")
            _diagnose(node)
            if assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
                names = sorted({_SERVICE.get(cx.abstract_syntax, "C-STORE")
                                for cx in assoc.rejected_contexts})
                raise PacsError(f"{node.label()}: the node does not offer {', '.join(names)} "
                                f"to us (all presentation contexts rejected)")
            raise PacsError(f"{node.label()}: association failed (aborted by the node, or no "
                            f"answer within {node.timeout:g} s)")
        self.assoc = assoc
        return assoc

    def __exit__(self, et, ev, tb):
        a = self.assoc
        if a.is_established:
            if et is None:
                a.release()
            else:
                a.abort()
        return False


def _supports(assoc, abstract: str) -> bool:
    return any(cx.abstract_syntax == abstract for cx in assoc.accepted_contexts)


# --------------------------------------------------------------------------- echo / find
def echo(node: Node, settings: Settings) -> None:
    with _Assoc(node, settings, [build_context(Verification)]) as assoc:
        st = assoc.send_c_echo()
        if not st or "Status" not in st:
            raise PacsError(f"{node.label()}: no C-ECHO answer within {node.timeout:g} s")
        if st.Status != 0:
            raise PacsError(f"{node.label()}: C-ECHO failed, {status_text(st.Status)}")


def _find(assoc, node: Node, ds: Dataset, what: str, limit: int | None = None) -> list[Dataset]:
    """The identifiers of one C-FIND.  Past ``limit`` matches a C-CANCEL is sent and the rest
    is read and dropped (memory stays bounded); ``out.truncated`` says so."""
    if not _supports(assoc, FIND):
        raise PacsError(f"{node.label()}: the node does not offer C-FIND (Study Root)")
    out = Rows()
    t0 = time.monotonic()
    cx_id = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == FIND)
    for status, ident in assoc.send_c_find(ds, FIND, msg_id=1):
        if not status or "Status" not in status:
            if time.monotonic() - t0 < 0.9 * node.timeout:
                raise PacsError(f"{node.label()}: {what} refused: the node aborted the association "
                                f"(does it know our AE title {assoc.ae.ae_title}?)")
            raise PacsError(f"{node.label()}: {what}: no answer within {node.timeout:g} s "
                            f"(association aborted)")
        code = status.Status
        if code in (0xFF00, 0xFF01):
            if ident is None:
                raise PacsError(f"{node.label()}: {what}: malformed response (identifier could "
                                f"not be decoded)")
            if limit is not None and len(out) >= limit:
                if not out.truncated:
                    out.truncated = True
                    assoc.send_c_cancel(1, cx_id)
                continue
            out.append(ident)
        elif code == 0 or (code == 0xFE00 and out.truncated):
            return out
        else:
            raise PacsError(f"{node.label()}: {what} refused, {status_text(code)}")
    raise PacsError(f"{node.label()}: {what}: association ended before the final answer")


def find(node: Node, settings: Settings, query: Query, limit: int = DEFAULT_LIMIT) -> Rows:
    q = query.checked()
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY" if q.level == "study" else "SERIES"
    for k, v in q.identifier().items():
        setattr(ds, k, v)
    with _Assoc(node, settings, [build_context(FIND)]) as assoc:
        found = _find(assoc, node, ds, "C-FIND", limit)
    rows = Rows()
    rows.truncated, rows.limit = found.truncated, limit
    for ident in found:
        try:
            rows.append(row_from_dataset(ident, q.level))
        except Exception as e:  # noqa: BLE001 - one bad answer from the node, not our bug
            raise PacsError(f"{node.label()}: malformed C-FIND response ({type(e).__name__})") from None
    return rows


def list_instances(node: Node, settings: Settings, study_uid: str,
                   series_uids: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """(series UID, SOP instance UID, SOP class UID) of every instance of the study (or of the
    given series), by C-FIND at IMAGE level."""
    out = []
    with _Assoc(node, settings, [build_context(FIND)]) as assoc:
        for series in list(series_uids) or [""]:
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = ""
            ds.SOPClassUID = ""
            for ident in _find(assoc, node, ds, "C-FIND (instances)"):
                out.append((str(ident.get("SeriesInstanceUID", "")),
                            str(ident.get("SOPInstanceUID", "")), str(ident.get("SOPClassUID", ""))))
    return out


# --------------------------------------------------------------------------- retrieve
def _store_handler(sink: InstanceSink, expected: dict[str, str], study_uid: str):
    """The C-STORE handler for C-GET and C-MOVE: writes the encoded bytes as received (no
    decode/re-encode: the file is what the PACS holds), refuses what we did not ask for."""

    def handle(event):
        if sink.cancel.is_set():
            return 0xA700  # refused: the user cancelled (the C-CANCEL is on its way)
        sop = str(event.request.AffectedSOPInstanceUID or "")
        series = expected.get(sop)
        if series is None:
            try:
                ds = event.dataset
                if str(ds.get("StudyInstanceUID", "")) != study_uid:
                    return 0xC001  # not part of what we retrieve: never stored
                series = str(ds.get("SeriesInstanceUID", ""))
            except Exception:  # noqa: BLE001 - undecodable instance
                sink.fail(sop, "malformed instance received (could not be decoded)")
                return 0xC002
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # noqa: BLE001
            sink.fail(sop, f"malformed instance received ({type(e).__name__})", series)
            return 0xC002
        return 0x0000 if sink.write(series, sop, data) else 0xA700

    return handle


def _retrieve_requests(missing: dict[str, list[str]], all_counts: dict[str, int], study_uid: str):
    """One SERIES-level request per wholly missing series, IMAGE-level requests for the rest
    (resume: only the instances not yet on disk)."""
    for series, sops in missing.items():
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series
        if len(sops) == all_counts.get(series, -1):
            ds.QueryRetrieveLevel = "SERIES"
            yield series, ds
        else:  # UID list matching (PS3.4 C.2.2.2.2), in chunks that keep the request small
            for i in range(0, len(sops), UID_LIST_CHUNK):
                d = Dataset()
                d.QueryRetrieveLevel = "IMAGE"
                d.StudyInstanceUID = study_uid
                d.SeriesInstanceUID = series
                d.SOPInstanceUID = sops[i:i + UID_LIST_CHUNK]
                yield series, d


def _watch_cancel(cancel: threading.Event, assoc, on_cancel: Callable[[], None] | None = None,
                  grace: float = 3.0) -> threading.Event:
    """On ``cancel`` (Ctrl-C, the GUI's Cancel): ``on_cancel()`` (a C-CANCEL), then abort the
    association if the operation has not ended within ``grace`` seconds."""
    done = threading.Event()

    def run():
        while not done.wait(0.05):
            if cancel.is_set():
                if on_cancel is not None:
                    try:
                        on_cancel()
                    except Exception:  # noqa: BLE001 - the abort below ends it anyway
                        pass
                    if done.wait(grace):
                        return
                if assoc.is_established:
                    assoc.abort()
                return

    threading.Thread(target=run, daemon=True, name="pacs-cancel").start()
    return done


def _run_retrieve(assoc, node, model, send, requests, sink, what):
    """Send each retrieve request; C-CANCEL on cancel.  Raises NoGet when the node aborts the
    association on a C-GET before sending anything (Orthanc's answer to a refused C-GET)."""
    cx_id = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == model)
    msg = {"id": 0}
    finished = _watch_cancel(sink.cancel, assoc,
                             lambda: assoc.send_c_cancel(msg["id"], cx_id))
    try:
        for _series, ds in requests:
            if sink.cancel.is_set():
                break
            msg["id"] += 1
            before = sink.result.written + len(sink.result.failures)
            t0 = time.monotonic()
            final = None
            for status, ident in send(ds, msg["id"]):
                if not status or "Status" not in status:
                    if sink.cancel.is_set():
                        break
                    quick = time.monotonic() - t0 < 0.9 * node.timeout
                    nothing_yet = sink.result.written + len(sink.result.failures) == before
                    if quick and what == "C-GET" and nothing_yet:
                        raise NoGet(f"{node.label()}: the node does not accept C-GET from us "
                                    f"(it aborted the association on the request)")
                    if quick:
                        raise PacsError(f"{node.label()}: {what}: the node aborted the association")
                    raise PacsError(f"{node.label()}: {what}: no answer within {node.timeout:g} s "
                                    f"(association aborted)")
                final = (status, ident)
            if sink.cancel.is_set() or final is None:
                break
            status, ident = final
            code = status.Status
            if code == 0xFE00:
                break
            if code not in (0x0000, 0xFF00, 0xFF01, 0xB000):
                if code == 0xA801:
                    raise PacsError(f"{node.label()}: {what} refused: the node does not know our "
                                    f"AE title {assoc.ae.ae_title} as a move destination (add it "
                                    f"to the PACS with our host and storage port)")
                raise PacsError(f"{node.label()}: {what} failed, {status_text(code)}")
    finally:
        finished.set()


# For C-GET the PACS must find an accepted context in the transfer syntax it holds: a context
# that lists many syntaxes is accepted with only one of them (the PACS's pick, often Explicit VR
# Little Endian), and Orthanc then has to transcode, which it cannot do for JPEG 2000 without a
# plugin (0xC000).  So each stored syntax gets its own context, as DCMTK's getscu does, as many
# as the 128-context limit allows for the number of SOP classes.
_GET_SYNTAXES = [
    ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],   # explicit / implicit VR little endian
    ["1.2.840.10008.1.2.4.90"], ["1.2.840.10008.1.2.4.91"],  # JPEG 2000 lossless / lossy
    ["1.2.840.10008.1.2.4.70"], ["1.2.840.10008.1.2.4.57"],  # JPEG lossless SV1 / lossless
    ["1.2.840.10008.1.2.4.50"], ["1.2.840.10008.1.2.4.51"],  # JPEG baseline / extended
    ["1.2.840.10008.1.2.5"],                                  # RLE
    ["1.2.840.10008.1.2.4.80"], ["1.2.840.10008.1.2.4.81"],  # JPEG-LS lossless / near
    ["1.2.840.10008.1.2.1.99"], ["1.2.840.10008.1.2.2"],     # deflated, big endian
    ["1.2.840.10008.1.2.4.201"], ["1.2.840.10008.1.2.4.202"], ["1.2.840.10008.1.2.4.203"],  # HTJ2K
    ["1.2.840.10008.1.2.4.100"], ["1.2.840.10008.1.2.4.101"], ["1.2.840.10008.1.2.4.102"],
    ["1.2.840.10008.1.2.4.103"], ["1.2.840.10008.1.2.4.104"], ["1.2.840.10008.1.2.4.105"],
    ["1.2.840.10008.1.2.4.106"],                              # MPEG-2 / MPEG-4 / HEVC video
]


def _get_contexts(classes: list[str]) -> list:
    per_class = max(1, min(len(_GET_SYNTAXES), (MAX_CONTEXTS - 1) // max(1, len(classes))))
    out = []
    for c in classes[:MAX_CONTEXTS - 1]:
        for ts in _GET_SYNTAXES[:per_class]:
            out.append(build_context(c, ts))
    return out[:MAX_CONTEXTS - 1]


def retrieve_get(node: Node, settings: Settings, sink: InstanceSink,
                 listing: list[tuple[str, str, str]], missing: dict[str, list[str]]) -> None:
    """C-GET: the node sends the instances back on our association (SCP role for storage)."""
    expected = {sop: series for series, sop, _c in listing}
    classes = sorted({c for _s, _i, c in listing if valid_uid(c)})
    if not classes:  # the node did not list SOP classes: offer the common storage classes
        classes = [cx.abstract_syntax for cx in StoragePresentationContexts[:MAX_CONTEXTS - 1]]
    storage = _get_contexts(classes)
    roles = [build_role(c, scp_role=True) for c in classes]
    counts: dict[str, int] = {}
    for series, _sop, _c in listing:
        counts[series] = counts.get(series, 0) + 1
    handler = (evt.EVT_C_STORE, _store_handler(sink, expected, sink.result.study_uid))
    with _Assoc(node, settings, [build_context(GET)] + storage, roles, [handler]) as assoc:
        if not _supports(assoc, GET):
            raise NoGet(f"{node.label()}: the node does not accept C-GET")
        _run_retrieve(assoc, node, GET, lambda ds, m: assoc.send_c_get(ds, GET, msg_id=m),
                      _retrieve_requests(missing, counts, sink.result.study_uid), sink, "C-GET")


class NoGet(PacsError):
    """The node refused the C-GET presentation context."""


def retrieve_move(node: Node, settings: Settings, sink: InstanceSink,
                  listing: list[tuple[str, str, str]], missing: dict[str, list[str]],
                  bind: str = "") -> None:
    """C-MOVE to our own Storage SCP, listening on ``settings.storage_port`` for the transfer."""
    expected = {sop: series for series, sop, _c in listing}
    counts: dict[str, int] = {}
    for series, _sop, _c in listing:
        counts[series] = counts.get(series, 0) + 1
    scp = AE(ae_title=settings.ae_title)
    scp.supported_contexts = [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
                              for cx in AllStoragePresentationContexts]
    scp.network_timeout = scp.acse_timeout = scp.dimse_timeout = node.timeout
    handler = (evt.EVT_C_STORE, _store_handler(sink, expected, sink.result.study_uid))
    try:
        server = scp.start_server((bind, settings.storage_port), block=False, evt_handlers=[handler])
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PacsError(f"our storage port {settings.storage_port} is in use (another program or "
                            f"retrieval): change it in the PACS settings") from None
        raise PacsError(f"cannot listen on storage port {settings.storage_port}: "
                        f"{e.strerror or e}") from None
    try:
        with _Assoc(node, settings, [build_context(MOVE)]) as assoc:
            if not _supports(assoc, MOVE):
                raise PacsError(f"{node.label()}: the node accepts neither C-GET nor C-MOVE from us")
            _run_retrieve(assoc, node, MOVE,
                          lambda ds, m: assoc.send_c_move(ds, settings.ae_title, MOVE, msg_id=m),
                          _retrieve_requests(missing, counts, sink.result.study_uid), sink, "C-MOVE")
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- store
_STORE_WARNINGS = {0xB000: "coercion of data elements", 0xB006: "elements discarded",
                   0xB007: "data set does not match SOP class"}


def store(node: Node, settings: Settings, items: list, on_result: Callable,
          cancel: threading.Event) -> None:
    """C-STORE each item (``.path``, ``.sop_class``, ``.transfer_syntax``, ``.sop_uid``);
    ``on_result(item, error_or_None)`` after each.  One presentation context per (SOP class,
    transfer syntax) pair, so each file goes as it is; more than 127 pairs take several
    associations.  Cancel is checked between files (one C-STORE is short) and the association
    is then released normally, never aborted mid-instance."""
    by_pair: dict[tuple[str, str], list] = {}
    for it in items:
        by_pair.setdefault((it.sop_class, it.transfer_syntax), []).append(it)
    pairs = sorted(by_pair)
    for i in range(0, len(pairs), MAX_CONTEXTS - 1):
        chunk = pairs[i:i + MAX_CONTEXTS - 1]
        batch = [it for p in chunk for it in by_pair[p]]
        if cancel.is_set():
            return
        _store_batch(node, settings, [build_context(c, [ts]) for c, ts in chunk], batch,
                     on_result, cancel)


def _store_batch(node, settings, contexts, items, on_result, cancel) -> None:
    with _Assoc(node, settings, contexts) as assoc:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for n, it in enumerate(items):
            if cancel.is_set():
                return
            if (it.sop_class, it.transfer_syntax) not in accepted:
                on_result(it, "the node does not accept this kind of object "
                              f"(SOP class {it.sop_class}, transfer syntax {it.transfer_syntax})")
                continue
            try:
                st = assoc.send_c_store(it.path)
            except (OSError, ValueError, AttributeError) as e:
                on_result(it, f"cannot send: {e}")
                continue
            if not st or "Status" not in st:
                if cancel.is_set():
                    return
                lost = (f"no answer within {node.timeout:g} s (association aborted); "
                        f"not sent")
                for rest in items[n:]:  # the association is gone: the rest are not sent
                    on_result(rest, lost)
                return
            code = st.Status
            if code == 0:
                on_result(it, None)
            elif code in _STORE_WARNINGS:  # stored, but not quite as sent: the user is told
                on_result(it, None, f"stored with warning 0x{code:04X} ({_STORE_WARNINGS[code]})")
            else:
                on_result(it, f"refused by the node, {status_text(code)}")
