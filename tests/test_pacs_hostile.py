"""The PACS client against a hostile DICOMweb server (started here, no Orthanc): every malformed,
endless or lying answer gives one PacsError line or a per-instance failure, within seconds, and
nothing is written outside the destination folder or under the wrong study/series."""

import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging_assist.pacs import api, dicomweb
from imaging_assist.pacs.nodes import Node, PacsError
from imaging_assist.pacs.query import Query

STUDY = "1.2.3.4.100"
SERIES = "1.2.3.4.100.1"
SOPS = ["1.2.3.4.100.1.1", "1.2.3.4.100.1.2", "1.2.3.4.100.1.3"]
CT = "1.2.840.10008.5.1.4.1.1.2"
TIMEOUT = 0.5
FAST = 6.0  # seconds any call may take against the hostile server


def _dcm(sop, study=STUDY, series=SERIES) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = sop if len(sop) <= 64 else generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName = "HOSTILE^TEST"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _inst(sop, series=SERIES):
    return {"0020000E": {"vr": "UI", "Value": [series]}, "00080018": {"vr": "UI", "Value": [sop]},
            "00080016": {"vr": "UI", "Value": [CT]}}


def _multipart(parts, boundary="BOUNDARY"):
    body = b""
    for p in parts:
        body += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + p + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


MP = 'multipart/related; type="application/dicom"; boundary=BOUNDARY'


class Hostile:
    """``self.qido`` and ``self.wado``: (content type, body or callable(handler))."""

    def __init__(self):
        self.qido = ("application/dicom+json", json.dumps([_inst(s) for s in SOPS]).encode())
        self.wado = (MP, _multipart([_dcm(s) for s in SOPS]))
        self.wado_instance = None  # per-instance answers: sop -> (ctype, body)
        self.stow = (J, json.dumps({}).encode())  # the STOW-RS answer
        self.posted = 0  # bytes of STOW-RS request bodies received
        self.read_drip = 0.0  # seconds between reads of 64 KiB of a STOW-RS request body
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.endswith(("/studies", "/series", "/instances")):
                    answer = outer.qido
                elif "/instances/" in path and outer.wado_instance is not None:
                    answer = outer.wado_instance(path.rsplit("/", 1)[-1])
                else:
                    answer = outer.wado
                self.answer(answer)

            def do_POST(self):
                if outer.read_drip:  # reads the body slowly, never answers
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < 30:
                        got = self.connection.recv(1 << 16)
                        if not got:
                            return
                        outer.posted += len(got)
                        time.sleep(outer.read_drip)
                    return
                n = int(self.headers.get("Content-Length") or 0)
                while n > 0:  # read the request whole before answering, as a server does
                    got = self.rfile.read(min(n, 1 << 16))
                    if not got:
                        return
                    outer.posted += len(got)
                    n -= len(got)
                self.answer(outer.stow)

            def answer(self, answer):
                ctype, body = answer
                try:
                    if callable(body):
                        body(self)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.node = Node("evil", "dicomweb", url=f"http://127.0.0.1:{self.httpd.server_port}/dw",
                         timeout=TIMEOUT).validate()


@pytest.fixture
def srv():
    s = Hostile()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _raw(ctype, body, length=None, close=True):
    """An answer written by hand: a wrong Content-Length, no length (ends at close)."""
    def f(h):
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        if length is not None:
            h.send_header("Content-Length", str(length))
        if close:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()
        h.close_connection = True
    return f


def _endless(ctype, head=b"", drip=None):
    """A body that never ends: fast (runaway allocation) or one byte at a time (slow drip)."""
    def f(h):
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(head)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 30:
                h.wfile.write(b"x" if drip else b"[" * 65536 if ctype.endswith("json") else b"A" * 65536)
                h.wfile.flush()
                if drip:
                    time.sleep(drip)
        except OSError:
            pass
        h.close_connection = True
    return f


