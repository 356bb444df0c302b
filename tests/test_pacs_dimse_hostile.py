"""The DIMSE client against a hostile DICOM node started here (pynetdicom, and a raw socket where
pynetdicom cannot misbehave enough; no Orthanc).  Every endless, dripping, malformed or lying
answer to C-ECHO, C-FIND, C-GET, C-MOVE and C-STORE gives one PacsError line or a per-instance
failure within seconds, and nothing is written outside the destination folder or under a study,
series or SOP Instance UID it does not belong to.  Each call runs in a thread: a hang fails the
test (after HANG seconds) instead of blocking the suite."""

import os
import socket
import struct
import threading
import time
import traceback
import warnings
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, evt
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from imaging_assist.pacs import api, dimse
from imaging_assist.pacs import send as sendmod
from imaging_assist.pacs.nodes import Node, PacsError, Settings
from imaging_assist.pacs.query import Query
from imaging_assist.pacs.testing import free_port

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.timeout(120)]

STUDY = "1.2.3.4.100"
SERIES = "1.2.3.4.100.1"
SOPS = ["1.2.3.4.100.1.1", "1.2.3.4.100.1.2", "1.2.3.4.100.1.3"]
OTHER = "1.2.3.4.999"
CT = CTImageStorage
FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
TIMEOUT = 0.5
FAST = 8.0     # seconds any call may take against the hostile node
HANG = float(os.environ.get("HOSTILE_HANG_S", 20))  # a call still running then has hung
ATTACK_S = 30  # no attack of the hostile node goes on longer than this (threads end)


def _ds(sop, study=STUDY, series=SERIES, **kw) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    if sop is not None:
        ds.SOPInstanceUID = sop
    if study is not None:
        ds.StudyInstanceUID = study
    if series is not None:
        ds.SeriesInstanceUID = series
    ds.PatientName = "HOSTILE^TEST"
    ds.PatientID = "H1"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _row(sop, series=SERIES, study=STUDY, level="IMAGE") -> Dataset:
    d = Dataset()
    d.QueryRetrieveLevel = level
    d.StudyInstanceUID = study
    d.SeriesInstanceUID = series
    d.SOPInstanceUID = sop
    d.SOPClassUID = CT
    return d


def _alive(assoc) -> bool:
    return assoc.dul.state_machine.current_state == "Sta6"


