"""Who is one patient in a fine-tune: a CSV row and a reader's feedback on the same patient are
one patient (the log names it only by keyed pseudonym), and the split never depends on the site
key (``monitoring.finetune.patient_groups``)."""

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid

from conftest import DICOM, need


def _dicom(src, dst, pid):
    ds = pydicom.dcmread(str(src))
    ds.PatientID = pid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(str(dst))
    return dst


def _feedback_case(path, label):
    """A feedback case as ``cases_from_feedback`` gives it: the patient is the pseudonym the
    prediction log stored when the image was analysed (``log._pseudonyms`` on the loaded image)."""
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.inference.images import read_image
    from imaging_assist.monitoring.log import _pseudonyms

    vol = load_series(scan(str(path)).all_series()[0]) if path.suffix == ".dcm" else read_image(path)
    _key, pkey = _pseudonyms(vol, SimpleNamespace(source=str(path), series_uid=""))
    return {"path": path, "label": label, "patient": pkey}


def _cases(data):
    from imaging_assist.monitoring.finetune import csv_patient

    csv_rows = [{"file": "a.dcm", "patient_id": ""},   # no id: the file's Patient ID "PX"
                {"file": "c.png", "patient_id": "P7"},
                {"file": "f.png", "patient_id": "P2"}]
    cases = [{"path": data / r["file"], "label": "normal", **csv_patient(r)} for r in csv_rows]
    cases += [_feedback_case(data / "b.dcm", "pneumonia"),   # PX again, another series
              _feedback_case(data / "d.png", "pneumonia"),   # P7's image (plain: logged by its file key)
              _feedback_case(data / "e.png", "normal")]      # a plain image nobody named
    return cases


def _groups(data, key_home):
    from imaging_assist.monitoring.finetune import patient_groups
    from imaging_assist.privacy import sitekey

    old = os.environ["XDG_CONFIG_HOME"]
    os.environ["XDG_CONFIG_HOME"] = str(key_home)
    sitekey._cache.clear()
    try:
        return patient_groups(_cases(data), data), sitekey.key_fingerprint()
    finally:
        os.environ["XDG_CONFIG_HOME"] = old
        sitekey._cache.clear()


def test_csv_and_feedback_cases_of_one_patient_are_one_patient_with_any_site_key(tmp_path):
    from imaging_assist import training as T
    from imaging_assist.privacy import sitekey

    data = tmp_path / "data"
    data.mkdir()
    src = need(DICOM / "rgb_jpeg_lossless_secondary_capture" / "GH538-jpeg14sv1.dcm")
    _dicom(src, data / "a.dcm", "PX")
    _dicom(src, data / "b.dcm", "PX")
    rng = np.random.default_rng(0)
    for n in ("c", "d", "e", "f"):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(data / f"{n}.png")

    g1, key1 = _groups(data, tmp_path / "key1")
    # d.png was logged by its file key, not P7's: the log cannot know d is P7's unless the
    # reader's run had a Patient ID, so only the DICOM pair and exact keys can be joined
    assert g1[0] == g1[3] == "file:a.dcm"          # CSV without id + feedback, by Patient ID
    assert g1[1] == "P7" and g1[2] == "P2"
    assert g1[5] == "file:e.png" and g1[4] == "file:d.png"
    assert len({g1[0], g1[1], g1[2], g1[4], g1[5]}) == 5

    # a CSV patient id met in the feedback (the reader's run had that Patient ID) is one patient
    from imaging_assist.monitoring.finetune import patient_groups
    cases = _cases(data)
    cases.append({"path": data / "g.png", "label": "pneumonia", "patient": sitekey.pseudonym("P7", "patient-id")})
    shutil.copy(data / "c.png", data / "g.png")
    assert patient_groups(cases, data)[-1] == "P7"

    # another site key: the same groups, so the same split
    g2, key2 = _groups(data, tmp_path / "key2")
    assert key2 != key1 and g2 == g1
    y = np.array([0, 0, 0, 1, 1, 0])
    assert (T.grouped_split(np.array(g1, dtype=object), y, (0.6, 0.2, 0.2), seed=0)
            == T.grouped_split(np.array(g2, dtype=object), y, (0.6, 0.2, 0.2), seed=0)).all()
