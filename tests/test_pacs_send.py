"""Send (C-STORE and STOW-RS) of images and our DICOM results, confirmed by a read-back query;
a STOW rejected in part; a server that answers success and stores nothing."""

import warnings

import numpy as np
import pydicom
import pytest

from _orthanc import orthanc_sink  # noqa: F401 - fixture (an empty Orthanc: sends do not touch the shared one)
from imaging_assist.pacs import send as sendmod
from imaging_assist.pacs.nodes import Node, PacsError
from imaging_assist.pacs.testing import free_port

MINI_PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]"
            b"/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
RESULT_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.30": "PM",
                  "1.2.840.10008.5.1.4.1.1.104.1": "PDF"}


def _series(folder, n=4, patient_id=None):
    from _synth import write_ct_series
    extra = {"PatientID": patient_id} if patient_id else None
    return write_ct_series(folder, [(0, 0, 2.0 * k) for k in range(n)], rows=16, cols=12,
                           extra={"FrameOfReferenceUID": pydicom.uid.generate_uid(), **(extra or {})})


def _with_results(tmp_path):
    """A synthetic CT and the export issue's objects for it: SEG, Parametric Map, SR, PDF."""
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.export.dicom import write_dicom_results
    from imaging_assist.inference.results import ClassificationResult, HeatMap, SegmentationResult
    src = tmp_path / "ct"
    _series(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = load_series(scan(str(src)).image_series()[0])
    n, r, c = vol.shape[:3]
    lm = np.zeros((n, r, c), np.uint8)
    lm[1:3, 4:9, 3:7] = 1
    seg = SegmentationResult("cxr-lung-seg", "1.0.0", "segmentation", ["background", "lesion"],
                             label_map=lm, voxel_counts={"lesion": int(lm.sum())},
                             spacing_source=vol.spacing_source)
    heat = np.linspace(0, 1, n * r * c, dtype=np.float32).reshape(n, r, c)
    cl = ClassificationResult("cxr-pneumonia", "2.1.0", "classification", ["normal", "pneumonia"],
                              probabilities={"normal": 0.3, "pneumonia": 0.7},
                              decisions={"normal": None, "pneumonia": None},
                              heatmaps=[HeatMap("pneumonia", "gradcam", heat)])
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(MINI_PDF)
    objs = write_dicom_results(vol, [seg, cl], tmp_path / "results", report_pdf=pdf)
    assert objs
    return src, tmp_path / "results"


def _listed(o, study_uid) -> set[str]:
    ids = o.rest("/tools/find", "POST", json={"Level": "Instance", "Expand": True,
                                              "Query": {"StudyInstanceUID": study_uid}})
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in ids}


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_send_images_and_results_then_read_back(orthanc_sink, tmp_path, proto):
    src, results = _with_results(tmp_path)
    items, skipped = sendmod.collect([str(src), str(results)])
    kinds = {RESULT_CLASSES.get(i.sop_class) for i in items} | {
        "SR" for i in items if i.sop_class.startswith("1.2.840.10008.5.1.4.1.1.88.")}
    assert {"SEG", "PM", "PDF", "SR"} <= kinds, kinds
    node = orthanc_sink.dimse_node() if proto == "dimse" else orthanc_sink.web_node()
    res = sendmod.send(node, [str(src), str(results)], settings=orthanc_sink.settings())
    assert res.failures == [] and res.confirmed == res.sent == len(items), res.to_dict()
    study = items[0].study_uid
    assert {i.sop_uid for i in items} <= _listed(orthanc_sink, study)  # Orthanc's own REST agrees


@pytest.mark.parametrize("proto", ["dimse", "dicomweb"])
def test_rejected_in_part_the_rest_goes_on(orthanc_sink, tmp_path, proto):
    files = _series(tmp_path / "s", n=3)
    ds = pydicom.dcmread(files[1])
    ds.PatientID = "IA-REJECT"  # Orthanc's ReceivedInstanceFilter (testing.LUA_POLICY) refuses it
    ds.save_as(files[1])
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    node = orthanc_sink.dimse_node() if proto == "dimse" else orthanc_sink.web_node()
    res = sendmod.send(node, [str(tmp_path / "s")], settings=orthanc_sink.settings())
    assert [p for p, _ in res.failures] == [str(files[1])], res.failures
    # Orthanc 1.10 answers "success" (C-STORE status 0 and STOW-RS alike) for an instance its
    # ReceivedInstanceFilter dropped: only the read-back query catches it.
    assert "answered success but does not list the instance" in res.failures[0][1]
    assert res.confirmed == 2
    assert [p.endswith("notes.txt") for p, _ in res.skipped] == [True]


