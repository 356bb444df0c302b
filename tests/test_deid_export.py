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
