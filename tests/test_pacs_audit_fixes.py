"""Fixes of the PACS client audit: C-FIND character sets, retrieve of private SOP classes and
failed series, STOW-RS error answers, QIDO of non-Latin names, resume of damaged files, and the
smaller one-line errors.  Against a real Orthanc of their own (DefaultEncoding UTF-8: an
Orthanc left at Latin-1 cannot answer a Greek name at all), holding small synthetic studies, and
tiny fake HTTP servers."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from imaging_assist.pacs import api, dicomweb, dimse
from imaging_assist.pacs.nodes import Node, PacsError
from imaging_assist.pacs.query import Query
from imaging_assist.pacs.testing import Orthanc

ROOT = "1.2.826.0.1.3680043.10.998."
PRIVATE_CLASS = "1.3.46.670589.11.0.0.12.4"  # Philips Private MR Series Data Storage
PRIV_STUDY = ROOT + "20"

# key, patient name, patient ID, Specific Character Set, modality
PATIENTS = [
    ("1", "Müller^Jörg", "P-UTF8", "ISO_IR 192", "CT"),
    ("2", "Müller^Hans", "P-LAT1", "ISO_IR 100", "CT"),
    ("3", "Ωμέγα^Άλφα", "P-GREEK", "ISO_IR 192", "MR"),
    ("4", "DOE^JOHN", "P-DOE", None, "CT"),
    ("5", "ABCDE^FGH", "P-FIVE", None, "MR"),  # what '?????*' (Ωμέγα* sent as Latin-1) matches
    ("6", "MUELLER^JORG", "P-ASCII", None, "CT"),
]


def _inst(pat, pid, charset, study, series, sop, modality, inum, cls=None) -> bytes:
    cls = cls or (CTImageStorage if modality == "CT" else MRImageStorage)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = cls
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = cls, sop
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = pat, pid, "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
    ds.StudyDescription, ds.SeriesDescription, ds.Modality = "audit", "audit", modality
    ds.SeriesNumber, ds.InstanceNumber = 1, inum
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(16, dtype=np.uint16) + inum).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _study_files() -> list[bytes]:
    out = []
    for key, name, pid, cs, mod in PATIENTS:
        study = ROOT + key
        for i in (1, 2):
            out.append(_inst(name, pid, cs, study, study + ".1", f"{study}.1.{i}", mod, i))
    # a study with one instance of a private SOP class (series .1) and three CT slices (.2)
    out.append(_inst("PRIV^TEST", "P-PRIV", None, PRIV_STUDY, PRIV_STUDY + ".1", PRIV_STUDY + ".1.1",
                     "MR", 1, cls=PRIVATE_CLASS))
    for i in (1, 2, 3):
        out.append(_inst("PRIV^TEST", "P-PRIV", None, PRIV_STUDY, PRIV_STUDY + ".2",
                         f"{PRIV_STUDY}.2.{i}", "CT", i))
    return out


class _Utf8Orthanc(Orthanc):
    def config(self) -> dict:
        return {**super().config(), "DefaultEncoding": "Utf8"}


@pytest.fixture(scope="module")
def orth(tmp_path_factory):
    o = _Utf8Orthanc(workdir=str(tmp_path_factory.mktemp("orthanc-audit")))
    try:
        o.start()
    except RuntimeError as e:
        pytest.fail(f"could not start Orthanc: {e}")
    try:
        import requests
        with requests.Session() as s:
            s.auth = o.auth
            for data in _study_files():
                s.post(f"{o.url}/instances", data=data, timeout=60).raise_for_status()
        yield o
    finally:
        o.cleanup()


def _held_patient_ids(o, pattern: str) -> list[str]:
    """What Orthanc holds (its REST API, independent of DIMSE and QIDO) matched in Python."""
    ids = []
    for p in o.rest("/patients?expand"):
        tags = p["MainDicomTags"]
        if fnmatch.fnmatchcase(tags["PatientName"].upper(), pattern.upper()):
            ids.append(tags["PatientID"])
    return sorted(ids)


# --------------------------------------------------------------------------- 1. C-FIND charset
@pytest.mark.parametrize("pattern, expected", [
    ("Ωμέγα*", ["P-GREEK"]), ("Müller*", ["P-LAT1", "P-UTF8"]), ("Ωμέγα^Άλφα", ["P-GREEK"])])
def test_cfind_non_ascii_name_finds_exactly_that_patient(orth, pattern, expected):
    assert _held_patient_ids(orth, pattern) == expected  # the data are what the test says
    rows = api.find(orth.dimse_node(), Query(patient=pattern), orth.settings())
    assert sorted(r["patient_id"] for r in rows) == expected, rows
    names = {r["patient_id"]: r["patient_name"] for r in rows}
    held = {p["MainDicomTags"]["PatientID"]: p["MainDicomTags"]["PatientName"]
            for p in orth.rest("/patients?expand")}
    assert names == {pid: held[pid] for pid in expected}  # answers decoded with their charset


def test_cfind_identifier_declares_utf8_only_when_needed():
    from pynetdicom.dsutils import encode
    ds = dimse._identifier("STUDY", {"PatientName": "Ωμέγα*", "PatientID": ""})
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    raw = encode(ds, True, True)
    assert "Ωμέγα*".encode("utf-8") in raw and b"?????" not in raw
    ds = dimse._identifier("STUDY", {"PatientName": "DOE*", "PatientID": ""})
    assert "SpecificCharacterSet" not in ds


def test_cfind_value_that_cannot_be_encoded_is_one_line(orth):
    bad = "Mü\udcffller*"  # undecodable bytes of a command line (surrogateescape)
    with pytest.raises(PacsError) as e:
        api.find(orth.dimse_node(), Query(patient=bad), orth.settings())
    assert "\n" not in str(e.value) and "cannot be encoded" in str(e.value)


# --------------------------------------------------------------------------- 2. retrieve
def test_cmove_study_with_private_sop_class(orth, tmp_path):
    """One instance of a private SOP class does not fail the study: our storage SCP accepts
    the classes the node listed, and all four instances arrive."""
    res = api.get(orth.dimse_node(), PRIV_STUDY, tmp_path, method="move", settings=orth.settings())
    assert res.failures == [] and res.written == 4, res.to_dict()
    f = tmp_path / PRIV_STUDY / (PRIV_STUDY + ".1") / (PRIV_STUDY + ".1.1.dcm")
    assert pydicom.dcmread(f).SOPClassUID == PRIVATE_CLASS


def test_cget_failed_series_is_a_failure_and_the_rest_goes_on(orth, tmp_path):
    """Orthanc cannot send a private SOP class over C-GET (nor to DCMTK's getscu): that series'
    request ends in 0xC000.  Its instance is a failure of the result, with the status; the CT
    series is still requested and arrives (it used to raise and stop the transfer there)."""
    res = api.get(orth.dimse_node(), PRIV_STUDY, tmp_path, method="get", settings=orth.settings())
    assert res.written == 3, res.to_dict()
    assert [f.sop_instance_uid for f in res.failures] == [PRIV_STUDY + ".1.1"], res.to_dict()
    reason = res.failures[0].reason
    assert "C-GET" in reason and "0xC000" in reason and "\n" not in reason
    assert sorted(p.name for p in (tmp_path / PRIV_STUDY / (PRIV_STUDY + ".2")).glob("*.dcm")) == \
        [f"{PRIV_STUDY}.2.{i}.dcm" for i in (1, 2, 3)]


def test_failed_first_series_does_not_stop_the_next(orth, tmp_path, monkeypatch):
    """The same with the failing series requested first, whatever order the node lists them."""
    real = dimse._retrieve_requests

    def private_first(missing, counts, study):
        order = sorted(missing, key=lambda s: s != PRIV_STUDY + ".1")
        return real({s: missing[s] for s in order}, counts, study)
    monkeypatch.setattr(dimse, "_retrieve_requests", private_first)
    res = api.get(orth.dimse_node(), PRIV_STUDY, tmp_path, method="get", settings=orth.settings())
    assert res.written == 3 and len(res.failures) == 1, res.to_dict()


# --------------------------------------------------------------------------- 3. STOW-RS errors
STOW_SOPS = [ROOT + "30.1.1", ROOT + "30.1.2", ROOT + "30.1.3"]


def _seq(tag: str, sops, reason=None) -> dict:
    items = []
    for s in sops:
        it = {"00081155": {"vr": "UI", "Value": [s]}, "00081150": {"vr": "UI", "Value": [CTImageStorage]}}
        if reason is not None:
            it["00081197"] = {"vr": "US", "Value": [reason]}
        items.append(it)
    return {tag: {"vr": "SQ", "Value": items}}


class _FakeStow:
    """A DICOMweb server: STOW-RS answers ``status`` with ``body`` (JSON); QIDO lists nothing."""

    def __init__(self):
        self.status, self.body, outer = 200, {}, self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, code, obj):
                b = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self._answer(outer.status, outer.body)

            def do_GET(self):
                self._answer(200, [])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.node = Node(name="fake", kind="dicomweb", timeout=5,
                         url=f"http://127.0.0.1:{self.httpd.server_port}/dicom-web").validate()


@pytest.fixture
def stow_srv():
    s = _FakeStow()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _stow(srv, tmp_path):
    from imaging_assist.pacs import send as sendmod
    folder = tmp_path / "send"
    folder.mkdir()
    for i, s in enumerate(STOW_SOPS, 1):
        (folder / f"{i}.dcm").write_bytes(_inst("STOW^TEST", "P-STOW", None, ROOT + "30", ROOT + "30.1",
                                                s, "CT", i))
    items, _ = sendmod.collect([str(folder)])
    got = {}
    dicomweb.store(srv.node, items, lambda it, err: got.__setitem__(it.sop_uid, err),
                   threading.Event())
    assert set(got) == set(STOW_SOPS), got
    return got


@pytest.mark.parametrize("status", [400, 409, 500, 503])
def test_stow_error_answer_with_json_body_stores_nothing(stow_srv, tmp_path, status):
    """An error answer whose body is a DICOM JSON data set ({}) used to count every instance as
    stored: each now fails, one line naming the HTTP status."""
    stow_srv.status, stow_srv.body = status, {}
    got = _stow(stow_srv, tmp_path)
    for sop, err in got.items():
        assert err and f"HTTP {status}" in err and "\n" not in err, (sop, err)


def test_stow_409_failed_sequence_gives_the_reason_all_fail(stow_srv, tmp_path):
    stow_srv.status, stow_srv.body = 409, _seq("00081198", STOW_SOPS[1:2], 0xA900)
    got = _stow(stow_srv, tmp_path)
    assert "failure reason 0xA900" in got[STOW_SOPS[1]] and "HTTP 409" in got[STOW_SOPS[1]]
    assert all(got[s] and "HTTP 409" in got[s] for s in STOW_SOPS), got


def test_stow_error_answer_naming_stored_instances(stow_srv, tmp_path):
    """Orthanc 1.10 answers 409 to a request it stored in part, naming the stored instances in
    the Referenced SOP Sequence: those (only) count as sent."""
    stow_srv.status = 409
    stow_srv.body = {**_seq("00081198", STOW_SOPS[1:2], 0xC000), **_seq("00081199", STOW_SOPS[:1])}
    got = _stow(stow_srv, tmp_path)
    assert got[STOW_SOPS[0]] is None
    assert got[STOW_SOPS[1]].startswith("rejected by the server (failure reason 0xC000)")
    assert "HTTP 409" in got[STOW_SOPS[2]], got


@pytest.mark.parametrize("status", [200, 202])
def test_stow_success_answers_read_per_instance(stow_srv, tmp_path, status):
    stow_srv.status, stow_srv.body = status, _seq("00081198", STOW_SOPS[1:2], 0xC000)
    got = _stow(stow_srv, tmp_path)
    assert got[STOW_SOPS[0]] is None and got[STOW_SOPS[2]] is None, got
    assert got[STOW_SOPS[1]].startswith("rejected by the server (failure reason 0xC000)")


def test_send_to_stow_error_reports_nothing_sent(stow_srv, tmp_path):
    """End to end (imaging_assist.pacs.send), as /tmp/audit_pacs/stow_err.py: HTTP 500 {}."""
    from imaging_assist.pacs import send as sendmod
    stow_srv.status, stow_srv.body = 500, {}
    f = tmp_path / "x.dcm"
    f.write_bytes(_inst("STOW^TEST", "P-STOW", None, ROOT + "30", ROOT + "30.1", STOW_SOPS[0], "CT", 1))
    res = sendmod.send(stow_srv.node, [str(f)])
    assert res.sent == 0 and len(res.failures) == 1 and "HTTP 500" in res.failures[0][1], res.to_dict()


# --------------------------------------------------------------------------- 4. QIDO non-Latin
def _spy_qido(monkeypatch):
    from dicomweb_client.api import DICOMwebClient
    calls = []
    real = DICOMwebClient.search_for_studies

    def spy(self, *a, **kw):
        calls.append(kw)
        return real(self, *a, **kw)
    monkeypatch.setattr(DICOMwebClient, "search_for_studies", spy)
    return calls


def test_qido_non_latin_name_exact_and_limited(orth, monkeypatch):
    """'Ωμέγα*' used to go as PatientName=* with no limit (the whole archive).  Every request now
    carries a limit, and the answer is exactly the patient Orthanc holds."""
    calls = _spy_qido(monkeypatch)
    rows = api.find(orth.web_node(), Query(patient="Ωμέγα*"), orth.settings(), limit=50)
    assert [r["patient_id"] for r in rows] == _held_patient_ids(orth, "Ωμέγα*") == ["P-GREEK"]
    assert rows[0]["patient_name"] == "Ωμέγα^Άλφα"
    assert calls and all(kw.get("limit") for kw in calls), calls
    assert calls[0]["search_filters"]["PatientName"] == "Ωμέγα*"  # sent as it is first


def test_qido_broadened_search_is_bounded_and_says_so(orth, monkeypatch):
    """A name that matches nothing (no name starts with ä), which the server cannot match anyway (Orthanc decodes no percent-encoding) is searched
    in a broader query at most MAX_BROADENED_ROWS answers deep; past that the rows say so."""
    monkeypatch.setattr(dicomweb, "QIDO_PAGE", 2)
    monkeypatch.setattr(dicomweb, "MAX_BROADENED_ROWS", 4)
    calls = _spy_qido(monkeypatch)
    rows = api.find(orth.web_node(), Query(patient="ä*"), orth.settings(), limit=1)
    assert rows == [] and rows.truncated, (rows, calls)
    assert len(rows.notes) == 1 and "\n" not in rows.notes[0] and "broader query" in rows.notes[0]
    assert all(kw.get("limit") and kw["limit"] <= 2 for kw in calls), calls
    assert sum(kw["limit"] for kw in calls[1:]) <= 4


# --------------------------------------------------------------------------- 5. resume
def test_resume_refetches_damaged_foreign_and_garbage_files(orth, tmp_path):
    """As /tmp/audit_pacs/repro_resume.sh: a file cut off, the file of another instance and
    random bytes at an instance's place were counted as present; now each is fetched again."""
    node, st = orth.dimse_node(), ROOT + "1"
    first = api.get(node, st, tmp_path, settings=orth.settings())
    assert first.written == 2 and not first.failures
    f1 = tmp_path / st / (st + ".1") / (st + ".1.1.dcm")
    f2 = tmp_path / st / (st + ".1") / (st + ".1.2.dcm")
    good1 = f1.read_bytes()
    f1.write_bytes(good1[:300])  # cut off in the header
    f2.write_bytes(_inst("OTHER^X", "P-X", None, ROOT + "99", ROOT + "99.1", ROOT + "99.1.1", "CT", 1))
    res = api.get(node, st, tmp_path, settings=orth.settings())
    assert (res.written, res.skipped, res.failures) == (2, 0, []), res.to_dict()
    assert pydicom.dcmread(f2).SOPInstanceUID == st + ".1.2" and f1.read_bytes() == good1
    f2.write_bytes(os.urandom(200))  # garbage; f1 stays good and is skipped
    res = api.get(node, st, tmp_path, settings=orth.settings())
    assert (res.written, res.skipped, res.failures) == (1, 1, []), res.to_dict()
    assert pydicom.dcmread(f2).SOPInstanceUID == st + ".1.2"


# --------------------------------------------------------------------------- 6. smaller ones
class _LimitedOrthanc(Orthanc):
    def config(self) -> dict:
        return {**super().config(), "LimitFindResults": 2, "LimitFindInstances": 2}


def test_cfind_node_that_ends_early_returns_rows_with_a_note(tmp_path):
    """Orthanc with LimitFindResults=2 answers two matches, then 0xFE00: the two rows come back,
    marked truncated with a one-line note (it used to fail the whole query)."""
    o = _LimitedOrthanc(workdir=str(tmp_path / "orthanc"))
    try:
        o.start()
        import requests
        for data in _study_files()[:8]:  # four studies
            requests.post(f"{o.url}/instances", data=data, auth=o.auth, timeout=60).raise_for_status()
        rows = api.find(o.dimse_node(), Query(), o.settings())
        assert len(rows) == 2 and rows.truncated, rows
        assert len(rows.notes) == 1 and "0xFE00" in rows.notes[0] and "\n" not in rows.notes[0]
    finally:
        o.cleanup()


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_study_filter_that_is_not_a_uid_is_one_line(orth, proto):
    node = orth.dimse_node() if proto == "dimse" else orth.web_node()
    with pytest.raises(PacsError) as e:
        api.find(node, Query(level="series", study_uid="abc"), orth.settings())
    assert "invalid study UID 'abc'" in str(e.value) and "\n" not in str(e.value)


_TLS_PROBE = """
import sys
from imaging_assist.pacs import dimse
from imaging_assist.pacs.nodes import Node, PacsError
n = Node(name="t", kind="dimse", ae_title="X", host="127.0.0.1", port=1, tls_ca=sys.argv[1],
         tls_cert=sys.argv[2], tls_key=sys.argv[3])
try:
    dimse._tls_args(n)
    print("OK")
except PacsError as e:
    print("PacsError:", e)
"""


def _tls_probe(ca, cert="", key=""):
    """In a process of its own, with no terminal (a prompt could not wait for an answer)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _TLS_PROBE, str(ca), str(cert), str(key)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))
    return r.stdout.strip(), r.stderr


def test_tls_key_with_pass_phrase_and_non_pem_ca_are_one_line(tmp_path):
    import shutil
    import subprocess
    if not shutil.which("openssl"):
        pytest.fail("openssl missing")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-passout", "pass:secret"],
                   check=True, capture_output=True)
    out, err = _tls_probe(cert, cert, key)
    assert out.startswith("PacsError:") and "pass phrase" in out and "\n" not in out, (out, err)
    bad = tmp_path / "ca.txt"
    bad.write_text("not a certificate\n")
    out, err = _tls_probe(bad)
    assert out.startswith("PacsError:") and "TLS CA file" in out and "\n" not in out, (out, err)


def test_find_command_prints_how_the_answer_was_obtained(monkeypatch, capsys):
    """A node that stopped early (0xFE00) or a bounded broadened QIDO search: the rows carry a
    note, and `pacs find` prints it instead of "more than N matches"."""
    from imaging_assist.cli import main
    from imaging_assist.pacs import api
    from imaging_assist.pacs.query import Rows

    rows = Rows([{"patient_name": "A^B", "patient_id": "P1", "study_date": "20240101", "study_uid": "1.2.3",
                  "modalities": "CT", "description": "", "accession": "", "n_series": 1, "n_instances": 1}])
    rows.truncated = True
    rows.notes = ("the node stopped after 1 match (status 0xFE00): there may be more",)
    monkeypatch.setattr(api, "find", lambda *a, **k: rows)
    main(["pacs", "find", "--node", "ORTHANC@127.0.0.1:4242", "--patient", "A*"])
    err = capsys.readouterr().err
    assert "note: the node stopped after 1 match" in err and "more than 1000 matches" not in err