class Hostile:
    """A DICOM node whose answers the test sets: ``on_echo``, ``on_find``, ``on_get``,
    ``on_move`` (generators as pynetdicom's handlers are, or raw writers), ``on_store``."""

    def __init__(self):
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.requests = []  # the identifiers of the C-GETs received
        self.outgoing = []  # our associations to the client's storage SCP (C-MOVE)
        self.on_echo = lambda e: 0x0000
        self.on_find = self.listing
        self.on_get = self.get_sending([(s, _ds(s)) for s in SOPS])
        self.on_move = None
        self.on_store = lambda e: 0x0000
        ae = AE(ae_title="EVIL")
        for c in (Verification, FIND, GET, MOVE):
            ae.add_supported_context(c, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(CT, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        ae.add_requested_context(CT, ExplicitVRLittleEndian)  # C-MOVE: pynetdicom's own store
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.maximum_pdu_size = 0  # no limit: our PDUs are as large as the attack needs
        h = [(evt.EVT_C_ECHO, lambda e: self.on_echo(e)), (evt.EVT_C_FIND, lambda e: self.on_find(e)),
             (evt.EVT_C_GET, lambda e: self.on_get(e)), (evt.EVT_C_MOVE, lambda e: self.on_move(e)),
             (evt.EVT_C_STORE, lambda e: self.on_store(e))]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=h)
        self.node = Node("evil", "dimse", ae_title="EVIL", host="127.0.0.1",
                         port=self.server.server_address[1], timeout=TIMEOUT).validate()
        self.settings = Settings(ae_title="IA_TEST", storage_port=free_port())

    def going(self, assoc=None) -> bool:
        return (not self.stop.is_set() and time.monotonic() - self.t0 < ATTACK_S
                and (assoc is None or _alive(assoc)))

    def wait(self):
        self.stop.wait(ATTACK_S)

    # ------------------------------------------------------------------ building blocks
    def listing(self, event, rows=None):
        """C-FIND: the 3 instances at IMAGE level, a study row at STUDY level."""
        level = event.identifier.get("QueryRetrieveLevel", "")
        for r in rows if rows is not None else ([_row(s) for s in SOPS] if level == "IMAGE"
                                                else [_row("", level=level)]):
            yield 0xFF00, r
        yield 0x0000, None

    @staticmethod
    def raw_find_rsp(event, status, ident):
        """A C-FIND answer written by hand: ``ident`` a Dataset (encoded in the context's
        syntax), bytes (sent as they are) or None."""
        if isinstance(ident, Dataset):
            ident = encode(ident, event.context.transfer_syntax == ImplicitVRLittleEndian, True)
            assert ident is not None, "the harness could not encode its identifier"
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = event.request.MessageID
        rsp.AffectedSOPClassUID = event.request.AffectedSOPClassUID
        rsp.Status = status
        if ident is not None:
            rsp.Identifier = BytesIO(ident)
        event.assoc.dimse.send_msg(rsp, event.context.context_id)

    @staticmethod
    def raw_retrieve_rsp(event, status, kind=C_GET):
        rsp = kind()
        rsp.MessageIDBeingRespondedTo = event.request.MessageID
        rsp.AffectedSOPClassUID = event.request.AffectedSOPClassUID
        rsp.Status = status
        if status == 0xFF00:
            rsp.NumberOfRemainingSuboperations = 1
            rsp.NumberOfCompletedSuboperations = 0
            rsp.NumberOfFailedSuboperations = 0
            rsp.NumberOfWarningSuboperations = 0
        event.assoc.dimse.send_msg(rsp, event.context.context_id)

    @staticmethod
    def raw_store(assoc, affected, data, msg_id=[100]):
        """A C-STORE request written by hand (any Affected SOP Instance UID, any data set:
        a Dataset is encoded in the context's syntax, bytes go as they are); returns the
        peer's status or None."""
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CT
                  and c.transfer_syntax[0] in (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
        if isinstance(data, Dataset):
            data = encode(data, cx.transfer_syntax[0] == ImplicitVRLittleEndian, True)
            assert data is not None, "the harness could not encode its data set"
        msg_id[0] = msg_id[0] % 60000 + 1
        req = C_STORE()
        req.MessageID = msg_id[0]
        req.AffectedSOPClassUID = CT
        req.AffectedSOPInstanceUID = affected
        req.Priority = 2
        req.DataSet = BytesIO(data)
        assoc.dimse.send_msg(req, cx.context_id)
        _cx, rsp = assoc.dimse.get_msg(block=True)
        return getattr(rsp, "Status", None)

    def get_sending(self, stores, then=None):
        """A C-GET handler: sends ``stores`` [(affected SOP UID, data set)] by hand on the
        C-GET association, then ``then(event)``; without ``then`` pynetdicom sends the final
        success."""
        def gen(event):
            self.requests.append(event.identifier)
            yield len(stores) or 1
            for affected, data in stores:
                if not self.going(event.assoc):
                    return
                self.raw_store(event.assoc, affected, data)
            if then is not None:
                then(event)
                self.wait()
        return gen

    def move_sending(self, stores, then=None, after_final=None):
        """A C-MOVE handler: opens its own association to our storage SCP and sends ``stores``
        by hand, then ``then(event)``; without ``then`` pynetdicom sends the final success, or
        we do and then call ``after_final(store association)``."""
        def keep_alive(event, stop):
            while not stop.wait(0.1) and self.going(event.assoc):
                self.raw_retrieve_rsp(event, 0xFF00, C_MOVE)

        def gen(event):
            # 'pending' after each step, as a PACS does after each sub-operation: the C-MOVE
            # association stays alive however long the stores take; and every 0.1 s while the
            # two associations to our SCP are set up (on a loaded machine that can take longer
            # than the node's timeout, which then ended the C-MOVE before the attack began)
            stop = threading.Event()
            alive = threading.Thread(target=keep_alive, args=(event, stop), daemon=True)
            alive.start()
            try:
                yield "127.0.0.1", self.settings.storage_port  # destination (pynetdicom asks first)
                yield 1  # pynetdicom opens an association of its own, unused: ours is below
                ae = AE(ae_title="EVIL")
                ae.add_requested_context(CT, ExplicitVRLittleEndian)
                ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
                store = ae.associate("127.0.0.1", self.settings.storage_port,
                                     ae_title=self.settings.ae_title)
                self.outgoing.append(store)
                if store.is_established:
                    store._reactor_checkpoint.clear()  # we read its answers ourselves
                    while not store._is_paused:
                        time.sleep(0.001)
            finally:
                stop.set()
                alive.join()
            if store.is_established:
                for affected, data in stores() if callable(stores) else stores:
                    if not (self.going(event.assoc) and _alive(store)):
                        break
                    self.raw_retrieve_rsp(event, 0xFF00, C_MOVE)
                    self.raw_store(store, affected, data)
            if then is not None:
                then(event)
            elif after_final is not None:
                self.raw_retrieve_rsp(event, 0x0000, C_MOVE)
                if store.is_established:
                    after_final(store)
            if store.is_established:
                store._reactor_checkpoint.set()
                store.abort()
            if then is not None or after_final is not None:
                self.wait()  # the final status was ours (or never comes)
        return gen

    # raw socket attacks, written into the association's socket from a handler
    def write_raw(self, event, data: bytes, drip: bytes | None = None, every=0.05,
                  close=False):
        sock = event.assoc.dul.socket.socket
        try:
            sock.sendall(data)
            while drip is not None and self.going():
                sock.sendall(drip)
                time.sleep(every)
            if close:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        except OSError:
            return
        self.wait()

    def close(self):
        self.stop.set()
        # our sending threads may block on a peer that stopped reading: cut them
        for a in self.server.active_associations + self.outgoing:
            sock = getattr(a.dul.socket, "socket", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        # socketserver's shutdown waits for its 0.5 s poll: not worth waiting for in each test
        threading.Thread(target=self.server.shutdown, daemon=True).start()


@pytest.fixture
def evil():
    h = Hostile()
    yield h
    h.close()


# The node's timeout where the attack is about what is sent, not about time: a loaded 2-core CI
# machine can leave 0.5 s between two honest messages of the hostile node (C-MOVE opens an
# association of its own between them), which ended such a test on the timeout instead.
PATIENT = 3.0


@pytest.fixture
def patient_evil(evil):
    import dataclasses
    evil.node = dataclasses.replace(evil.node, timeout=PATIENT)
    return evil


HUGE_PDATA = b"\x04\x00" + struct.pack(">L", 0xFFFFFFF0)  # a P-DATA-TF PDU declaring 4 GiB
SMALL_PDATA = b"\x04\x00" + struct.pack(">L", 1 << 20)  # 1 MiB: under any size cap


def _run(call, bound=FAST):
    """``call()`` in a thread: it must end within ``bound`` seconds with a value or one
    PacsError line; returns the value or the PacsError."""
    box = {}

    def target():
        try:
            box["out"] = call()
        except BaseException as e:  # noqa: BLE001 - reported below
            box["err"] = e
            box["tb"] = traceback.format_exc()

    t0 = time.monotonic()
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG)
    took = time.monotonic() - t0
    assert not t.is_alive(), f"HANG: still running after {HANG:g} s"
    err = box.get("err")
    if err is not None:
        assert isinstance(err, PacsError), f"ESCAPED {type(err).__name__}: {box['tb']}"
        msg = str(err)
        assert msg and "\n" not in msg and len(msg) < 400, msg
    assert took < bound, f"SLOW: {took:.1f} s ({err or 'returned'})"
    return box.get("out", err)


def _check_tree(out):
    """Nothing outside ``out``; every file is an asked-for instance, under its own study, series
    and SOP Instance UID, and decodes."""
    base = out.parent
    for root, _dirs, files in os.walk(base):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, out)
            assert not rel.startswith(".."), p
            assert rel.startswith(f"{STUDY}/{SERIES}/") and not f.endswith(".partial"), rel
            ds = pydicom.dcmread(p)
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (STUDY, SERIES), rel
            assert f == f"{ds.SOPInstanceUID}.dcm" and ds.SOPInstanceUID in SOPS, rel


def _get(evil, tmp_path, method="get", series=()):
    out = tmp_path / "out"
    res = _run(lambda: api.get(evil.node, STUDY, out, series_uids=series, method=method,
                               settings=evil.settings))
    _check_tree(out)
    if not isinstance(res, Exception):
        for f in res.failures:
            assert f.reason and "\n" not in f.reason, f
    return res


def _stored(tmp_path):
    return sorted(p.stem for p in (tmp_path / "out").rglob("*.dcm"))


# --------------------------------------------------------------------------- a good node
def test_good_hostile_node_works(patient_evil, tmp_path):
    """The harness itself: an honest answer is retrieved whole, by C-GET and by C-MOVE."""
    evil = patient_evil
    api.echo(evil.node, evil.settings)
    assert len(api.find(evil.node, Query(), evil.settings)) == 1
    res = _get(evil, tmp_path)
    assert (res.written, res.failures) == (3, []), res.to_dict()
    evil.on_move = evil.move_sending([(s, _ds(s)) for s in SOPS])
    res = _get(evil, tmp_path / "m", method="move")
    assert (res.written, res.failures) == (3, []), res.to_dict()


# --------------------------------------------------------------------------- C-ECHO
ECHO = {
    "silence": lambda h: lambda e: h.wait() or 0,
    "garbage_after_ac": lambda h: lambda e: h.write_raw(e, b"\xde\xad\xbe\xef" * 64),
    "pdata_garbage": lambda h: lambda e: h.write_raw(e, b"\x04\x00\x00\x00\x00\x10" + b"\xff" * 16),
    "huge_pdu_drip": lambda h: lambda e: h.write_raw(e, HUGE_PDATA, drip=b"\x00"),
    "small_pdu_drip": lambda h: lambda e: h.write_raw(e, SMALL_PDATA, drip=b"\x00"),
    "huge_pdu_fast": lambda h: lambda e: h.write_raw(e, HUGE_PDATA, drip=b"\x00" * 65536, every=0),
    "close_mid_pdu": lambda h: lambda e: h.write_raw(e, b"\x04\x00\x00\x00\x03\xe8" + b"\x00" * 10,
                                                      close=True),
    "bad_status": lambda h: lambda e: 0xDEAD,
}


@pytest.mark.parametrize("case", sorted(ECHO))
def test_echo_hostile(evil, case):
    evil.on_echo = ECHO[case](evil)
    res = _run(lambda: api.echo(evil.node, evil.settings))
    assert isinstance(res, PacsError), res
    if case.startswith("huge_pdu"):  # refused before the 4 GiB are read, not at the deadline
        assert "a PDU that declares 4294967280 bytes" in str(res), res


def _raw_server(answer):
    """A TCP server that reads the A-ASSOCIATE-RQ and answers ``answer(conn)`` (no pynetdicom)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    def one(conn):
        try:
            conn.settimeout(ATTACK_S)
            conn.recv(65536)
            answer(conn, stop)
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, stop


def _drip(conn, stop, head, drip=b"\x00", every=0.05):
    conn.sendall(head)
    t0 = time.monotonic()
    while not stop.is_set() and time.monotonic() - t0 < ATTACK_S:
        conn.sendall(drip)
        time.sleep(every)


RAW = {
    "ac_huge_drip": lambda c, s: _drip(c, s, b"\x02\x00" + struct.pack(">L", 0xFFFFFFF0)),
    "ac_huge_fast": lambda c, s: _drip(c, s, b"\x02\x00" + struct.pack(">L", 0xFFFFFFF0),
                                       b"\x00" * 65536, 0),
    "garbage_then_silence": lambda c, s: (c.sendall(b"HTTP/1.1 200 OK\r\n\r\n" * 8), s.wait(ATTACK_S)),
    "ac_truncated_then_close": lambda c, s: c.sendall(b"\x02\x00\x00\x00\x00\xc8" + b"\x00" * 20),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_association_hostile(case):
    srv, stop = _raw_server(RAW[case])
    try:
        node = Node("raw", "dimse", ae_title="RAW", host="127.0.0.1", port=srv.getsockname()[1],
                    timeout=TIMEOUT).validate()
        assert isinstance(_run(lambda: api.echo(node, Settings())), PacsError)
    finally:
        stop.set()
        srv.close()


# --------------------------------------------------------------------------- C-FIND
def _forever(h, row, every=0.0):
    """Pending answers without end (C-CANCEL ignored), each in time."""
    def gen(event):
        while h.going(event.assoc):
            yield 0xFF00, row
            if every:
                time.sleep(every)
    return gen


def _raw_find(h, answers, then_silent=False):
    """C-FIND answers written by hand: (status, identifier bytes or None) ...; then the
    handler ends (pynetdicom ignores what follows), or blocks, answering nothing more, not even
    the A-RELEASE."""
    def gen(event):
        for status, ident in answers:
            h.raw_find_rsp(event, status, ident)
        if then_silent:
            h.wait()
        return
        yield
    return gen


FIND_CASES = {
    # name: (handler factory, whether rows may come back)
    "pending_forever_fast": lambda h: _forever(h, _row("", level="STUDY")),
    "pending_drip": lambda h: _forever(h, _row("", level="STUDY"), every=0.9 * TIMEOUT),
    "undecodable_identifier": lambda h: _raw_find(h, [(0xFF00, b"\x08\x00\x52\x00\xff\xff\xff\x7f"
                                                       + b"\x00" * 8), (0, None)]),
    "garbage_identifier": lambda h: _raw_find(h, [(0xFF00, os.urandom(512)), (0, None)]),
    "pending_without_identifier": lambda h: _raw_find(h, [(0xFF00, None), (0, None)]),
    "huge_element": lambda h: lambda e: h.listing(e, [_ds(None, PatientName="A" * (8 << 20))]),
    "wrong_level_and_no_uids": lambda h: lambda e: h.listing(e, [Dataset(), _row("", level="IMAGE"),
                                                                  _ds(None, study=None, series=None)]),
    "path_uids": lambda h: lambda e: h.listing(e, [_row("../../x", "../..", "../../etc")]),
    "bad_final_status": lambda h: _raw_find(h, [(0xFF00, _row(SOPS[0])), (0xDEAD, None)]),
    "pdu_drip": lambda h: lambda e: h.write_raw(e, HUGE_PDATA, drip=b"\x00"),
    "small_pdu_drip": lambda h: lambda e: h.write_raw(e, SMALL_PDATA, drip=b"\x00"),
    "pdu_fast": lambda h: lambda e: h.write_raw(e, HUGE_PDATA, drip=b"\x00" * 65536, every=0),
    "silence": lambda h: lambda e: (h.wait(), (yield 0, None)),
}


@pytest.mark.parametrize("case", sorted(FIND_CASES))
def test_find_hostile(evil, case):
    evil.on_find = FIND_CASES[case](evil)
    for level in ("study", "series"):
        res = _run(lambda: api.find(evil.node, Query(level=level), evil.settings, limit=50))
        if not isinstance(res, Exception):
            assert isinstance(res, list) and len(res) <= 50
            assert all(isinstance(r, dict) for r in res)


def test_find_past_limit_ends_with_the_rows_even_if_cancel_is_ignored(evil):
    """Past ``limit`` we send C-CANCEL; a node that goes on regardless is cut off after one
    timeout and the rows asked for are returned, marked truncated (not an endless read)."""
    evil.on_find = _forever(evil, _row("", level="STUDY"))
    rows = _run(lambda: api.find(evil.node, Query(), evil.settings, limit=20), bound=4 * TIMEOUT + 3)
    assert isinstance(rows, list) and len(rows) == 20 and rows.truncated


@pytest.mark.parametrize("case", ["pending_forever_fast", "pending_drip"])
def test_list_instances_endless(evil, case, monkeypatch):
    """An endless listing, fast or one match just within each timeout, ends with one line when
    its time budget is spent (the cap made 4 x the timeout here, for speed)."""
    monkeypatch.setattr(dimse, "FIND_TIMEOUT_FACTOR", 4, raising=False)
    every = 0.9 * TIMEOUT if case == "pending_drip" else 0.0
    n = [0]

    def rows(event):
        while evil.going(event.assoc):
            n[0] += 1
            yield 0xFF00, _row(f"1.2.3.4.100.1.{n[0]}")
            if every:
                time.sleep(every)
    evil.on_find = rows
    res = _run(lambda: api.list_instances(evil.node, STUDY, [SERIES], evil.settings))
    assert isinstance(res, PacsError) and "no complete answer within" in str(res), res


def test_release_never_answered_ends_quietly(evil, monkeypatch):
    """The node answers the C-FIND, then ignores our A-RELEASE: the rows come back within
    the time bound, and no thread of pynetdicom dies with a traceback on stderr (its own
    release timeout sends an A-ABORT that can race in its reading thread)."""
    died = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    evil.on_find = _raw_find(evil, [(0xFF00, _row("", level="STUDY")), (0, None)], then_silent=True)
    for _ in range(2):
        rows = _run(lambda: api.find(evil.node, Query(), evil.settings), bound=2 * TIMEOUT + 1)
        assert isinstance(rows, list) and len(rows) == 1, rows
    time.sleep(0.3)
    assert died == []


def test_list_instances_row_cap(patient_evil, monkeypatch):
    """More than MAX_LISTED instances listed for one study: one line, not a list without end.
    The attack is about size, not time: the patient timeout (the project's CI, loaded, took
    longer than the 0.5-s timeout's share to send 300 rows and ended it on the timeout)."""
    evil = patient_evil
    monkeypatch.setattr(dimse, "MAX_LISTED", 300, raising=False)
    evil.on_find = lambda e: evil.listing(e, [_row(f"1.2.3.4.100.1.{i}") for i in range(400)])
    res = _run(lambda: api.list_instances(evil.node, STUDY, [SERIES], evil.settings))
    assert isinstance(res, PacsError) and "more than 300 instances" in str(res), res


def test_listing_of_another_study_series_or_path_uids_is_not_retrieved(patient_evil, tmp_path):
    """The IMAGE-level listing names other studies, other series, path-like UIDs, duplicates:
    only the asked-for instances are requested and stored (an attack on content: the patient
    timeout)."""
    evil = patient_evil
    evil.on_find = lambda e: evil.listing(e, [
        _row(SOPS[0]), _row(SOPS[0]), _row("1.2.3.4.999.1.1", study=OTHER),
        _row("1.2.3.4.100.2.1", series="1.2.3.4.100.2"), _row("../../x"), _row(SOPS[1], "../.."),
        _row(SOPS[2])])
    res = _get(evil, tmp_path, series=[SERIES])
    assert not isinstance(res, Exception), res
    assert _stored(tmp_path) == [SOPS[0], SOPS[2]], res.to_dict()
    for ident in evil.requests:  # never a request for an instance of another study or series
        assert (ident.StudyInstanceUID, ident.SeriesInstanceUID) == (STUDY, SERIES), ident
        sops = ident.get("SOPInstanceUID", "")
        sops = [sops] if isinstance(sops, str) else list(sops)
        assert set(sops) <= {"", *SOPS}, sops


# --------------------------------------------------------------------------- C-GET and C-MOVE
UNASKED = "1.2.3.4.100.1.99"


def _store_streams():
    d = {s: _ds(s) for s in SOPS}
    return {
        # name: (stores [(affected SOP UID, data set)], instances that must be stored)
        "other_study": ([(SOPS[0], d[SOPS[0]]), (SOPS[1], _ds(SOPS[1], study=OTHER)),
                         ("1.2.3.4.999.1.7", _ds("1.2.3.4.999.1.7", study=OTHER)),
                         (SOPS[2], d[SOPS[2]])], 2),
        "other_series": ([(SOPS[0], d[SOPS[0]]), (SOPS[1], _ds(SOPS[1], series=OTHER)),
                          (SOPS[2], d[SOPS[2]])], 2),
        "unasked_same_study": ([(SOPS[0], d[SOPS[0]]), (UNASKED, _ds(UNASKED)),
                                ("1.2.3.4.100.2.1", _ds("1.2.3.4.100.2.1", series="1.2.3.4.100.2")),
                                (SOPS[2], d[SOPS[2]])], 2),
        # the Affected SOP Instance UID names another instance than the data set holds
        "affected_mismatch": ([(SOPS[0], d[SOPS[1]]), (SOPS[1], _ds(UNASKED)),
                               (UNASKED, d[SOPS[2]])], 0),
        "affected_mismatch_other_study": ([(SOPS[0], _ds("1.2.3.4.999.1.1", study=OTHER)),
                                           (SOPS[1], d[SOPS[1]]), (SOPS[2], d[SOPS[2]])], 2),
        "path_uids": ([("../../x", _ds("../../x")), (SOPS[0], _ds("../../y")),
                       (SOPS[1], _ds(SOPS[1], series="../..")),
                       (SOPS[2], _ds(SOPS[2], study="../../.."))], 0),
        "no_uids": ([(SOPS[0], _ds(None, None, None)), (SOPS[1], _ds(SOPS[1], None, None)),
                     (SOPS[2], d[SOPS[2]])], 1),
        "undecodable": ([(SOPS[0], b"\x08\x00\x18\x00\xff\xff\xff\x7f" + b"\x00" * 16),
                         (SOPS[1], os.urandom(300)), (SOPS[2], d[SOPS[2]])], 1),
        "empty_data_set": ([(SOPS[0], b""), (SOPS[2], d[SOPS[2]])], 0),
        "duplicates": ([(SOPS[0], d[SOPS[0]])] * 5 + [(SOPS[1], d[SOPS[1]])], 2),
    }


with warnings.catch_warnings():  # pydicom warns about each invalid UI value
    warnings.simplefilter("ignore")
    STREAMS = _store_streams()


def _check_counts(res, stored, tmp_path):
    if isinstance(res, Exception):
        assert stored == 0 or "instances kept" in str(res), res
        return
    got = _stored(tmp_path)
    assert len(got) >= stored, (got, res.to_dict())
    failed = {f.sop_instance_uid for f in res.failures if f.sop_instance_uid in SOPS}
    assert set(got) | failed == set(SOPS), res.to_dict()


@pytest.mark.parametrize("case", sorted(STREAMS))
def test_get_hostile_stream(patient_evil, tmp_path, case):
    stores, stored = STREAMS[case]
    patient_evil.on_get = patient_evil.get_sending(stores)
    _check_counts(_get(patient_evil, tmp_path), stored, tmp_path)


@pytest.mark.parametrize("case", sorted(STREAMS))
def test_move_hostile_stream(patient_evil, tmp_path, case):
    stores, stored = STREAMS[case]
    patient_evil.on_move = patient_evil.move_sending(stores)
    _check_counts(_get(patient_evil, tmp_path, method="move"), stored, tmp_path)


def _endless_unasked():
    n = 0
    while True:
        n += 1
        uid = f"1.2.3.4.100.1.1000{n}"
        yield uid, _ds(uid)


@pytest.mark.parametrize("method", ["get", "move"])
def test_endless_unasked_instances_are_stopped(patient_evil, tmp_path, method):
    """Instances of the right study, never asked for, without end: none is stored and the
    transfer is stopped after 16 + N of them (one line), not read for ever."""
    evil = patient_evil
    if method == "get":
        def gen(event):
            yield 1
            for affected, data in _endless_unasked():
                if not evil.going(event.assoc):
                    return
                evil.raw_store(event.assoc, affected, data)
        evil.on_get = gen
    else:
        evil.on_move = evil.move_sending(_endless_unasked)
    res = _get(evil, tmp_path, method=method)
    assert isinstance(res, PacsError) and "not asked for" in str(res), res
    assert _stored(tmp_path) == []


@pytest.mark.parametrize("method", ["get", "move"])
@pytest.mark.parametrize("every", [0.0, 0.9 * TIMEOUT])
def test_pending_forever_without_final_status(patient_evil, tmp_path, method, every, monkeypatch):
    """All instances sent, then 'pending' without end (fast, or one every 0.45 s): the transfer
    ends with one line when the budget after the last instance is spent (made 1 x the node's
    timeout here, 3 s, for speed; the patient timeout because on a loaded machine our storage
    SCP's answer to an honest store can keep the C-MOVE association silent for over 0.5 s), and
    the instances received are kept."""
    evil = patient_evil
    monkeypatch.setattr(dimse, "RETRIEVE_TIMEOUT_FACTOR", 1, raising=False)
    kind = C_GET if method == "get" else C_MOVE

    def forever(event):
        while evil.going(event.assoc):
            evil.raw_retrieve_rsp(event, 0xFF00, kind)
            time.sleep(every or 0.002)
    stores = [(s, _ds(s)) for s in SOPS]
    if method == "get":
        evil.on_get = evil.get_sending(stores, then=forever)
    else:
        evil.on_move = evil.move_sending(stores, then=forever)
    res = _get(evil, tmp_path, method=method)
    assert isinstance(res, PacsError) and "3 instances kept" in str(res), res
    assert f"no new instance and no final answer within {PATIENT:g} s" in str(res), res
    assert _stored(tmp_path) == SOPS


@pytest.mark.parametrize("method", ["get", "move"])
def test_final_status_never_comes(evil, tmp_path, method):
    """The instances, then silence: one line (no answer within the timeout)."""
    stores = [(s, _ds(s)) for s in SOPS]
    then = lambda e: evil.wait()  # noqa: E731
    if method == "get":
        evil.on_get = evil.get_sending(stores, then=then)
    else:
        evil.on_move = evil.move_sending(stores, then=then)
    res = _get(evil, tmp_path, method=method)
    assert isinstance(res, PacsError), res


@pytest.mark.parametrize("method", ["get", "move"])
def test_huge_instance_is_bounded(patient_evil, tmp_path, method, monkeypatch):
    """An instance larger than the size cap (made 8 MiB here): one line, nothing half-written.
    For C-MOVE the node keeps its C-MOVE association alive with 'pending' answers meanwhile, so
    that only the size cap can end it early (pynetdicom has no limit on a store to our SCP).
    The attack is about size, not time: the patient timeout (a loaded CI machine left the
    pending answers more than 0.5 s apart while the 48 MiB store went through)."""
    evil = patient_evil
    monkeypatch.setattr(dimse, "MAX_INSTANCE_BYTES", 8 << 20, raising=False)
    big = _ds(SOPS[0])
    big.add_new(0x7FE00010, "OB", b"\x00" * (48 << 20))  # Pixel Data
    if method == "get":
        evil.on_get = evil.get_sending([(SOPS[0], big), (SOPS[1], _ds(SOPS[1]))])
    else:
        def pending(event, done):
            while not done.wait(0.1) and evil.going(event.assoc):
                evil.raw_retrieve_rsp(event, 0xFF00, C_MOVE)

        def gen(event):
            done = threading.Event()
            threading.Thread(target=pending, args=(event, done), daemon=True).start()
            try:
                yield from evil.move_sending([(SOPS[0], big)], then=lambda e: evil.wait())(event)
            finally:
                done.set()
        evil.on_move = gen
    t0 = time.monotonic()
    res = _get(evil, tmp_path, method=method)
    assert isinstance(res, PacsError), res
    if method == "move":
        assert "MiB received without a complete instance" in str(res), res
        assert time.monotonic() - t0 < 10 * PATIENT - 1  # before the time budget would end it
    assert _stored(tmp_path) == [] and not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("method", ["get", "move"])
def test_pdu_drip_during_retrieve(evil, tmp_path, method):
    """A PDU header declaring 4 GiB, then one byte now and then, on the retrieve's association."""
    if method == "get":
        def gen(event):
            yield 1
            evil.raw_store(event.assoc, SOPS[0], _ds(SOPS[0]))
            evil.write_raw(event, HUGE_PDATA, drip=b"\x00")
        evil.on_get = gen
    else:
        evil.on_move = evil.move_sending([(SOPS[0], _ds(SOPS[0]))],
                                         then=lambda e: evil.write_raw(e, HUGE_PDATA, drip=b"\x00"))
    res = _get(evil, tmp_path, method=method)
    assert isinstance(res, PacsError), res


def test_move_stores_after_the_final_status_are_refused(patient_evil, tmp_path):
    """The C-MOVE has ended (final success) and get() has returned; the node goes on storing
    to our SCP on its open association: nothing is written after the transfer ended."""
    evil = patient_evil
    returned, late = threading.Event(), []

    def after(store):
        while not returned.wait(0.1) and _alive(store):  # keeps the association busy
            evil.raw_store(store, "1.2.3.4.999.1.1", _ds("1.2.3.4.999.1.1", study=OTHER))
        if _alive(store):
            late.append(evil.raw_store(store, SOPS[2], _ds(SOPS[2])))
        else:
            late.append("closed")
    evil.on_move = evil.move_sending([(s, _ds(s)) for s in SOPS[:2]], after_final=after)
    res = _get(evil, tmp_path, method="move")
    returned.set()
    t0 = time.monotonic()
    while not late and time.monotonic() - t0 < 3:
        time.sleep(0.05)
    assert late and late[0] != 0, (late, res)  # refused, no answer or closed: not stored
    assert _stored(tmp_path) == SOPS[:2], (late, res)


# --------------------------------------------------------------------------- C-STORE (send)
def _items(tmp_path, n=3):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        ds = _ds(f"1.2.3.4.100.1.{i + 1}")
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pydicom.dcmwrite(src / f"{i}.dcm", ds, enforce_file_format=True)
    items, skipped = sendmod.collect([str(src)])
    assert len(items) == n and not skipped
    return items


STORE = {
    "garbage_status": lambda h: (lambda e, it=iter([0xDEAD, 0xFF00, 0xFFFF]): next(it, 0xC000)),
    "never_answers": lambda h: lambda e: h.wait() or 0,
    "pdu_drip": lambda h: lambda e: h.write_raw(e, HUGE_PDATA, drip=b"\x00") or 0,
    "small_pdu_drip": lambda h: lambda e: h.write_raw(e, SMALL_PDATA, drip=b"\x00") or 0,
    "close_mid_pdu": lambda h: lambda e: h.write_raw(e, b"\x04\x00\x00\x00\x03\xe8" + b"\x00" * 10,
                                                      close=True) or 0,
    "garbage_bytes": lambda h: lambda e: h.write_raw(e, os.urandom(256)) or 0,
}


@pytest.mark.parametrize("case", sorted(STORE))
def test_store_hostile(evil, tmp_path, case):
    evil.on_store = STORE[case](evil)
    items = _items(tmp_path)
    got = []
    res = _run(lambda: dimse.store(evil.node, evil.settings, items,
                                   lambda it, err, warn=None: got.append((it.sop_uid, err)),
                                   threading.Event()))
    if isinstance(res, Exception):
        return
    assert sorted(s for s, _ in got) == sorted(it.sop_uid for it in items), got
    for _s, err in got:
        assert err is None or ("\n" not in err and err), err
    if case != "garbage_status":
        assert all(err for _s, err in got), got
