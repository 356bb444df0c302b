"""The fine-tune's patient-disjoint split knows its patients (an audit read that, without a
patient_id column, every file was its own patient, and that CSV ids and reader-feedback ids
of one patient did not match): CSV ids and DICOM PatientIDs become the prediction log's keyed
pseudonyms; a file with neither is its own patient, and the hold-out says so."""

import shutil

import numpy as np
from PIL import Image

from conftest import CT_PHANTOM, need
from imaging_assist.monitoring.finetune import cases_from_csv
from imaging_assist.privacy.sitekey import pseudonym


def test_patients_from_csv_ids_dicom_patient_ids_or_the_file(tmp_path):
    ct = sorted(need(CT_PHANTOM).glob("*.dcm"))[:2]
    for n, p in enumerate(ct):
        shutil.copy(p, tmp_path / f"ct{n}.dcm")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("file,label,patient_id\nct0.dcm,normal,\nct1.dcm,pneumonia,\n"
                                         "a.png,normal,P7\nb.png,pneumonia,\n")
    cases = {c["path"].name: c["patient"] for c in cases_from_csv(tmp_path, tmp_path / "labels.csv",
                                                                   ["normal", "pneumonia"])}
    import pydicom
    pid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).PatientID)
    assert cases["ct0.dcm"] == cases["ct1.dcm"] == pseudonym(pid, "patient-id")  # one patient, as the log keys it
    assert cases["a.png"] == pseudonym("P7", "patient-id") and "P7" not in cases["a.png"]
    assert cases["b.png"] == "file:b.png"