def _endless_parts():
    """A multipart answer of valid DICOM parts, none of them asked for, sent without end."""
    parts = [b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n" + _dcm(f"1.2.3.4.777.{n}") + b"\r\n"
             for n in range(64)]  # made once: the server sends as fast as the client reads

    def f(h):
        h.send_response(200)
        h.send_header("Content-Type", MP)
        h.send_header("Connection", "close")
        h.end_headers()
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 30:
                h.wfile.write(b"".join(parts))
                h.wfile.flush()
        except OSError:
            pass
        h.close_connection = True
    return f


def _one_line_or_rows(call):
    t0 = time.monotonic()
    try:
        out = call()
    except PacsError as e:
        msg = str(e)
        assert "\n" not in msg and msg and len(msg) < 400, msg
        out = e
    assert time.monotonic() - t0 < FAST, f"took {time.monotonic() - t0:.1f} s"
    return out


J = "application/dicom+json"
QIDO_GARBAGE = {
    "value_not_list": (J, b'[{"00100010": {"vr": "PN", "Value": "DOE"}}]'),
    "pn_number": (J, b'[{"00100010": {"vr": "PN", "Value": [5]}}]'),
    "pn_dict_number": (J, b'[{"00100010": {"vr": "PN", "Value": [{"Alphabetic": 7}]}}]'),
    "vr_number": (J, b'[{"00100010": {"vr": 5, "Value": ["x"]}}]'),
    "unknown_vr": (J, b'[{"00100010": {"vr": "ZZ", "Value": ["x"]}}]'),
    "bad_tag": (J, b'[{"ZZZZZZZZ": {"vr": "LO", "Value": ["x"]}}]'),
    "element_not_dict": (J, b'[{"00100010": 5}]'),
    "item_not_dict": (J, b'[5, "x", null]'),
    "answer_dict": (J, b'{"a": 1}'),
    "answer_number": (J, b"5"),
    "answer_string": (J, b'"hello"'),
    "answer_null": (J, b"null"),
    "uid_wrong_type": (J, b'[{"0020000D": {"vr": "UI", "Value": [{"a": 1}]}}]'),
    "int_field_string": (J, b'[{"00201208": {"vr": "IS", "Value": ["many"]}}]'),
    "us_as_string": (J, b'[{"00280010": {"vr": "US", "Value": ["x"]}}]'),
    "sq_not_list": (J, b'[{"00081115": {"vr": "SQ", "Value": 3}}]'),
    "sq_items_garbage": (J, b'[{"00081115": {"vr": "SQ", "Value": [1, [2]]}}]'),
    "inline_binary_garbage": (J, b'[{"7FE00010": {"vr": "OB", "InlineBinary": "!!!"}}]'),
    "bulkdata_uri": (J, b'[{"7FE00010": {"vr": "OB", "BulkDataURI": "file:///etc/passwd"}}]'),
    "huge_string": (J, b'[{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "' + b"A" * (20 << 20)
                          + b'"}]}}]'),
    "million_results": (J, b"[" + b"{}," * (10**6 - 1) + b"{}]"),
    "deep_nesting": (J, b"[" * 200000 + b"]" * 200000),
    "deep_sq": (J, ('[' + '{"00081115": {"vr": "SQ", "Value": [' * 3000 + '{}' + ']}}' * 3000
                    + ']').encode()),
    "invalid_utf8": (J, b'[{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "\xff\xfe\xc3"}]}}]'),
    "html": ("text/html", b"<html><body>Login</body></html>"),
    "truncated": (J, b'[{"0020000D": {"vr": "UI", "Val'),
    "empty": (J, b""),
    "short_body_long_length": (J, _raw(J, b'[{"0020000D"', length=10**12)),
    "no_length_truncated": (J, _raw(J, b'[{"0020000D": {"vr"')),
    "endless": (J, _endless(J)),
    "drip": (J, _endless(J, b"[", drip=0.05)),
}


