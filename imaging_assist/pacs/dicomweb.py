"""DICOMweb with dicomweb-client: QIDO-RS (echo and find), WADO-RS (retrieve), STOW-RS (send).

Authentication (basic or bearer) goes on the requests session, never into a URL or a message.
Every HTTP or transport failure becomes one :class:`PacsError` line.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from typing import Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from dicomweb_client.api import DICOMwebClient

from .nodes import Node, PacsError
from .query import DEFAULT_LIMIT, Query, Rows, row_from_dataset
from .transfer import InstanceSink

logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its DEBUG lines echo URLs
WADO_ANY_SYNTAX = (("application/dicom", "*"),)  # the instance as stored, no transcoding
# A hostile or broken server must not make us wait or allocate without end.  ``node.timeout``
# bounds each read (requests) and a whole QIDO answer (watchdog); a WADO-RS part (one instance)
# must arrive within WADO_TIMEOUT_FACTOR x node.timeout.  Both budgets grow by one second per
# MIN_RATE bytes received, so a large instance on a slow but honest link is never cut, while a
# server that drips bytes (or sends without end) is.  Sizes are capped as below.
MAX_QIDO_BYTES = 64 << 20
MAX_INSTANCE_BYTES = 4 << 30
MAX_LISTED = 200_000  # instances in one QIDO instance listing
WADO_TIMEOUT_FACTOR = 10
MIN_RATE = 256 << 10  # bytes per second that extend a deadline (a 4 GiB instance: +4.4 h)

_tls = threading.local()


class _TooLarge(requests.RequestException):
    pass


class _Limits:
    """Deadline and byte budget of the request(s) made by this thread; ``rearm`` after each
    part of a stream.  A connection still reading past the deadline is shut down."""

    def __init__(self, seconds: float, max_bytes: int):
        self.seconds, self.max_bytes, self.expired = seconds, max_bytes, False
        self.content_type = ""  # of the last answer
        self.rearm()

    def rearm(self) -> None:
        self.start, self.nbytes = time.monotonic(), 0
        self.deadline = self.start + self.seconds

    def received(self, n: int) -> None:
        self.nbytes += n
        self.deadline = self.start + self.seconds + self.nbytes / MIN_RATE

    def __enter__(self):
        self._prev = getattr(_tls, "limits", None)
        _tls.limits = self
        return self

    def __exit__(self, *exc):
        _tls.limits = self._prev


class _Watchdog:
    """One thread for all connections: shuts the socket of one whose request is past its
    deadline (a drip-fed or endless answer), so the blocked read returns."""

    def __init__(self):
        self._conns: dict = {}
        self._lock = threading.Lock()
        self._thread = None

    def arm(self, conn, limits, sock) -> None:
        with self._lock:
            if limits is None or sock is None:
                self._conns.pop(conn, None)
                return
            self._conns[conn] = (limits, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dicomweb-watchdog",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            with self._lock:
                late = [c for c, (lim, _s) in self._conns.items() if now > lim.deadline]
                late = [self._conns.pop(c) for c in late]
            for lim, sock in late:
                lim.expired = True
                try:  # a socket already closed (answer complete) raises: nothing to stop
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_watchdog = _Watchdog()


class _WatchedMixin:
    """The socket is watched from the moment it is connected (or, reused, from the request), so
    the deadline also covers sending the request body to a server that reads it drop by drop;
    it is taken again when the request is sent: http.client hands it to the response and forgets
    it (``Connection: close``) before the body is read."""

    def _arm(self) -> None:
        _watchdog.arm(self, getattr(_tls, "limits", None), self.sock)

    def connect(self):
        super().connect()
        self._arm()

    def request(self, *a, **kw):
        self._arm()
        r = super().request(*a, **kw)
        self._arm()
        return r


class _HTTPConn(_WatchedMixin, HTTPConnection):
    pass


class _HTTPSConn(_WatchedMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConn


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConn


class _CountedRaw:
    """The urllib3 response with a byte budget (``_Limits.max_bytes`` since the last rearm)."""

    def __init__(self, raw, limits: _Limits):
        self._raw, self._limits = raw, limits

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def stream(self, *a, **kw):
        lim = self._limits
        for chunk in self._raw.stream(*a, **kw):
            lim.received(len(chunk))
            if lim.nbytes > lim.max_bytes:
                raise _TooLarge(f"answer larger than {lim.max_bytes >> 20} MiB")
            yield chunk


class _WildcardAdapter(HTTPAdapter):
    """Sends ``*`` in a query string as ``*``, not ``%2A``.

    Worked around: Orthanc 1.10 with its DICOMweb plugin 1.7 does not percent-decode QIDO
    values (``PatientName=DOE%2A`` matches nothing, ``PatientName=DOE*`` matches), while
    dicomweb-client percent-encodes every ``*``.  ``*`` is a legal query character (RFC 3986
    sub-delim), so sending it bare is correct for every server."""

    def send(self, request, *a, **kw):
        if "?" in request.url:
            base, query = request.url.split("?", 1)
            request.url = base + "?" + query.replace("%2A", "*").replace("%2a", "*")
        resp = super().send(request, *a, **kw)
        lim = getattr(_tls, "limits", None)
        if lim is not None:
            resp.raw = _CountedRaw(resp.raw, lim)
            lim.content_type = resp.headers.get("Content-Type", "")
        return resp

    def init_poolmanager(self, *a, **kw):
        super().init_poolmanager(*a, **kw)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def client(node: Node) -> DICOMwebClient:
    session = requests.Session()
    session.mount("http://", _WildcardAdapter())
    session.mount("https://", _WildcardAdapter())
    # Credentials live on the requests session only: dicomweb-client logs the headers it is
    # given (DEBUG), the session's own headers and auth it never sees or logs.
    if node.auth == "basic":
        session.auth = (node.username, node.password)
    elif node.auth == "bearer":
        session.headers["Authorization"] = f"Bearer {node.token}"
    c = DICOMwebClient(url=node.url, session=session, timeout=node.timeout)
    # dicomweb-client retries every exception 5 times with exponential waits by default (a
    # refused connection took 30 s to report): one attempt, one clear line.
    c.set_http_retry_params(retry=False)
    return c


def _fail(node: Node, what: str, e: Exception, limits: _Limits | None = None) -> PacsError:
    """One line for a failed request (no URL query string, no credentials)."""
    if limits is not None and limits.expired:
        return PacsError(f"{node.label()}: {what}: no complete answer within {limits.seconds:.3g} s")
    if isinstance(e, _TooLarge):
        return PacsError(f"{node.label()}: {what}: {e}")
    if isinstance(e, requests.HTTPError) and e.response is not None:
        code = e.response.status_code
        hint = {401: "authentication failed (check user/password or token)",
                403: "access denied", 404: "not found (is this the DICOMweb base URL?)",
                409: "rejected by the server", 413: "request too large for the server",
                503: "service unavailable"}.get(code, e.response.reason or "HTTP error")
        return PacsError(f"{node.label()}: {what}: HTTP {code} {hint}")
    if isinstance(e, requests.Timeout):
        return PacsError(f"{node.label()}: {what}: no answer within {node.timeout:g} s")
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return PacsError(f"{node.label()}: {what}: answer cut off before its end")
    if isinstance(e, requests.ConnectionError):
        text = str(e)
        if "timed out" in text:  # the request body not taken in time (urllib3 ProtocolError)
            return PacsError(f"{node.label()}: {what}: no answer within {node.timeout:g} s")
        if "Connection refused" in text or "Errno 111" in text:
            return PacsError(f"{node.label()}: connection refused (is the DICOMweb server running?)")
        if "Name or service not known" in text or "Failed to resolve" in text:
            return PacsError(f"{node.label()}: unknown host")
        return PacsError(f"{node.label()}: cannot connect ({type(e).__name__})")
    if isinstance(e, (ValueError, KeyError, TypeError, AttributeError, RecursionError)):
        return PacsError(f"{node.label()}: {what}: malformed response from the server "
                         f"({type(e).__name__})")
    return PacsError(f"{node.label()}: {what}: {type(e).__name__}")


_ERRORS = (requests.RequestException, ValueError, KeyError, TypeError, AttributeError,
           RecursionError)


def _call(node: Node, what: str, fn, *a, **kw):
    """One QIDO request: the whole answer within the node's timeout, at most MAX_QIDO_BYTES."""
    with _Limits(node.timeout, MAX_QIDO_BYTES) as lim:
        try:
            res = fn(*a, **kw)
        except _ERRORS as e:
            raise _fail(node, what, e, lim) from None
        if lim.expired:
            raise _fail(node, what, TimeoutError(), lim)
        return res


