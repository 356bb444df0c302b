"""DIMSE with pynetdicom: C-ECHO, C-FIND (study, series, image), C-GET, C-MOVE to our own
Storage SCP (started for the transfer), C-STORE.  Every failure is a :class:`PacsError` with one
line naming the node and the cause (refused, rejected, timeout, context not offered...).
"""

from __future__ import annotations

import errno
import logging
import math
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

from .dicomweb import MAX_INSTANCE_BYTES, MAX_LISTED, MIN_RATE
from .nodes import Node, PacsError, Settings
from .query import DEFAULT_LIMIT, Query, Rows, charset_for, row_from_dataset
from .transfer import InstanceSink, valid_uid

FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
MAX_CONTEXTS = 128
_SERVICE = {FIND: "C-FIND", GET: "C-GET", MOVE: "C-MOVE", Verification: "C-ECHO"}
UID_LIST_CHUNK = 200  # SOP Instance UIDs per IMAGE-level retrieve (resume)
# A hostile or broken node must not make us wait or allocate without end (see _Guard).  The
# limits, as on the DICOMweb side (MAX_LISTED, MAX_INSTANCE_BYTES and MIN_RATE come from there):
# - C-FIND: the whole answer within the node's timeout, plus FIND_ROW_SHARE of it per match
#   received (a PACS that needs 3 s per match at the default 30 s is still read to the end), but
#   never more than FIND_TIMEOUT_FACTOR x the timeout in all (300 s at 30 s: tens of thousands of
#   instances even from a slow PACS).  A node that answers "pending" without end, fast or one
#   match just within each timeout, is stopped there.  Past ``limit`` matches the node gets one
#   timeout to honour our C-CANCEL, then the matches asked for are returned all the same.  An
#   instance listing stops with one line past MAX_LISTED matches.
# - C-GET / C-MOVE: each asked-for instance received re-arms RETRIEVE_TIMEOUT_FACTOR x the
#   timeout and MAX_INSTANCE_BYTES; "pending" answers alone do not (a node that says "pending"
#   for ever, or never sends its final status, is stopped there).  At most 16 + N instances that
#   were not asked for (or come again) are refused before the transfer is stopped.
# - every PDU: at most MAX_PDU_BYTES (we offer 16 KiB; a header that declares 4 GiB is refused
#   before anything is read).  C-STORE: 2 x the timeout per file, plus 1 s per MIN_RATE bytes.
FIND_ROW_SHARE = 0.1
FIND_TIMEOUT_FACTOR = 10
RETRIEVE_TIMEOUT_FACTOR = 10
MAX_UNASKED = 16  # plus the number of instances asked for
MAX_PDU_BYTES = 64 << 20

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


class _Encrypted(Exception):
    pass


def _no_pass_phrase():
    """OpenSSL's password callback: a key with a pass phrase is refused at once (its default
    would prompt on the terminal, and wait there for ever under the GUI or a script)."""
    raise _Encrypted


def _tls_args(node: Node):
    if not node.tls_ca:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=node.tls_ca)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise PacsError(f"{node.label()}: cannot use the TLS CA file {node.tls_ca} (not PEM "
                        f"certificates? {getattr(e, 'reason', None) or e.__class__.__name__})") from None
    if node.tls_cert:
        try:
            ctx.load_cert_chain(node.tls_cert, node.tls_key or None, password=_no_pass_phrase)
        except _Encrypted:
            raise PacsError(f"{node.label()}: the TLS key {node.tls_key or node.tls_cert} is "
                            f"protected by a pass phrase: use a key without one (e.g. openssl "
                            f"pkey -in KEY -out KEY.plain), readable only by you") from None
        except (ssl.SSLError, OSError, ValueError) as e:
            raise PacsError(f"{node.label()}: cannot use the TLS certificate/key "
                            f"({getattr(e, 'reason', None) or e.__class__.__name__})") from None
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


