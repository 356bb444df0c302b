"""Echo, find and retrieve against a real Orthanc (DIMSE and DICOMweb), and the failure cases."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pydicom
import pytest

from _orthanc import ct_files, mr_files, orthanc, orthanc_noget  # noqa: F401 - fixtures
from imaging_assist.pacs import api
from imaging_assist.pacs.nodes import Node, PacsError
from imaging_assist.pacs.query import Query
from imaging_assist.pacs.testing import Orthanc, free_port

CT_STUDY = "1.3.46.670589.33.1.27492712521914879309.27169771283235650014"
CT_SERIES = "1.3.46.670589.33.1.3963937485511329090.25659488233390035616"
MR_STUDY = "1.2.840.114350.2.408.2.798268.2.129495550.1"


def _node(o, proto):
    return o.dimse_node() if proto == "dimse" else o.web_node()


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_echo(orthanc, proto):
    assert api.echo(_node(orthanc, proto), orthanc.settings()) < 10


# Each filter selects the MR study and leaves out the CT and the secondary capture.
FILTERS = {
    "patient": "Zzz_Test*",
    "patient_id": "1693354",
    "birth_date": "19550101-19650101",
    "date": "20200601-20200701",
    "modality": "MR",
    "accession": "UMCA2198906",
    "description": {"study": "Wekelijkse*", "series": "ep2d*"},
}


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
@pytest.mark.parametrize("level", ["study", "series"])
def test_find_each_filter(orthanc, proto, level):
    node, s = _node(orthanc, proto), orthanc.settings()
    everything = api.find(node, Query(level=level), s)
    assert len({r["study_uid"] for r in everything}) == 3, everything
    for key, value in FILTERS.items():
        if isinstance(value, dict):
            value = value[level]
        rows = api.find(node, Query(level=level, **{key: value}), s)
        assert {r["study_uid"] for r in rows} == {MR_STUDY}, (key, value, rows)
        if level == "series":
            assert rows[0]["modality"] == "MR" and rows[0]["series_description"].startswith("ep2d")
        else:
            assert rows[0]["modalities"] == "MR" and rows[0]["n_instances"] == 4
        # A value that matches nothing returns nothing (the filter really is applied).
        miss = {"birth_date": "19000101", "date": "19990101-19991231", "modality": "PT"}.get(key, "NOMATCH*")
        assert api.find(node, Query(level=level, **{key: miss}), s) == [], (key, miss)
    ct = [r for r in everything if r["study_uid"] == CT_STUDY][0]
    assert ct["patient_name"] == "HEAD" and ct["n_instances"] == 140


def _pixels_identical(study_dir: Path, sources: list[Path]):
    got = {p.stem: p for p in study_dir.rglob("*.dcm")}
    assert len(got) == len(sources), (len(got), len(sources))
    assert not list(study_dir.rglob("*.partial"))
    for src in sources:
        a = pydicom.dcmread(src)
        b = pydicom.dcmread(got[a.SOPInstanceUID])
        assert b.SeriesInstanceUID == a.SeriesInstanceUID
        assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID
        assert a.PixelData == b.PixelData, src.name


@pytest.mark.parametrize("method", ["get", "move", "wado"])
def test_retrieve_140_slice_ct_pixels_identical(orthanc, tmp_path, method):
    node = orthanc.web_node() if method == "wado" else orthanc.dimse_node()
    firsts = []
    res = api.get(node, CT_STUDY, tmp_path, method=method, settings=orthanc.settings(),
                  on_instance=lambda path, series: firsts.append(path))
    assert (res.expected, res.written, res.skipped, res.failures) == (140, 140, 0, [])
    assert res.method == method and 0 < res.first_instance_s < res.seconds
    assert Path(firsts[0]).is_file()
    _pixels_identical(tmp_path / CT_STUDY, ct_files())
    index = api.index_study(res)
    (series,) = index.image_series()
    assert series.uid == CT_SERIES and len(series.instances) == 140


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_jpeg2000_study_arrives_as_stored(orthanc, tmp_path, proto):
    res = api.get(_node(orthanc, proto), MR_STUDY, tmp_path, settings=orthanc.settings())
    assert res.written == 4 and not res.failures
    _pixels_identical(tmp_path / MR_STUDY, mr_files())


def test_interrupted_get_leaves_no_half_file_and_resumes(orthanc, tmp_path):
    cancel = threading.Event()

    def progress(done, total, series):
        if done >= 25:
            cancel.set()

    first = api.get(orthanc.dimse_node(), CT_STUDY, tmp_path, series_uids=[CT_SERIES],
                    settings=orthanc.settings(), progress=progress, cancel=cancel)
    assert first.cancelled
    have = list((tmp_path / CT_STUDY).rglob("*.dcm"))
    assert 25 <= len(have) < 140, len(have)
    assert not list(tmp_path.rglob("*.partial"))
    for p in have:  # every file there is complete
        assert pydicom.dcmread(p).PixelData
    second = api.get(orthanc.dimse_node(), CT_STUDY, tmp_path, settings=orthanc.settings())
    assert (second.skipped, second.written, second.failures) == (len(have), 140 - len(have), [])
    _pixels_identical(tmp_path / CT_STUDY, ct_files())


def test_node_without_cget_falls_back_to_cmove(orthanc_noget, tmp_path):
    o = orthanc_noget
    with pytest.raises(PacsError, match="does not accept C-GET.*try --method move"):
        api.get(o.dimse_node(), CT_STUDY, tmp_path / "a", method="get", settings=o.settings())
    res = api.get(o.dimse_node(), CT_STUDY, tmp_path / "b", settings=o.settings())
    assert res.method == "move" and res.written == 3 and not res.failures
    assert any("does not accept C-GET" in n for n in res.notes)
    _pixels_identical(tmp_path / "b" / CT_STUDY, ct_files()[:3])


def test_stopped_orthanc_is_connection_refused(tmp_path):
    o = Orthanc(workdir=str(tmp_path / "o")).start()
    node, web, s = o.dimse_node(), o.web_node(), o.settings()
    api.echo(node, s)
    o.stop()
    with pytest.raises(PacsError, match=r"orthanc \[ORTHANC@127.0.0.1:\d+\]: connection refused"):
        api.echo(node, s)
    with pytest.raises(PacsError, match="connection refused"):
        api.find(web, Query(), s)


def test_wrong_called_ae_is_rejected(orthanc):
    node = orthanc.dimse_node()
    node.ae_title = "NOT_ORTHANC"
    with pytest.raises(PacsError, match="association rejected: Called AE title not recognised"):
        api.echo(node, orthanc.settings())


def test_unknown_calling_ae_may_echo_but_not_find(orthanc):
    s = orthanc.settings()
    s.ae_title = "STRANGER"
    api.echo(orthanc.dimse_node(), s)  # Orthanc: DicomAlwaysAllowEcho
    with pytest.raises(PacsError, match="association rejected|does not offer C-FIND|refused"):
        api.find(orthanc.dimse_node(), Query(), s)


def test_silent_peer_is_a_timeout():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # accepts the TCP connection, never speaks DICOM (or HTTP)
    try:
        node = Node("mute", "dimse", ae_title="MUTE", host="127.0.0.1", port=srv.getsockname()[1],
                    timeout=1.0).validate()
        with pytest.raises(PacsError, match=r"mute \[MUTE@127.0.0.1:\d+\]: association failed .*1 s"):
            api.echo(node)
        web = Node("mute-web", "dicomweb", url=f"http://127.0.0.1:{srv.getsockname()[1]}/dicom-web",
                   timeout=1.0).validate()
        # the request's own 1-s timeout and the whole answer's 1-s limit end together: either
        # line is right ("no answer" / "no complete answer"), which one depends on the machine's load
        with pytest.raises(PacsError, match=r"mute-web \[.*\]: QIDO-RS: no (complete )?answer within 1 s"):
            api.echo(web)
    finally:
        srv.close()


def test_dicomweb_wrong_password_and_malformed_answer(orthanc):
    web = orthanc.web_node()
    web.password = "wrong-password-xyz"
    with pytest.raises(PacsError) as e:
        api.echo(web)
    assert "HTTP 401 authentication failed" in str(e.value) and "wrong-password-xyz" not in str(e.value)

    class Bad(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(b'[{"0020000D": {"vr": "UI", "Value": 12}}, {"garbage')

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", free_port()), Bad)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        node = Node("bad", "dicomweb", url=f"http://127.0.0.1:{httpd.server_port}/dicom-web",
                    timeout=5).validate()
        with pytest.raises(PacsError, match="malformed response"):
            api.find(node, Query())
    finally:
        httpd.shutdown()


def test_unknown_study_and_bad_uid_are_one_line(orthanc, tmp_path):
    with pytest.raises(PacsError, match="not found"):
        api.get(orthanc.dimse_node(), "1.2.3.4.5", tmp_path, settings=orthanc.settings())
    with pytest.raises(PacsError, match="invalid UID"):
        api.get(orthanc.dimse_node(), "../../etc", tmp_path, settings=orthanc.settings())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_values_with_spaces_and_carets_match_exactly(orthanc, proto):
    node, s = _node(orthanc, proto), orthanc.settings()
    for q in (Query(patient="Zzz_Test-Vumc-QC-MRI^VIDA1."), Query(description="Wekelijkse QC*"),
              Query(patient="zzz_test-vumc-qc-mri^vida1."),
              Query(level="series", description="ep2d_fid_weisskoff_25slc")):
        assert {r["study_uid"] for r in api.find(node, q, s)} == {MR_STUDY}, q
    # Broadening for Orthanc's QIDO never lets a near miss through.
    for q in (Query(patient="Zzz_Test-Vumc-QC-MRI^VIDA1"), Query(description="Wekelijkse  QC*")):
        assert api.find(node, q, s) == [], q


def test_dicomweb_bearer_token_is_sent_and_never_logged(caplog):
    import logging
    token = "tok-SECRET-0123456789"
    seen = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == f"Bearer {token}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            if ok:
                self.wfile.write(b"[]")

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", free_port()), Api)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/dicom-web"
        caplog.set_level(logging.DEBUG)
        logging.getLogger("dicomweb_client").setLevel(logging.DEBUG)  # even when someone asks
        api.echo(Node("b", "dicomweb", url=url, auth="bearer", token=token).validate())
        with pytest.raises(PacsError, match="HTTP 401") as e:
            api.echo(Node("b", "dicomweb", url=url, auth="bearer", token="other-token").validate())
        assert seen[0] == f"Bearer {token}"
        assert token not in caplog.text and "other-token" not in caplog.text + str(e.value)
    finally:
        httpd.shutdown()


def test_dimse_over_tls(tmp_path):
    """Orthanc with DICOM TLS (a self-signed certificate made by openssl): echo and find over
    TLS with the CA configured; without it the node is refused in one line."""
    import shutil
    import subprocess
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    o = Orthanc(workdir=str(tmp_path / "o"),
                tls={"cert": str(cert), "key": str(key), "trusted": str(cert)}).start()
    try:
        node = o.dimse_node()
        node.tls_ca = str(cert)
        node.validate()
        assert "TLS" in node.display()
        api.echo(node, o.settings())
        assert api.find(node, Query(), o.settings()) == []
        plain = o.dimse_node()
        plain.timeout = 3
        with pytest.raises(PacsError, match=r"orthanc \[ORTHANC@127.0.0.1:\d+\]: association"):
            api.echo(plain, o.settings())
    finally:
        o.cleanup()


def test_busy_storage_port_and_unknown_host_are_one_line(orthanc, tmp_path):
    s = orthanc.settings()
    busy = socket.socket()
    busy.bind(("", 0))
    busy.listen(1)
    s.storage_port = busy.getsockname()[1]
    try:
        with pytest.raises(PacsError, match=f"our storage port {s.storage_port} is in use"):
            api.get(orthanc.dimse_node(), MR_STUDY, tmp_path, method="move", settings=s)
    finally:
        busy.close()
    assert not list(tmp_path.rglob("*.dcm"))
    node = Node("x", "dimse", ae_title="X", host="no-such-host.invalid", port=104, timeout=5).validate()
    with pytest.raises(PacsError, match="unknown host 'no-such-host.invalid'"):
        api.echo(node)


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_find_limit_cancels_and_says_so(orthanc, proto):
    node, s = _node(orthanc, proto), orthanc.settings()
    rows = api.find(node, Query(), s, limit=2)
    assert len(rows) == 2 and rows.truncated
    full = api.find(node, Query(), s, limit=3)
    assert len(full) == 3 and not full.truncated
    api.echo(node, s)  # the node is fine after the cancelled query


def test_node_dying_mid_transfer_keeps_whole_files_and_says_so(tmp_path):
    """Orthanc killed (SIGKILL) during a C-GET: one line that says how many instances are kept;
    only whole files remain; the same retrieval from a live node completes the study."""
    import signal
    o = Orthanc(workdir=str(tmp_path / "o")).start()
    try:
        o.upload(ct_files()[:60])
        out = tmp_path / "out"

        def progress(done, total, series):
            if done == 15 and o.proc is not None:
                o.proc.send_signal(signal.SIGKILL)

        with pytest.raises(PacsError, match=r"instances kept in .*retrieving again fetches the rest"):
            api.get(o.dimse_node(), CT_STUDY, out, settings=o.settings(), progress=progress)
        have = list(out.rglob("*.dcm"))
        assert 15 <= len(have) < 60 and not list(out.rglob("*.partial"))
        for p in have:
            assert pydicom.dcmread(p).PixelData
    finally:
        o.cleanup()


@pytest.mark.parametrize("level", ["STUDY", "SERIES"])
def test_find_agrees_with_dcmtk_findscu(orthanc, level):
    """DCMTK's findscu, an independent client, finds the same studies/series as our C-FIND."""
    import re
    import shutil
    import subprocess
    exe = shutil.which("findscu")
    if exe is None:
        pytest.fail("findscu (Debian dcmtk) is missing: scripts/test installs it")
    for modality in ("MR", "CT", ""):
        key = "ModalitiesInStudy" if level == "STUDY" else "Modality"
        r = subprocess.run([exe, "-S", "-aet", "DCMTK", "-aec", orthanc.aet,
                            "-k", f"QueryRetrieveLevel={level}", "-k", f"{key}={modality}",
                            "-k", "StudyInstanceUID", "-k", "SeriesInstanceUID",
                            "127.0.0.1", str(orthanc.dicom_port)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        tag = "0020,000d" if level == "STUDY" else "0020,000e"
        # findscu prints each UID as sent, with its padding (NUL or space)
        theirs = set(re.findall(rf"\({tag}\) UI \[([0-9.]+)[\x00 ]?\]", r.stdout + r.stderr))
        rows = api.find(orthanc.dimse_node(), Query(level=level.lower(), modality=modality),
                        orthanc.settings())
        ours = {row["study_uid"] if level == "STUDY" else row["series_uid"] for row in rows}
        assert ours == theirs and ours, (modality, ours, theirs, r.stderr[-800:])
