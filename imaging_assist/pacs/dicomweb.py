"""DICOMweb with dicomweb-client: QIDO-RS (echo and find), WADO-RS (retrieve), STOW-RS (send).

Authentication (basic or bearer) goes on the requests session, never into a URL or a message.
Every HTTP or transport failure becomes one :class:`PacsError` line.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import re
import threading
from typing import Callable

import requests
from requests.adapters import HTTPAdapter
from dicomweb_client.api import DICOMwebClient

from .nodes import Node, PacsError
from .query import DEFAULT_LIMIT, Query, Rows, row_from_dataset
from .transfer import InstanceSink

logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its DEBUG lines echo URLs
WADO_ANY_SYNTAX = (("application/dicom", "*"),)  # the instance as stored, no transcoding


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
        return super().send(request, *a, **kw)


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


def _fail(node: Node, what: str, e: Exception) -> PacsError:
    """One line for a failed request (no URL query string, no credentials)."""
    if isinstance(e, requests.HTTPError) and e.response is not None:
        code = e.response.status_code
        hint = {401: "authentication failed (check user/password or token)",
                403: "access denied", 404: "not found (is this the DICOMweb base URL?)",
                409: "rejected by the server", 413: "request too large for the server",
                503: "service unavailable"}.get(code, e.response.reason or "HTTP error")
        return PacsError(f"{node.label()}: {what}: HTTP {code} {hint}")
    if isinstance(e, requests.Timeout):
        return PacsError(f"{node.label()}: {what}: no answer within {node.timeout:g} s")
    if isinstance(e, requests.ConnectionError):
        text = str(e)
        if "Connection refused" in text or "Errno 111" in text:
            return PacsError(f"{node.label()}: connection refused (is the DICOMweb server running?)")
        if "Name or service not known" in text or "Failed to resolve" in text:
            return PacsError(f"{node.label()}: unknown host")
        return PacsError(f"{node.label()}: cannot connect ({type(e).__name__})")
    if isinstance(e, (ValueError, KeyError, TypeError, AttributeError)):
        return PacsError(f"{node.label()}: {what}: malformed response from the server "
                         f"({type(e).__name__})")
    return PacsError(f"{node.label()}: {what}: {type(e).__name__}")


def _call(node: Node, what: str, fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as e:
        raise _fail(node, what, e) from None


def echo(node: Node) -> None:
    """A QIDO request for one study: proves reachability, authentication and the API root."""
    res = _call(node, "QIDO-RS", client(node).search_for_studies, limit=1)
    if not isinstance(res, list):
        raise PacsError(f"{node.label()}: QIDO-RS: malformed response (not a JSON list)")


def _datasets(node: Node, what: str, answers) -> list:
    from pydicom.dataset import Dataset
    if not isinstance(answers, list):
        raise PacsError(f"{node.label()}: {what}: malformed response (not a JSON list)")
    try:
        return [Dataset.from_json(a) for a in answers]
    except Exception as e:  # noqa: BLE001 - whatever pydicom makes of a bad answer
        raise PacsError(f"{node.label()}: {what}: malformed response ({type(e).__name__})") from None


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


def find(node: Node, query: Query, limit: int = DEFAULT_LIMIT) -> Rows:
    q = query.checked()
    c = client(node)
    filters, exact = _broadened(q.filters())
    fields = q.return_keys() + list(exact)
    # Broadened values are filtered here afterwards, so the server's limit cannot apply to them.
    server_limit = None if exact else limit + 1
    if q.level == "study":
        ans = _call(node, "QIDO-RS", c.search_for_studies, search_filters=filters, fields=fields,
                    limit=server_limit)
    else:
        study = filters.pop("StudyInstanceUID", None)
        ans = _call(node, "QIDO-RS", c.search_for_series, study_instance_uid=study,
                    search_filters=filters, fields=fields, limit=server_limit)
    rows = Rows(row_from_dataset(ds, q.level) for ds in _datasets(node, "QIDO-RS", ans)
                if _matches(ds, exact))
    rows.limit = limit
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
        for ds in _datasets(node, "QIDO-RS (instances)", ans):
            out.append((str(ds.get("SeriesInstanceUID", series or "")),
                        str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", ""))))
    return out


def _encode(ds) -> bytes:
    from pydicom import dcmwrite
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def retrieve(node: Node, sink: InstanceSink, listing, missing: dict[str, list[str]]) -> None:
    """WADO-RS: a wholly missing series in one multipart stream; otherwise instance by instance
    (resume).  Each instance is written as soon as its part has arrived."""
    c = client(node)
    study = sink.result.study_uid
    counts: dict[str, int] = {}
    for series, _sop, _c in listing:
        counts[series] = counts.get(series, 0) + 1
    for series, sops in missing.items():
        if sink.cancel.is_set():
            return
        wanted = set(sops)
        try:
            if len(sops) == counts.get(series):
                parts = c.iter_series(study, series, media_types=WADO_ANY_SYNTAX)
            else:
                parts = (c.retrieve_instance(study, series, sop, media_types=WADO_ANY_SYNTAX)
                         for sop in sops)
            for ds in parts:
                if sink.cancel.is_set():
                    return
                sop = str(ds.get("SOPInstanceUID", ""))
                if sop not in wanted:
                    sink.fail(sop or "?", "the server sent an instance that was not asked for", series)
                    continue
                wanted.discard(sop)
                try:
                    data = _encode(ds)
                except Exception as e:  # noqa: BLE001 - a part pydicom cannot re-encode
                    sink.fail(sop, f"malformed instance received ({type(e).__name__})", series)
                    continue
                sink.write(series, sop, data)
        except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as e:
            err = _fail(node, "WADO-RS", e)
            for sop in wanted:
                sink.fail(sop, str(err), series)
            wanted.clear()
        for sop in wanted:
            sink.fail(sop, "listed by QIDO but not returned by WADO-RS", series)


def store(node: Node, items: list, on_result: Callable, cancel: threading.Event,
          batch_bytes: int = 64 << 20) -> None:
    """STOW-RS in batches per study (at most ``batch_bytes`` read at once).  The response's
    Failed SOP Sequence names the instances the server rejected; the rest of the batch goes on."""
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
            try:
                resp = c.store_instances(datasets, study_instance_uid=study)
            except requests.HTTPError as e:
                resp = _stow_body(e)
                if resp is None:
                    err = str(_fail(node, "STOW-RS", e))
                    for b in sendable:
                        on_result(b, err)
                    continue
            except (requests.RequestException, ValueError, KeyError, TypeError) as e:
                err = str(_fail(node, "STOW-RS", e))
                for b in sendable:
                    on_result(b, err)
                continue
            failed = {}
            for f in resp.get("FailedSOPSequence", []) or []:
                reason = f.get("FailureReason", None)
                failed[str(f.get("ReferencedSOPInstanceUID", ""))] = (
                    f"rejected by the server (failure reason 0x{int(reason):04X})"
                    if reason is not None else "rejected by the server")
            for b in sendable:
                on_result(b, failed.get(b.sop_uid))


def _stow_body(e: requests.HTTPError):
    """A 409 answer still lists which instances failed and why."""
    from pydicom.dataset import Dataset
    try:
        return Dataset.from_json(e.response.json())
    except Exception:  # noqa: BLE001 - no usable body: the caller reports the HTTP status
        return None