@pytest.mark.parametrize("case", sorted(QIDO_GARBAGE))
def test_qido_garbage_is_one_line(srv, case, tmp_path):
    srv.qido = QIDO_GARBAGE[case]
    for level in ("study", "series"):
        out = _one_line_or_rows(lambda: api.find(srv.node, Query(level=level), limit=10))
        if not isinstance(out, Exception):
            assert isinstance(out, list) and len(out) <= 10
            assert all(isinstance(r, dict) for r in out)
    _one_line_or_rows(lambda: api.list_instances(srv.node, STUDY, [SERIES]))
    res = _one_line_or_rows(lambda: api.get(srv.node, STUDY, tmp_path / "out"))
    _check_tree(tmp_path)
    if not isinstance(res, Exception):
        assert res.written <= 3


def _check_tree(tmp_path):
    """Nothing outside ``out``; every file is an asked-for instance of the asked study/series."""
    for root, dirs, files in os.walk(tmp_path):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, tmp_path / "out")
            assert not rel.startswith(".."), p
            assert rel.startswith(f"{STUDY}/{SERIES}/") and not f.endswith(".partial"), rel
            ds = pydicom.dcmread(p)
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (STUDY, SERIES), rel
            assert f == f"{ds.SOPInstanceUID}.dcm" and ds.SOPInstanceUID in SOPS, rel


def test_good_server_retrieves_everything(srv, tmp_path):
    res = api.get(srv.node, STUDY, tmp_path / "out")
    assert (res.written, res.failures) == (3, [])
    _check_tree(tmp_path)