def _shut(assoc_socket) -> None:
    """Shut the connection under pynetdicom's feet: a read blocked in it returns at once.  The
    base class's shutdown, so that a TLS socket's state is left to the thread that reads it."""
    sock = getattr(assoc_socket, "socket", None)
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except (OSError, ValueError, TypeError):  # already closed
            pass


class _Guard:
    """The time and byte budget of the operation under way on one association (and, for a
    C-MOVE, on the storage associations it brings to our SCP).

    pynetdicom bounds each wait for one message (``dimse_timeout``), but not an operation: a node
    may answer "pending" for ever, each answer in time.  Worse, its reading thread blocks in
    ``recv`` on a socket without timeout until a PDU is complete (a header that declares 4 GiB,
    then a byte now and then), and ``abort()`` then waits for that thread for ever.  pynetdicom
    has no means to stop either, so this hand-written watchdog thread shuts the sockets of an
    operation past its deadline (the blocked read returns, pynetdicom sees the connection closed
    and gives up) and our loop raises ``reason``, one line.  ``on_open`` (bound to
    EVT_CONN_OPEN) registers each socket and checks each PDU's declared length and the bytes
    received since the last progress."""

    def __init__(self, node: Node):
        self.label = node.label()
        self.cause: str | None = None
        self._socks: list = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.disarm()

    def arm(self, seconds: float, late: str, max_bytes: float = math.inf) -> None:
        """A new deadline, ``seconds`` from now; ``late``: the cause given when it passes
        (``{s}`` becomes the seconds elapsed)."""
        self._arm = (seconds, late, max_bytes)
        self.start = time.monotonic()
        self.deadline, self.late, self.max_bytes, self.nbytes = self.start + seconds, late, max_bytes, 0
        if self._thread is None and seconds != math.inf:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="dimse-guard")
            self._thread.start()

    def rearm(self) -> None:
        """Progress (an asked-for instance arrived): the whole budget again."""
        self.arm(*self._arm)

    def disarm(self) -> None:
        self.arm(math.inf, "")

    def extend(self, seconds: float, cap: float) -> None:
        self.deadline = min(self.deadline + seconds, cap)

    def stop(self, cause: str) -> None:
        with self._lock:
            if self.cause is None:
                self.cause = cause
            socks = list(self._socks)
        for s in socks:
            _shut(s)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def reason(self) -> str:
        return f"{self.label}: {self.cause}"

    def _late(self) -> None:
        if self.cause is None and time.monotonic() > self.deadline:
            self.stop(self.late.replace("{s}", f"{time.monotonic() - self.start:.1f}"))

    def check(self) -> None:
        """Raise the one line if the operation was stopped or is past its deadline."""
        self._late()
        if self.cause is not None:
            raise PacsError(self.reason)

    def on_open(self, event) -> None:
        sock = event.assoc.dul.socket
        recv = sock.recv

        def checked_recv(n: int):
            if n > MAX_PDU_BYTES:
                self.stop(f"malformed answer from the node (a PDU that declares {n} bytes, at "
                          f"most {MAX_PDU_BYTES} accepted)")
                raise OSError("PDU too large")  # pynetdicom: connection closed
            data = recv(n)
            self.nbytes += len(data)
            if self.nbytes > self.max_bytes:
                self.stop(f"more than {self.max_bytes >> 20} MiB received without a complete "
                          f"instance: the transfer was stopped")
            return data

        sock.recv = checked_recv
        with self._lock:
            self._socks.append(sock)
            late = self.cause is not None or self.closed
        if late:  # the operation has ended (or was stopped): nothing more is read
            _shut(sock)

    def close(self) -> None:
        """The operation has ended: the watchdog stops, and any association still open on it
        (a node that goes on storing to our C-MOVE SCP) is cut."""
        self._closed.set()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _shut(s)

    def _watch(self) -> None:
        while not self._closed.wait(0.05):
            self._late()