def test_stow_failed_sop_sequence_fails_only_those_instances(orthanc_sink, tmp_path):
    """Orthanc's STOW-RS refuses, in its Failed SOP Sequence, an instance posted under another
    study's URL; the other instances of the request are stored and confirmed."""
    import threading

    from imaging_assist.pacs import dicomweb
    files = _series(tmp_path / "s", n=3)
    items, _ = sendmod.collect([str(tmp_path / "s")])
    other = pydicom.uid.generate_uid()
    items[1].study_uid = other  # sent to /studies/<other>: not the study in the file
    results = {}
    dicomweb.store(orthanc_sink.web_node(), items, lambda it, err: results.__setitem__(it.path, err),
                   threading.Event())
    assert results[str(files[0])] is None and results[str(files[2])] is None
    assert results[str(files[1])].startswith("rejected by the server (failure reason 0x"), results
    listed = _listed(orthanc_sink, items[0].study_uid)
    assert {items[0].sop_uid, items[2].sop_uid} <= listed and items[1].sop_uid not in listed


def test_server_that_says_success_and_stores_nothing_is_caught(tmp_path):
    """A real DICOM peer (pynetdicom) that answers every C-STORE with success, keeps nothing,
    and finds nothing: only the read-back query can tell."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title="LIAR")
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    srv = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda e: 0x0000), (evt.EVT_C_FIND, lambda e: iter([]))])
    try:
        files = _series(tmp_path / "s", n=2)
        node = Node("liar", "dimse", ae_title="LIAR", host="127.0.0.1", port=port, timeout=10).validate()
        res = sendmod.send(node, [str(tmp_path / "s")])
        assert res.sent == 2 and res.confirmed == 0
        assert sorted(p for p, _ in res.failures) == sorted(map(str, files))
        assert all("answered success but does not list" in r for _, r in res.failures)
    finally:
        srv.shutdown()


def test_store_warning_status_is_reported_not_hidden(tmp_path):
    """A peer that stores with warning 0xB000 (coercion): counted as sent, and the user is told."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from imaging_assist.pacs import dimse

    ae = AE(ae_title="COERCE")
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    srv = ae.start_server(("127.0.0.1", port), block=False,
                          evt_handlers=[(evt.EVT_C_STORE, lambda e: 0xB000)])
    try:
        _series(tmp_path / "s", n=2)
        items, _ = sendmod.collect([str(tmp_path / "s")])
        got = []
        node = Node("c", "dimse", ae_title="COERCE", host="127.0.0.1", port=port, timeout=10).validate()
        import threading
        dimse.store(node, sendmod.Settings(), items, lambda it, err, warn=None: got.append((err, warn)),
                    threading.Event())
        assert got == [(None, "stored with warning 0xB000 (coercion of data elements)")] * 2
    finally:
        srv.shutdown()


def test_nothing_to_send_is_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(PacsError, match="nothing to send"):
        sendmod.send(Node("x", "dimse", ae_title="X", host="127.0.0.1", port=1), [str(tmp_path)])


def test_dcmtk_storescp_receives_identical_data_and_unconfirmed_is_said(tmp_path):
    """DCMTK's storescp as an independent C-STORE peer: what it writes equals what we sent.
    It answers no C-FIND, so the instances are 'sent but not confirmed', never 'confirmed'."""
    import shutil
    import subprocess
    import time

    from imaging_assist.pacs.nodes import Settings
    exe = shutil.which("storescp")
    if exe is None:
        pytest.fail("storescp (Debian dcmtk) is missing: scripts/test installs it")
    files = _series(tmp_path / "s", n=3)
    got = tmp_path / "got"
    got.mkdir()
    port = free_port()
    p = subprocess.Popen([exe, "-aet", "STORESCP", "-od", str(got), "+B", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import socket
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        node = Node("dcmtk", "dimse", ae_title="STORESCP", host="127.0.0.1", port=port,
                    timeout=10).validate()
        res = sendmod.send(node, [str(tmp_path / "s")], settings=Settings(ae_title="IA_TEST"))
        assert (res.sent, res.confirmed, res.unconfirmed, res.failures) == (3, 0, 3, [])
        assert "C-FIND" in res.readback_error
        received = sorted(got.iterdir())
        assert len(received) == 3
        for f in files:
            a = pydicom.dcmread(f)
            (b,) = [pydicom.dcmread(r) for r in received if a.SOPInstanceUID in r.name]
            assert a == b and a.PixelData == b.PixelData
    finally:
        p.terminate()
        p.wait(10)
