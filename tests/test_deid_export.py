"""``analyze --deidentify`` (issue 16): results.json, report.pdf, key images and the DICOM
objects are made from a de-identified copy, so no planted identifier reaches any of them."""

from __future__ import annotations

import subprocess

import pydicom

from conftest import DICOM, need
from imaging_assist.cli.main import main

PHI = {"PatientName": "PHIDOE^JANE", "PatientID": "PHI-MRN-123456",
       "InstitutionName": "PHI SAINT HOSPITAL", "StudyDescription": "PHI CHEST FOR JANE",
       "AccessionNumber": "PHIACC998", "ReferringPhysicianName": "PHIDR^WHO",
       "StudyDate": "19770707", "StudyInstanceUID": "1.2.826.0.1.3680043.10.555.1"}


def test_analyze_deidentify_leaves_no_phi_in_any_output(tmp_path):
    src = next(p for p in need(DICOM / "cr_chest_monochrome1_fuji").iterdir() if p.suffix == ".dcm")
    ds = pydicom.dcmread(src, force=True)
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.ViewPosition = "AP"  # the view cxr-pneumonia was trained on (the file says PA)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "cr.dcm")
    out = tmp_path / "out"
    rc = main(["analyze", str(tmp_path / "in"), "--model", "cxr-pneumonia", "--out", str(out),
               "--deidentify", "--dicom", "--no-faithfulness"])
    assert rc in (0, 1)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "results.json").exists() and (out / "report.pdf").exists()
    assert any(p.suffix == ".dcm" for p in files), "no DICOM result was written"
    pdf_text = subprocess.run(["pdftotext", str(out / "report.pdf"), "-"], capture_output=True,
                              text=True, check=True).stdout
    assert "Patient" in pdf_text
    for v in PHI.values():
        for form in {v, v.split("^")[0], v.replace("^", " ")}:
            assert form not in pdf_text, f"{form!r} printed in report.pdf"
            for p in files:
                assert form.encode() not in p.read_bytes(), f"{form!r} in {p.relative_to(out)}"
    for p in out.rglob("*.dcm"):
        d = pydicom.dcmread(p)
        assert d.PatientID.startswith("IA-"), p


def test_batch_deidentify_leaves_no_phi_in_any_output(tmp_path):
    """batch takes the same option as analyze: every row, results.json, report and DICOM
    object is made from the de-identified copy (issue 16's export paths)."""
    src = next(p for p in need(DICOM / "cr_chest_monochrome1_fuji").iterdir() if p.suffix == ".dcm")
    ds = pydicom.dcmread(src, force=True)
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.ViewPosition = "AP"  # the view cxr-pneumonia was trained on (the file says PA)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "cr.dcm")
    out = tmp_path / "out"
    rc = main(["batch", str(tmp_path / "in"), "--model", "cxr-pneumonia", "--out", str(out),
               "--deidentify", "--dicom", "--report", "--no-faithfulness"])
    assert rc in (0, 1)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "results.json" for p in files) and any(p.suffix == ".dcm" for p in files)
    for v in PHI.values():
        for form in {v, v.split("^")[0], v.replace("^", " ")}:
            for p in files:
                assert form.encode() not in p.read_bytes(), f"{form!r} in {p.relative_to(out)}"
    # a cluster cannot see this machine's temporary copies: refused in one line
    assert main(["batch", str(tmp_path / "in"), "--model", "cxr-pneumonia", "--out", str(tmp_path / "o2"),
                 "--deidentify", "--engine", "ray", "--address", "127.0.0.1:1"]) == 2


def _planted(tmp_path, src=None):
    from test_export_dicom import CXR

    ds = pydicom.dcmread(src or need(CXR), force=True)
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.SeriesDescription = "PHI SERIES OF JANE"
    ds.BurnedInAnnotation = "NO"  # (the demo film says YES: its key images would be left out)
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "cxr.dcm")
    return folder


def _assert_no_phi(paths, extra_text: str = ""):
    for v in list(PHI.values()) + ["PHI SERIES OF JANE"]:
        for form in {v, v.split("^")[0], v.replace("^", " ")}:
            assert form not in extra_text, f"{form!r} printed"
            for p in paths:
                assert form.encode() not in p.read_bytes(), f"{form!r} in {p.name}"