class _Assoc:
    """An established association (context manager); releases on exit, aborts on error.
    ``guard`` (its own unless one is given) bounds the association, each operation and the
    release."""

    def __init__(self, node: Node, settings: Settings, contexts, roles=(), handlers=(),
                 guard: _Guard | None = None):
        self.node = node
        self.guard = guard or _Guard(node)
        self._own_guard = guard is None
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
                           evt_handlers=[(evt.EVT_ACSE_RECV, on_acse),
                                         (evt.EVT_CONN_OPEN, self.guard.on_open), *handlers],
                           tls_args=_tls_args(node))

    def _associate(self):
        node = self.node
        # pynetdicom waits acse_timeout for the answer; the guard ends a read stuck mid-PDU
        self.guard.arm(2 * node.timeout, f"no answer within {node.timeout:g} s (association "
                                         f"aborted)")
        try:
            return self.ae.associate(node.host, node.port, **self.kwargs)
        except socket.gaierror:
            raise PacsError(f"{node.label()}: unknown host {node.host!r}") from None
        except (OSError, ssl.SSLError) as e:
            raise PacsError(f"{node.label()}: cannot connect ({e})") from None

    def __enter__(self):
        try:
            self.assoc = self._establish()
        except BaseException:
            if self._own_guard:
                self.guard.close()
            raise
        self.guard.disarm()
        return self.assoc

    def _establish(self):
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
            if self.guard.cause is not None:
                raise PacsError(self.guard.reason)
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
        return assoc

    def __exit__(self, et, ev, tb):
        a = self.assoc
        try:
            # before pynetdicom's own release timeout (acse_timeout), whose A-ABORT can race in
            # its reading thread and print a traceback (InvalidEventError) on stderr
            self.guard.arm(0.8 * self.node.timeout, "no answer to the release")
            if a.is_established:
                if et is None and self.guard.cause is None:
                    a.release()
                else:
                    a.abort()
        finally:
            if self._own_guard:
                self.guard.close()
        return False


def _supports(assoc, abstract: str) -> bool:
    return any(cx.abstract_syntax == abstract for cx in assoc.accepted_contexts)


# --------------------------------------------------------------------------- echo / find
def echo(node: Node, settings: Settings) -> None:
    cx = _Assoc(node, settings, [build_context(Verification)])
    with cx as assoc:
        cx.guard.arm(2 * node.timeout, f"no C-ECHO answer within {node.timeout:g} s")
        st = assoc.send_c_echo()
        cx.guard.check()
        if not st or "Status" not in st:
            raise PacsError(f"{node.label()}: no C-ECHO answer within {node.timeout:g} s")
        if st.Status != 0:
            raise PacsError(f"{node.label()}: C-ECHO failed, {status_text(st.Status)}")