OTHER = "1.2.3.4.999"
WADO_GARBAGE = {
    # name: (content type, body, instances that must be stored); the per-instance answers
    # (asked for what a broken stream did not bring) are as hostile as the series answer
    "no_boundary": ('multipart/related; type="application/dicom"', _multipart([_dcm(s) for s in SOPS]), 0),
    "wrong_boundary": (MP, _multipart([_dcm(s) for s in SOPS], "OTHER"), 0),
    "truncated_part": (MP, _multipart([_dcm(SOPS[0]), _dcm(SOPS[1])])[:-300], 1),
    "not_dicom_part": (MP, _multipart([_dcm(SOPS[0]), b"hello, not DICOM" * 10, _dcm(SOPS[2])]), 1),
    "empty_part": (MP, _multipart([_dcm(SOPS[0]), b"", _dcm(SOPS[2])]), 1),
    "other_study": (MP, _multipart([_dcm(SOPS[0]), _dcm(SOPS[1], study=OTHER), _dcm(SOPS[2])]), 2),
    "other_series": (MP, _multipart([_dcm(SOPS[0]), _dcm(SOPS[1], series=OTHER), _dcm(SOPS[2])]), 2),
    "no_study_uid": (MP, _multipart([_dcm(SOPS[0]), _dcm(SOPS[1], study=None), _dcm(SOPS[2])]), 2),
    "path_sop": (MP, _multipart([_dcm(SOPS[0]), _dcm("../../etc/x"), _dcm("a/b\\c"), _dcm(SOPS[2])]), 2),
    "unasked_sop": (MP, _multipart([_dcm(SOPS[0]), _dcm("1.2.3.4.5"), _dcm(SOPS[2])]), 2),
    "duplicate_sop": (MP, _multipart([_dcm(SOPS[0]), _dcm(SOPS[0]), _dcm(SOPS[2])]), 2),
    "not_multipart": ("text/plain", b"hello", 0),
    "json_instead": (J, b"[]", 0),
    "single_dicom": ("application/dicom", _dcm(SOPS[0]), 1),
    "single_garbage": ("application/dicom", b"garbage", 0),
    "huge_length": (MP, _raw(MP, _multipart([_dcm(SOPS[0])])[:-12], length=10**12), 0),
    "endless_part": (MP, _endless(MP, b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n"), 0),
    "drip": (MP, _endless(MP, _multipart([_dcm(SOPS[0])])[:-12], drip=0.05), 0),
    # valid parts without end, none asked for: the stream is stopped, not read for ever
    "endless_unasked_parts": (MP, _endless_parts(), 0),
}


@pytest.mark.parametrize("case", sorted(WADO_GARBAGE))
def test_wado_garbage_is_a_per_instance_failure(srv, case, tmp_path, monkeypatch):
    monkeypatch.setattr(dicomweb, "MAX_INSTANCE_BYTES", 8 << 20)
    ctype, body, stored = WADO_GARBAGE[case]
    srv.wado = (ctype, body)
    srv.wado_instance = lambda sop: (ctype, body)  # the per-instance fallback is as hostile
    res = _one_line_or_rows(lambda: api.get(srv.node, STUDY, tmp_path / "out"))
    _check_tree(tmp_path)
    if isinstance(res, Exception):
        assert stored == 0, res
        return
    assert res.written >= stored, res.to_dict()
    assert res.written + len({f.sop_instance_uid for f in res.failures if f.sop_instance_uid in SOPS}) == 3, \
        res.to_dict()
    for f in res.failures:
        assert f.reason and "\n" not in f.reason, f


def test_hostile_listing_of_another_series_is_not_stored(srv, tmp_path):
    srv.qido = (J, json.dumps([_inst(SOPS[0]), _inst("1.2.3.4.100.9.1", series=OTHER),
                               _inst("../../x"), _inst(SOPS[1], series="../..")]).encode())
    srv.wado_instance = lambda sop: (MP, _multipart([_dcm(sop)]))
    res = _one_line_or_rows(lambda: api.get(srv.node, STUDY, tmp_path / "out", series_uids=[SERIES]))
    _check_tree(tmp_path)
    assert res.written >= 1


def test_upload_timeout_is_not_called_a_connection_failure(srv, tmp_path):
    """A server that takes nothing of the request body: the send times out; the line says so."""
    import threading
    srv.read_drip = 30.0
    got = {}
    dicomweb.store(srv.node, _stow_items(tmp_path, pad=8_000_000),
                   lambda it, err: got.__setitem__(it.sop_uid, err), threading.Event())
    assert all("within 0.5 s" in e and "connect" not in e for e in got.values()), got


def _stow_items(tmp_path, n=3, pad=0):
    from imaging_assist.pacs import send as sendmod
    folder = tmp_path / "send"
    folder.mkdir()
    for s in SOPS[:n]:
        ds = pydicom.dcmread(io.BytesIO(_dcm(s)))
        if pad:
            ds.EncapsulatedDocument = b"\0" * pad
        ds.save_as(folder / f"{s}.dcm", enforce_file_format=True)
    items, skipped = sendmod.collect([str(folder)])
    assert len(items) == n and not skipped
    return items


def _failed_sop(reason):
    return json.dumps({"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": [SOPS[1]]}, "00081197": reason}]}}).encode()


STOW_GARBAGE = {
    # name: (content type, body, whether the instances not named as failed count as sent)
    "html": ("text/html", b"<html>Login</html>", False),
    "not_json": (J, b"{{{", False),
    "json_list": (J, b"[1, 2]", False),
    "truncated": (J, b'{"00081198": {"vr": "SQ", "Val', False),
    "reason_not_number": (J, _failed_sop({"vr": "US", "Value": ["many"]}), False),
    "reason_string": (J, _failed_sop({"vr": "LO", "Value": ["many"]}), True),
    "reason_huge": (J, _failed_sop({"vr": "US", "Value": [10**30]}), True),
    "reason_list": (J, _failed_sop({"vr": "US", "Value": [[1, 2]]}), True),
    "failed_not_sq": (J, json.dumps({"00081198": {"vr": "SQ", "Value": 5}}).encode(), False),
    "deep_nesting": (J, b"[" * 200000 + b"]" * 200000, False),
    "huge_length": (J, _raw(J, b'{"0008', length=10**12), False),
    "endless": (J, _endless(J), False),
    "drip": (J, _endless(J, b"{", drip=0.05), False),
}