def echo(node: Node) -> None:
    """A QIDO request for one study: proves reachability, authentication and the API root."""
    res = _call(node, "QIDO-RS", client(node).search_for_studies, limit=1)
    if not isinstance(res, list):
        raise PacsError(f"{node.label()}: QIDO-RS: malformed response (not a JSON list)")


def _datasets(node: Node, what: str, answers):
    """The answers as pydicom datasets, converted one by one (the caller may stop early)."""
    from pydicom.dataset import Dataset
    if not isinstance(answers, list):
        raise PacsError(f"{node.label()}: {what}: malformed response (not a JSON list)")
    for a in answers:
        try:
            ds = Dataset.from_json(a)
        except Exception as e:  # noqa: BLE001 - whatever pydicom makes of a bad answer
            raise PacsError(f"{node.label()}: {what}: malformed response ({type(e).__name__})") from None
        yield ds


_PLAIN = re.compile(r"[^A-Za-z0-9*._-]")
_RANGE_KEYS = {"StudyDate", "PatientBirthDate"}


def _broadened(filters: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Values with spaces, ``^`` and other characters Orthanc's QIDO fails to match once
    percent-encoded are sent with ``*`` in their place; the exact filter is then applied here
    to the answers (``_matches``), so the result is the same as the exact query's."""
    sent, exact = {}, {}
    for k, v in filters.items():
        if k not in _RANGE_KEYS and k != "StudyInstanceUID" and _PLAIN.search(v):
            sent[k] = re.sub(r"\*+", "*", _PLAIN.sub("*", v))
            exact[k] = v
        else:
            sent[k] = v
    return sent, exact


def _matches(ds, exact: dict[str, str]) -> bool:
    """DICOM wildcard matching (``*``, ``?``); person names case-insensitive (as Orthanc)."""
    for k, pattern in exact.items():
        value = ds.get(k, "")
        value = "\\".join(map(str, value)) if isinstance(value, (list, tuple)) or \
            type(value).__name__ == "MultiValue" else str(value or "")
        pat = fnmatch.translate(pattern.replace("[", "[[]"))
        flags = re.IGNORECASE if k == "PatientName" else 0
        if not any(re.match(pat, v, flags) for v in value.split("\\")):
            return False
    return True


MAX_BROADENED_ROWS = 5000  # answers read (in pages) for a query the server cannot take as it is
QIDO_PAGE = 500  # answers per page of such a query (at least limit + 1)


def _qido(node: Node, c, q: Query, filters: dict, fields: list, limit, offset=None):
    kw = dict(search_filters=dict(filters), fields=fields, limit=limit)
    if offset:
        kw["offset"] = offset
    if q.level == "study":
        return _call(node, "QIDO-RS", c.search_for_studies, **kw)
    study = kw["search_filters"].pop("StudyInstanceUID", None)
    return _call(node, "QIDO-RS", c.search_for_series, study_instance_uid=study, **kw)


def _collect(node: Node, q: Query, ans, exact: dict, rows: Rows, seen: set, limit: int) -> int:
    """Append the answers that match ``exact`` to ``rows`` (once each); returns how many
    answers there were."""
    n = 0
    try:
        for ds in _datasets(node, "QIDO-RS", ans):
            n += 1
            row = row_from_dataset(ds, q.level)
            key = row.get("series_uid") or row.get("study_uid") or id(row)
            if key in seen or not _matches(ds, exact):
                continue
            seen.add(key)
            rows.append(row)
            if len(rows) > limit:  # a server that ignores limit= is not read to the end
                break
    except PacsError:
        raise
    except Exception as e:  # noqa: BLE001 - values pydicom accepted but cannot show
        raise PacsError(f"{node.label()}: QIDO-RS: malformed response ({type(e).__name__})") from None
    return n


def find(node: Node, query: Query, limit: int = DEFAULT_LIMIT) -> Rows:
    """QIDO-RS.  A value with characters outside ``[A-Za-z0-9*._-]`` is first sent as it is
    (percent-encoded, as PS3.18 says: a conformant server matches it exactly, with our limit).
    Orthanc 1.10 (DICOMweb plugin 1.7) percent-decodes no QIDO value: such a value matches
    nothing there (verified: ``M%C3%BCller*``, ``DOE%5EJOHN`` and even ``?`` for a non-ASCII
    letter find nothing), so when that exact query finds nothing the value is sent with ``*``
    in place of those characters and the exact filter is applied here (``_matches``), in pages
    of at least ``limit + 1`` answers, at most MAX_BROADENED_ROWS of them: past that the rows are marked
    truncated and a note says why (a bare ``*`` never fetches the whole archive)."""
    q = query.checked()
    c = client(node)
    sent, exact = _broadened(q.filters())
    fields = q.return_keys() + list(exact)
    rows, seen = Rows(), set()
    rows.limit = limit
    if exact:  # first as it is: exact on a conformant server
        _collect(node, q, _qido(node, c, q, q.filters(), fields, limit + 1), exact, rows, seen, limit)
    if not rows and exact:
        page, offset = max(limit + 1, QIDO_PAGE), 0
        while len(rows) <= limit:
            if offset >= MAX_BROADENED_ROWS:
                rows.truncated = True
                rows.notes = (f"{node.label()} did not match the filter as sent (a server that "
                              f"does not decode percent-encoded values, such as Orthanc 1.10): "
                              f"the first {offset} answers of a broader query "
                              f"({', '.join(f'{k}={v}' for k, v in sent.items() if k in exact)}) "
                              f"were searched; narrow the query with other filters",)
                break
            n = _collect(node, q, _qido(node, c, q, sent, fields, page, offset), exact, rows, seen,
                         limit)
            offset += page
            if n < page:  # the last page
                break
        if rows and not rows.notes:
            rows.notes = (f"{node.label()} did not match the filter as sent (a server that does "
                          f"not decode percent-encoded values, such as Orthanc 1.10): a broader "
                          f"query was filtered here",)
    elif not exact:
        _collect(node, q, _qido(node, c, q, sent, fields, limit + 1), exact, rows, seen, limit)
    if len(rows) > limit:
        rows.truncated = True
        del rows[limit:]
    return rows


def list_instances(node: Node, study_uid: str, series_uids=()) -> list[tuple[str, str, str]]:
    c = client(node)
    out = []
    for series in list(series_uids) or [None]:
        ans = _call(node, "QIDO-RS (instances)", c.search_for_instances,
                    study_instance_uid=study_uid, series_instance_uid=series,
                    fields=["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
        if isinstance(ans, list) and len(out) + len(ans) > MAX_LISTED:
            raise PacsError(f"{node.label()}: QIDO-RS (instances): more than {MAX_LISTED} "
                            f"instances listed for one study")
        try:
            for ds in _datasets(node, "QIDO-RS (instances)", ans):
                if str(ds.get("StudyInstanceUID", study_uid)) != study_uid:
                    continue  # an instance of another study: never retrieved as this one
                s = str(ds.get("SeriesInstanceUID", series or ""))
                if series and s != series:
                    continue  # not in the series asked for
                out.append((s, str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", ""))))
        except PacsError:
            raise
        except Exception as e:  # noqa: BLE001 - values pydicom accepted but cannot show
            raise PacsError(f"{node.label()}: QIDO-RS (instances): malformed response "
                            f"({type(e).__name__})") from None
    return out


def _encode(ds) -> bytes:
    from pydicom import dcmwrite
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def retrieve(node: Node, sink: InstanceSink, listing, missing: dict[str, list[str]]) -> None:
    """WADO-RS: a wholly missing series in one multipart stream; otherwise (resume), or what the
    stream did not bring, instance by instance.  Each instance is written as soon as its part has
    arrived, and only when its Study, Series and SOP Instance UIDs are the ones asked for."""
    c = client(node)
    study = sink.result.study_uid
    counts: dict[str, int] = {}
    for series, _sop, _c in listing:
        counts[series] = counts.get(series, 0) + 1
    for series, sops in missing.items():
        if sink.cancel.is_set():
            return
        wanted, seen = set(sops), set()
        err = None
        if len(sops) == counts.get(series):
            err, malformed = _receive(node, sink, series, wanted, seen, lambda s=series: c.iter_series(
                study, s, media_types=WADO_ANY_SYNTAX))
            if err and not malformed:  # the transfer broke: not worth asking one by one
                for sop in sorted(wanted):
                    sink.fail(sop, err, series)
                continue
        for sop in [s for s in sops if s in wanted]:
            if sink.cancel.is_set():
                return
            err, malformed = _receive(node, sink, series, wanted, seen, lambda s=series, i=sop: [
                c.retrieve_instance(study, s, i, media_types=WADO_ANY_SYNTAX)])
            if err and malformed and sop in wanted:
                wanted.discard(sop)
                sink.fail(sop, err, series)
            elif err and not malformed:
                for other in sorted(wanted):
                    sink.fail(other, err, series)
                wanted.clear()
                break
        for sop in sorted(wanted):
            sink.fail(sop, "listed by QIDO but not returned by WADO-RS", series)


def _receive(node: Node, sink: InstanceSink, series: str, wanted: set, seen: set, parts):
    """Store the asked-for instances among ``parts()``.  Returns (error line or None, whether
    the error is a malformed part rather than a failed transfer)."""
    study = sink.result.study_uid
    extra, max_extra = 0, 16 + len(wanted)  # a stream of parts never asked for is not read for ever
    with _Limits(node.timeout * WADO_TIMEOUT_FACTOR, MAX_INSTANCE_BYTES) as lim:
        try:
            for ds in parts():
                lim.rearm()  # each instance gets the whole time and size budget
                if sink.cancel.is_set():
                    return None, False
                sop = str(ds.get("SOPInstanceUID", ""))
                if sop in seen or sop not in wanted:
                    extra += 1
                    if extra > max_extra:
                        return (f"{node.label()}: WADO-RS: more than {max_extra} parts that were not asked "
                                "for: the stream was stopped"), False
                if sop in seen:
                    sink.result.notes.append(f"the server sent {sop} twice: the copy was ignored")
                    continue
                if sop not in wanted:
                    sink.fail(sop or "?", "the server sent an instance that was not asked for", series)
                    continue
                seen.add(sop)
                wanted.discard(sop)
                if (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))) \
                        != (study, series):
                    sink.fail(sop, "the server sent it with another Study or Series Instance UID "
                              "(not stored)", series)
                    continue
                try:
                    data = _encode(ds)
                except Exception as e:  # noqa: BLE001 - a part pydicom cannot re-encode
                    sink.fail(sop, f"malformed instance received ({type(e).__name__})", series)
                    continue
                sink.write(series, sop, data)
        except Exception as e:  # noqa: BLE001 - transport, or a part that is not DICOM
            if lim.expired or isinstance(e, (requests.RequestException, RecursionError)):
                return str(_fail(node, "WADO-RS", e, lim)), False
            return f"malformed instance received ({type(e).__name__})", True
        if lim.expired:
            return str(_fail(node, "WADO-RS", TimeoutError(), lim)), False
    return None, False


def store(node: Node, items: list, on_result: Callable, cancel: threading.Event,
          batch_bytes: int = 64 << 20) -> None:
    """STOW-RS in batches per study (at most ``batch_bytes`` read at once).  On a 200 or 202
    answer the Failed SOP Sequence names the instances the server rejected and the rest of the
    request counts as sent; on an error answer (400, 409, 5xx...) every instance of the request
    fails with the HTTP status (see below).  Either way the next batch goes on."""
    from pydicom import dcmread
    c = client(node)
    by_study: dict[str, list] = {}
    for it in items:
        by_study.setdefault(it.study_uid, []).append(it)
    for study, group in by_study.items():
        batch, size = [], 0
        for i, it in enumerate(group):
            batch.append(it)
            size += it.size
            if size < batch_bytes and i < len(group) - 1:
                continue
            if cancel.is_set():
                return
            datasets, sendable = [], []
            for b in batch:
                try:
                    datasets.append(dcmread(b.path))
                    sendable.append(b)
                except Exception as e:  # noqa: BLE001 - the file changed since it was listed
                    on_result(b, f"cannot read: {type(e).__name__}")
            batch, size = [], 0
            if not datasets:
                continue
            # Sending the batch and the whole answer within 10 x the node's timeout, plus one
            # second per MIN_RATE bytes sent (a server that reads or answers drop by drop is cut).
            sent = sum(b.size for b in sendable)
            with _Limits(node.timeout * WADO_TIMEOUT_FACTOR + sent / MIN_RATE, MAX_QIDO_BYTES) as lim:
                try:
                    resp = c.store_instances(datasets, study_instance_uid=study)
                    if lim.expired:
                        raise TimeoutError
                    failed = _stow_failures(resp, lim.content_type)
                except requests.HTTPError as e:
                    # PS3.18 10.5.3: only 200 and 202 may mean (partly) stored; 400, 409 and the
                    # other error answers mean that nothing was, whatever the body holds (even {}).
                    # Each instance fails with the HTTP status, its Failed SOP Sequence item, if
                    # any, giving the reason.  One exception, for Orthanc 1.10, which answers 409
                    # to a request stored in part: an instance the answer names as stored
                    # (Referenced SOP Sequence) counts as sent (send's read-back then checks it).
                    err = str(_fail(node, "STOW-RS", e, lim))
                    named, stored = _stow_body(e)
                    code = e.response.status_code if e.response is not None else "error"
                    for b in sendable:
                        if b.sop_uid in stored and b.sop_uid not in named:
                            on_result(b, None)
                        elif b.sop_uid in named:
                            on_result(b, f"{named[b.sop_uid]} (HTTP {code}; not stored)")
                        else:
                            on_result(b, f"{err}; not stored")
                    continue
                except _NotStow as e:
                    err = f"{node.label()}: STOW-RS: {e}; not known to be stored"
                    for b in sendable:
                        on_result(b, err)
                    continue
                except (*_ERRORS, TimeoutError, ET.ParseError) as e:
                    err = str(_fail(node, "STOW-RS", e, lim))
                    for b in sendable:
                        on_result(b, err)
                    continue
            for b in sendable:
                on_result(b, failed.get(b.sop_uid))


def _stow_failures(resp, content_type: str) -> dict[str, str]:
    """SOP Instance UID -> reason for each instance the STOW-RS answer's Failed SOP Sequence names.
    Raises ValueError for an answer that is not a Store Instances Response (an HTML login page
    or a proxy's error page answered 200 by mistake: nothing can be said about the instances)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype and ctype not in _STOW_TYPES:
        raise _NotStow(f"the answer is not a STOW-RS response ({ctype[:40]})")
    failed = {}
    for f in resp.get("FailedSOPSequence", []) or []:
        reason = f.get("FailureReason", None)
        text = "rejected by the server"
        if isinstance(reason, int) and 0 <= reason <= 0xFFFF:
            text += f" (failure reason 0x{reason:04X})"
        elif reason is not None:
            text += " (failure reason not readable)"
        failed[str(f.get("ReferencedSOPInstanceUID", ""))] = text
    return failed


class _NotStow(ValueError):
    pass


_STOW_TYPES = {"application/dicom+json", "application/json", "application/dicom+xml",
               "application/xml", "text/xml"}


def _stow_body(e: requests.HTTPError) -> tuple[dict[str, str], set[str]]:
    """An error answer's Failed SOP Sequence (SOP Instance UID -> reason, as
    :func:`_stow_failures`) and the SOP Instance UIDs its Referenced SOP Sequence names as
    stored; both empty when the body is not a usable Store Instances Response."""
    from pydicom.dataset import Dataset
    try:
        ds = Dataset.from_json(e.response.json())
        named = _stow_failures(ds, "application/dicom+json")
        stored = {str(r.get("ReferencedSOPInstanceUID", ""))
                  for r in (ds.get("ReferencedSOPSequence", []) or [])}
        return named, stored - {""}
    except Exception:  # noqa: BLE001 - no usable body: the HTTP status for every instance
        return {}, set()