def _find(cx: _Assoc, ds: Dataset, what: str, limit: int | None = None,
          max_rows: int | None = None) -> list[Dataset]:
    """The identifiers of one C-FIND, within the time budget described at the top.  Past
    ``limit`` matches a C-CANCEL is sent and the rest is dropped; ``out.truncated`` says so.
    Past ``max_rows`` matches: one line."""
    assoc, guard, node = cx.assoc, cx.guard, cx.node
    if not _supports(assoc, FIND):
        raise PacsError(f"{node.label()}: the node does not offer C-FIND (Study Root)")
    out = Rows()
    t0 = time.monotonic()
    cap = t0 + FIND_TIMEOUT_FACTOR * node.timeout
    late = f"{what}: no complete answer within {{s}} s (association aborted)"
    guard.arm(node.timeout, late)
    cx_id = next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == FIND)
    try:
        for status, ident in assoc.send_c_find(ds, FIND, msg_id=1):
            try:
                guard.check()
            except PacsError:
                if out.truncated:  # the node ignores our C-CANCEL: we have what was asked for
                    return out
                raise
            if not status or "Status" not in status:
                if time.monotonic() - t0 < 0.9 * node.timeout:
                    raise PacsError(f"{node.label()}: {what} refused: the node aborted the "
                                    f"association (does it know our AE title {assoc.ae.ae_title}?)")
                raise PacsError(f"{node.label()}: {what}: no answer within {node.timeout:g} s "
                                f"(association aborted)")
            code = status.Status
            if code in (0xFF00, 0xFF01):
                if ident is None:
                    raise PacsError(f"{node.label()}: {what}: malformed response (identifier "
                                    f"could not be decoded)")
                if out.truncated:
                    continue
                guard.extend(FIND_ROW_SHARE * node.timeout, cap)
                if limit is not None and len(out) >= limit:
                    out.truncated = True
                    assoc.send_c_cancel(1, cx_id)
                    guard.arm(node.timeout, late)  # one timeout to honour the C-CANCEL
                    continue
                if max_rows is not None and len(out) >= max_rows:
                    raise PacsError(f"{node.label()}: {what}: more than {MAX_LISTED} instances "
                                    f"listed for one study")
                out.append(ident)
            elif code == 0 or (code == 0xFE00 and out.truncated):
                return out
            elif code == 0xFE00 and limit is not None and out:
                # the node ended its answer itself (e.g. Orthanc's LimitFindResults): what came
                # is returned, marked as incomplete (an instance listing is never accepted so)
                out.truncated = True
                out.notes = (f"{node.label()} ended its answer after {len(out)} matches (status "
                             f"0xFE00: its own limit on results); it may hold more: narrow the "
                             f"filters",)
                return out
            else:
                raise PacsError(f"{node.label()}: {what} refused, {status_text(code)}")
        raise PacsError(f"{node.label()}: {what}: association ended before the final answer")
    finally:
        guard.disarm()


def _identifier(level: str, keys: dict) -> Dataset:
    """A C-FIND identifier.  When a value is not ASCII, Specific Character Set is ISO_IR 192 and
    the values go as UTF-8 (without it pydicom would send them as undeclared Latin-1, or as
    ``?``, a wildcard that matches other patients); the node answers in a character set it
    declares in each answer, which pydicom applies when the values are read."""
    ds = Dataset()
    charset = charset_for(keys.values())
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def find(node: Node, settings: Settings, query: Query, limit: int = DEFAULT_LIMIT) -> Rows:
    q = query.checked()
    ds = _identifier("STUDY" if q.level == "study" else "SERIES", q.identifier())
    cx = _Assoc(node, settings, [build_context(FIND)])
    with cx:
        found = _find(cx, ds, "C-FIND", limit)
    rows = Rows()
    rows.truncated, rows.limit, rows.notes = found.truncated, limit, found.notes
    for ident in found:
        try:
            rows.append(row_from_dataset(ident, q.level))
        except Exception as e:  # noqa: BLE001 - one bad answer from the node, not our bug
            raise PacsError(f"{node.label()}: malformed C-FIND response ({type(e).__name__})") from None
    return rows