def test_dicom_results_from_deidentified_headers_pair_with_the_anonymize_copy(tmp_path):
    """write_dicom_results(..., deidentify=Options()): no planted identifier in any object, the
    objects marked de-identified, and their references are the UIDs and pseudonym that an
    anonymize export of the source gets under the same site key (so the two pair)."""
    from test_export_dicom import _load, _results, dciodvfy_errors

    from imaging_assist.export.dicom import write_dicom_results
    from imaging_assist.privacy.deid import Options, deidentify_tree

    key = bytes(range(32))
    folder = _planted(tmp_path)
    vol = _load(folder)
    seg, cl = _results(vol)
    objs = write_dicom_results(vol, [seg, cl], tmp_path / "d", deidentify=Options(), deid_key=key)
    assert {o.kind for o in objs} == {"PM", "SEG", "SR"}
    _assert_no_phi([o.path for o in objs])
    copy = deidentify_tree(folder, tmp_path / "anon", Options(), key=key, audit=False)
    src = pydicom.dcmread(copy.written[0].output, stop_before_pixels=True)
    for o in objs:
        d = pydicom.dcmread(o.path)
        assert d.PatientIdentityRemoved == "YES" and d.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert (d.PatientID, d.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID), o.kind
        assert dciodvfy_errors(o.path) == [], o.path.name
    s = pydicom.dcmread(next(o.path for o in objs if o.kind == "SEG"))
    ref = s.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    if "FrameOfReferenceUID" in src:
        assert s.FrameOfReferenceUID == src.FrameOfReferenceUID


def test_gui_export_results_dicom_offers_deidentify_and_leaves_no_phi(tmp_path_factory, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox
    from _qt import open_window
    from test_export_dicom import _results

    from imaging_assist.measure import Measurement
    from imaging_assist.models.registry import Registry

    folder = _planted(tmp_path)
    w = open_window(tmp_path_factory, str(folder / "cxr.dcm"))
    try:
        vol = w.doc.volume
        seg, _ = _results(vol)
        panel = w.model_panel
        panel._run_ctx = {"card": Registry().get("cxr-lung-seg").card, "volume": vol, "settings": {},
                          "live_warnings": []}
        panel.last_result = seg
        panel.runFinished.emit("done")
        m = Measurement("ruler", [(20, 30), (120, 90)], index=0)
        m.compute_on(vol)
        w.doc.add_measurement(m)
        seen = {}

        def tick_and_ok(box):  # the confirmation lists the objects and offers the check box
            seen["text"] = box.informativeText()
            seen["box"] = box.checkBox().text()
            box.checkBox().setChecked(True)
            return QMessageBox.Ok

        monkeypatch.setattr(QMessageBox, "exec", tick_and_ok)
        written = w.dicom_exporter.export(folder=str(tmp_path / "dicom"), confirm=True)
        assert "De-identify" in seen["box"] and "SEG" in seen["text"]
        assert sorted(o.kind for o in written) == ["PDF", "SEG", "SR"]
        pdf = pydicom.dcmread(next(o.path for o in written if o.kind == "PDF"))
        (tmp_path / "r.pdf").write_bytes(pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength])
        text = subprocess.run(["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True,
                              text=True, check=True).stdout
        assert "Patient" in text
        _assert_no_phi([o.path for o in written] + [tmp_path / "r.pdf"], text)
        for o in written:
            assert pydicom.dcmread(o.path).PatientID.startswith("IA-"), o.kind
        # unticked (the default), the same export keeps the identifiers: the box is what did it
        plain = w.dicom_exporter.export(folder=str(tmp_path / "plain"), confirm=False)
        assert any(PHI["PatientID"].encode() in o.path.read_bytes() for o in plain)
        # File → Export report, de-identified…: the PDF alone, the same rules
        assert w.a_export_report_deid.text().startswith("Export report, de-")
        rep = w.report_exporter.export(str(tmp_path / "deid.pdf"), open_after=False, deidentify=True)
        text = subprocess.run(["pdftotext", str(rep), "-"], capture_output=True, text=True,
                              check=True).stdout
        assert "De-identified" in text and "left out" not in text  # BurnedInAnnotation NO: kept
        _assert_no_phi([rep], text)
    finally:
        w.close()


def test_deidentified_gui_report_leaves_out_key_images_that_may_show_burned_in_text(tmp_path_factory, tmp_path):
    """An XA cine without BurnedInAnnotation may carry text in its pixels, which the viewer never
    cleaned: the de-identified report leaves its key images out and says why."""
    from _qt import open_window

    from imaging_assist.models.registry import Registry

    src = next(p for p in sorted(need(DICOM / "xa_multiframe_cine_jpeg_baseline").iterdir()) if p.is_file())
    w = open_window(tmp_path_factory, str(src))
    try:
        vol = w.doc.volume
        from test_export_dicom import _results

        seg, _ = _results(vol, labels=("background", "vessel"))
        panel = w.model_panel
        panel._run_ctx = {"card": Registry().get("cxr-lung-seg").card, "volume": vol, "settings": {},
                          "live_warnings": []}
        panel.last_result = seg
        panel.runFinished.emit("done")
        full = w.report_exporter.build()
        assert any(it.get("views") for st in full["studies"] for it in st["items"]), "no key image to drop"
        rep = w.report_exporter.build(deidentify=True)
        assert not any(it.get("views") for st in rep["studies"] for it in st["items"])
        assert any("burned-in" in n for n in rep["warnings"])
    finally:
        w.close()