@pytest.mark.parametrize("case", sorted(STOW_GARBAGE))
def test_stow_garbage_answer_is_one_line_per_instance(srv, case, tmp_path):
    """A STOW-RS answer that is endless, dripped, not JSON or holds nonsense: every instance of
    the request gets a one-line result within seconds; none is counted as sent unless the
    answer says which ones failed."""
    import threading
    ctype, body, parsed = STOW_GARBAGE[case]
    srv.stow = (ctype, body)
    items = _stow_items(tmp_path)
    got = {}
    t0 = time.monotonic()
    dicomweb.store(srv.node, items, lambda it, err: got.__setitem__(it.sop_uid, err), threading.Event())
    assert time.monotonic() - t0 < FAST, f"took {time.monotonic() - t0:.1f} s"
    assert set(got) == set(SOPS), got
    for sop, err in got.items():
        assert err is None or (err and "\n" not in err and len(err) < 400), (sop, err)
    if parsed:  # a usable Failed SOP Sequence with a nonsense reason: that one failed, the rest sent
        assert got[SOPS[1]].startswith("rejected by the server"), got
        assert got[SOPS[0]] is None and got[SOPS[2]] is None, got
    else:
        assert all(err for err in got.values()), got


def test_stow_to_a_server_that_reads_drop_by_drop_ends(srv, tmp_path, monkeypatch):
    """The 24 MB request body goes (in dicomweb-client's 1 MB chunks) to a server that reads
    64 KiB every 10 ms: each chunk is taken within the socket timeout, so only the deadline, which
    covers sending too, ends the call (2 s here; 4.7 s, the whole upload, when the deadline was
    only watched once the request had been sent), with one line per instance."""
    import threading
    monkeypatch.setattr(dicomweb, "MIN_RATE", 1 << 40)  # no size bonus
    monkeypatch.setattr(dicomweb, "WADO_TIMEOUT_FACTOR", 4)
    srv.read_drip = 0.01
    items = _stow_items(tmp_path, pad=8_000_000)
    got = {}
    t0 = time.monotonic()
    dicomweb.store(srv.node, items, lambda it, err: got.__setitem__(it.sop_uid, err), threading.Event())
    took = time.monotonic() - t0
    assert took < 3.5, f"took {took:.1f} s"
    assert srv.posted < 20_000_000, srv.posted
    assert set(got) == set(SOPS) and all(e and "\n" not in e for e in got.values()), got


def test_stow_good_answer_counts_as_sent(srv, tmp_path):
    import threading
    srv.stow = (J + "; charset=utf-8", b"{}")
    got = {}
    dicomweb.store(srv.node, _stow_items(tmp_path), lambda it, err: got.__setitem__(it.sop_uid, err),
                   threading.Event())
    assert got == {s: None for s in SOPS}


@pytest.mark.parametrize("body, named", [
    (_failed_sop({"vr": "US", "Value": [0xC000]}), True),  # 409 naming one failed instance
    (b"<html>conflict</html>", False),  # 409 without a usable body: the HTTP status for all
])
def test_stow_409_fails_the_instances_it_names(srv, tmp_path, body, named):
    """PS3.18: a 409 means nothing of the request was stored.  Every instance fails with the
    status; the one its Failed SOP Sequence names gets that reason."""
    import threading

    def conflict(h):
        h.send_response(409)
        h.send_header("Content-Type", J)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    srv.stow = (J, conflict)
    got = {}
    dicomweb.store(srv.node, _stow_items(tmp_path), lambda it, err: got.__setitem__(it.sop_uid, err),
                   threading.Event())
    if named:
        assert got[SOPS[1]] == "rejected by the server (failure reason 0xC000) (HTTP 409; not stored)"
        assert all("HTTP 409" in got[s] for s in (SOPS[0], SOPS[2])), got
    else:
        assert set(got) == set(SOPS) and all("HTTP 409" in e for e in got.values()), got