def list_instances(node: Node, settings: Settings, study_uid: str,
                   series_uids: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """(series UID, SOP instance UID, SOP class UID) of every instance of the study (or of the
    given series), by C-FIND at IMAGE level.  Matches of another study or series are left out
    (never retrieved as this one), and a SOP Instance UID listed twice counts once."""
    out, seen = [], set()
    cx = _Assoc(node, settings, [build_context(FIND)])
    with cx:
        for series in list(series_uids) or [""]:
            ds = _identifier("IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series,
                                       "SOPInstanceUID": "", "SOPClassUID": ""})
            for ident in _find(cx, ds, "C-FIND (instances)", max_rows=MAX_LISTED - len(out)):
                try:
                    st, se, sop, sop_class = (str(ident.get(k, "")) for k in (
                        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"))
                except Exception as e:  # noqa: BLE001 - a value pydicom cannot convert
                    raise PacsError(f"{node.label()}: C-FIND (instances): malformed response "
                                    f"({type(e).__name__})") from None
                if st not in ("", study_uid) or (series and se != series) or sop in seen:
                    continue
                seen.add(sop)
                out.append((se, sop, sop_class))
    return out


# --------------------------------------------------------------------------- retrieve
_REFUSED, _MALFORMED = 0xC001, 0xC002  # our C-STORE answers to what is not stored


def _store_handler(sink: InstanceSink, missing: dict[str, list[str]], guard: _Guard, what: str):
    """The C-STORE handler for C-GET and C-MOVE: writes the encoded bytes as received (no
    decode/re-encode: the file is what the PACS holds).  Only an instance asked for is stored,
    once, and only when its data set's own SOP Instance, Study and Series UIDs are the ones
    asked for (the Affected SOP Instance UID of the request must name the same instance);
    anything else is refused and never written.  An instance of the study that was not asked
    for (another series than requested, or one added since the listing) is refused too: the
    next retrieval lists and fetches it.  Past MAX_UNASKED + N refusals the transfer stops."""
    expected = {sop: series for series, sops in missing.items() for sop in sops}
    study = sink.result.study_uid
    seen: set[str] = set()
    lock = threading.Lock()
    unasked = {"n": 0, "max": MAX_UNASKED + len(expected)}

    def not_asked(sop: str, reason: str):
        with lock:
            unasked["n"] += 1
            over = unasked["n"] > unasked["max"]
        if over:
            guard.stop(f"{what}: more than {unasked['max']} instances that were not asked for "
                       f"or came again: the transfer was stopped")
        elif reason:
            sink.fail(sop or "?", reason)
        else:
            sink.result.notes.append(f"the node sent {sop} twice: the copy was ignored")
        return _REFUSED

    def handle(event):
        if sink.cancel.is_set() or guard.closed or guard.cause is not None:
            return 0xA700  # refused: cancelled, stopped, or after the end of the transfer
        affected = str(event.request.AffectedSOPInstanceUID or "")
        try:
            ds = event.dataset
            sop, ds_study, ds_series = (str(ds.get(k, "")) for k in (
                "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
        except Exception:  # noqa: BLE001 - an instance that does not decode
            ds = sop = None
        named = sop if sop in expected else affected  # the instance of ours it claims to be
        with lock:
            first = named in expected and named not in seen
            seen.add(named)
        if not first:
            return not_asked(named, "" if named in expected else
                             "the node sent an instance that was not asked for (not stored)")
        guard.rearm()  # an asked-for instance arrived: the transfer goes on
        series = expected[named]
        if ds is None:
            sink.fail(named, "malformed instance received (could not be decoded)", series)
            return _MALFORMED
        if sop != affected:
            sink.fail(named, "the node sent it under another SOP Instance UID than its own "
                             "(not stored)", series)
            return _MALFORMED
        if (ds_study, ds_series) != (study, series):
            sink.fail(named, "the node sent it with another Study or Series Instance UID "
                             "(not stored)", series)
            return _REFUSED
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # noqa: BLE001
            sink.fail(named, f"malformed instance received ({type(e).__name__})", series)
            return _MALFORMED
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


def _request_sops(series: str, ds: Dataset, missing: dict[str, list[str]]) -> list[str]:
    """The SOP Instance UIDs one retrieve request asks for."""
    if "SOPInstanceUID" in ds:
        v = ds.SOPInstanceUID
        return [str(x) for x in v] if isinstance(v, (list, tuple)) or \
            type(v).__name__ == "MultiValue" else [str(v)]
    return list(missing.get(series, []))


def _fail_request(sink: InstanceSink, series: str, sops: list[str], reason: str, ident) -> None:
    """A request that ended in failure: each of its instances not received (nor already failed)
    is a failure of its own; the node's Failed SOP Instance UID List, when it gives one, only
    says which of them it names."""
    named: set[str] = set()
    try:
        v = ident.get("FailedSOPInstanceUIDList", None) if ident is not None else None
        if v is not None:
            named = {str(x) for x in (v if isinstance(v, (list, tuple)) or
                                      type(v).__name__ == "MultiValue" else [v]) if x}
    except Exception:  # noqa: BLE001 - an identifier that does not decode: no refinement
        named = set()
    with sink._lock:
        failed = {f.sop_instance_uid for f in sink.result.failures}
    for sop in sops:
        if sop in failed or sink.present(series, sop):
            continue
        sink.fail(sop, reason + (" (named by the node as failed)" if sop in named else ""), series)


def _run_retrieve(cx: _Assoc, model, send, requests, sink, what, missing=None):
    """Send each retrieve request; C-CANCEL on cancel.  Raises NoGet when the node aborts the
    association on a C-GET before sending anything (Orthanc's answer to a refused C-GET).  A
    request the node answers with a failure status fails the instances it asked for (each one
    a failure of the result) and the next request goes on: one series that cannot be sent
    does not keep the others from coming."""
    assoc, guard, node = cx.assoc, cx.guard, cx.node
    budget = RETRIEVE_TIMEOUT_FACTOR * node.timeout
    cx_id = next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == model)
    msg = {"id": 0}
    finished = _watch_cancel(sink.cancel, assoc,
                             lambda: assoc.send_c_cancel(msg["id"], cx_id))
    try:
        for series, ds in requests:
            if sink.cancel.is_set():
                break
            msg["id"] += 1
            before = sink.result.written + len(sink.result.failures)
            t0 = time.monotonic()
            final = None
            guard.arm(budget, f"{what}: no new instance and no final answer within {budget:g} s: "
                              f"the transfer was stopped", MAX_INSTANCE_BYTES)
            for status, ident in send(ds, msg["id"]):
                if not sink.cancel.is_set():
                    guard.check()
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
                if code == 0xA801:  # no request can succeed: the whole transfer fails
                    raise PacsError(f"{node.label()}: {what} refused: the node does not know our "
                                    f"AE title {assoc.ae.ae_title} as a move destination (add it "
                                    f"to the PACS with our host and storage port)")
                _fail_request(sink, series, _request_sops(series, ds, missing or {}),
                              f"{what} of series {series} failed, {status_text(code)}", ident)
    finally:
        finished.set()
        guard.disarm()


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


def _listed_classes(listing: list[tuple[str, str, str]]) -> list[str]:
    """The SOP classes the node listed for the study.  pynetdicom hands a C-STORE of a SOP class
    it does not know (private, retired, newer than it) to no service and aborts the
    association; each such class the node holds is registered as a storage SOP class (the
    library's own means, ``register_uid``), so that its instances are stored like any other.
    Classes pynetdicom knows (storage or not) are left as they are."""
    from pynetdicom.service_class import ServiceClass, StorageServiceClass
    from pynetdicom.sop_class import register_uid, uid_to_service_class
    classes = sorted({c for _s, _i, c in listing if valid_uid(c)})
    with _REGISTER_LOCK:
        for c in classes:
            if uid_to_service_class(c) is ServiceClass:
                register_uid(c, "ImagingAssistListedStorage_" + c.replace(".", "_"),
                             StorageServiceClass)
    return classes


_REGISTER_LOCK = threading.Lock()


def retrieve_get(node: Node, settings: Settings, sink: InstanceSink,
                 listing: list[tuple[str, str, str]], missing: dict[str, list[str]]) -> None:
    """C-GET: the node sends the instances back on our association (SCP role for storage)."""
    classes = _listed_classes(listing)
    if not classes:  # the node did not list SOP classes: offer the common storage classes
        classes = [cx.abstract_syntax for cx in StoragePresentationContexts[:MAX_CONTEXTS - 1]]
    storage = _get_contexts(classes)
    roles = [build_role(c, scp_role=True) for c in classes]
    counts: dict[str, int] = {}
    for series, _sop, _c in listing:
        counts[series] = counts.get(series, 0) + 1
    guard = _Guard(node)
    handler = (evt.EVT_C_STORE, _store_handler(sink, missing, guard, "C-GET"))
    cx = _Assoc(node, settings, [build_context(GET)] + storage, roles, [handler], guard)
    try:
        with cx as assoc:
            if not _supports(assoc, GET):
                raise NoGet(f"{node.label()}: the node does not accept C-GET")
            _run_retrieve(cx, GET, lambda ds, m: assoc.send_c_get(ds, GET, msg_id=m),
                          _retrieve_requests(missing, counts, sink.result.study_uid), sink, "C-GET",
                          missing)
    finally:
        guard.close()


class NoGet(PacsError):
    """The node refused the C-GET presentation context."""


def retrieve_move(node: Node, settings: Settings, sink: InstanceSink,
                  listing: list[tuple[str, str, str]], missing: dict[str, list[str]],
                  bind: str = "") -> None:
    """C-MOVE to our own Storage SCP, listening on ``settings.storage_port`` for the transfer.
    The SCP's associations share the C-MOVE's guard: they are cut when the transfer ends."""
    counts: dict[str, int] = {}
    for series, _sop, _c in listing:
        counts[series] = counts.get(series, 0) + 1
    scp = AE(ae_title=settings.ae_title)
    # every storage class pynetdicom knows, and each SOP class the node listed for the study
    # (a private or newer class it does not know: without a context its instance is refused
    # and, on Orthanc, the whole C-MOVE of its series fails)
    known = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    listed = sorted(set(_listed_classes(listing)) - set(known))
    scp.supported_contexts = [build_context(c, ALL_TRANSFER_SYNTAXES) for c in known + listed]
    scp.network_timeout = scp.acse_timeout = scp.dimse_timeout = node.timeout
    guard = _Guard(node)
    handlers = [(evt.EVT_C_STORE, _store_handler(sink, missing, guard, "C-MOVE")),
                (evt.EVT_CONN_OPEN, guard.on_open)]
    try:
        server = scp.start_server((bind, settings.storage_port), block=False, evt_handlers=handlers)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PacsError(f"our storage port {settings.storage_port} is in use (another program or "
                            f"retrieval): change it in the PACS settings") from None
        raise PacsError(f"cannot listen on storage port {settings.storage_port}: "
                        f"{e.strerror or e}") from None
    cx = _Assoc(node, settings, [build_context(MOVE)], guard=guard)
    try:
        with cx as assoc:
            if not _supports(assoc, MOVE):
                raise PacsError(f"{node.label()}: the node accepts neither C-GET nor C-MOVE from us")
            _run_retrieve(cx, MOVE,
                          lambda ds, m: assoc.send_c_move(ds, settings.ae_title, MOVE, msg_id=m),
                          _retrieve_requests(missing, counts, sink.result.study_uid), sink, "C-MOVE",
                          missing)
    finally:
        guard.close()  # what still comes to our SCP is refused, its associations cut
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
    cx = _Assoc(node, settings, contexts)
    with cx as assoc:
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        for n, it in enumerate(items):
            if cancel.is_set():
                return
            if (it.sop_class, it.transfer_syntax) not in accepted:
                on_result(it, "the node does not accept this kind of object "
                              f"(SOP class {it.sop_class}, transfer syntax {it.transfer_syntax})")
                continue
            size = getattr(it, "size", 0) or 0
            cx.guard.arm(2 * node.timeout + size / MIN_RATE, "no answer within {s} s")
            try:
                st = assoc.send_c_store(it.path)
            except (OSError, ValueError, AttributeError) as e:
                on_result(it, f"cannot send: {e}")
                continue
            finally:
                cx.guard.disarm()
            if not st or "Status" not in st:
                if cancel.is_set():
                    return
                lost = (f"{cx.guard.cause or f'no answer within {node.timeout:g} s'} "
                        f"(association aborted); not sent")
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
