"""Session 21 audit: patients, studies and series are grouped by who the files belong to.

Patients are (IssuerOfPatientID, PatientID, PatientName), studies (patient, StudyInstanceUID),
series (study, SeriesInstanceUID).  Keyed by the UID alone, a second patient who shared a
Study or Series Instance UID disappeared and their film was shown under the first patient's
name; one Patient ID from two issuers was one patient.  A UID shared that way is kept apart and
said on each study and series; a series of one patient keeps its UID as its key.  The cases are
copies of the real Fuji CR film with the identifying attributes changed."""

import os

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from conftest import DICOM, need
from imaging_assist.dicom import scan
from imaging_assist.dicom.header import InstanceRecord, read_record
from imaging_assist.dicom.index import StudyIndex, _build_tree

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _film(path, pid, name, date="20240301", study=None, series=None, issuer=None, flip=False):
    """A copy of the CR film as another patient's (as /tmp/audit_s21/identity/make_cases.py)."""
    ds = pydicom.dcmread(need(CR), force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.PatientID, ds.PatientName, ds.StudyDate = pid, name, date
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesDescription = ds.StudyDescription = f"PA {name} {date}"
    if flip:
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=True, little_endian=True)
    return ds


def _of(index, path):
    s = index.find_series(str(path))
    return s, index.study_of(s), index.patient_of(s)


# ------------------------------------------------------------------ IssuerOfPatientID
def test_issuer_of_patient_id_is_read_by_the_fast_walk_and_by_pydicom(tmp_path):
    ds = _film(tmp_path / "a" / "a.dcm", "12345", "DOE^JANE", issuer="HOSP_A")  # no preamble: pydicom reads it
    slow = read_record(str(tmp_path / "a" / "a.dcm"))
    assert not slow.fast and slow.get("IssuerOfPatientID") == "HOSP_A"
    ds.save_as(tmp_path / "b.dcm", enforce_file_format=True)  # a Part 10 file: the fast walk
    fast = read_record(str(tmp_path / "b.dcm"))
    assert fast.fast and fast.get("IssuerOfPatientID") == "HOSP_A"
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # pydicom again
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    deflated = read_record(str(tmp_path / "c.dcm"))
    assert not deflated.fast and deflated.get("IssuerOfPatientID") == "HOSP_A"
    assert scan(str(tmp_path / "a")).image_series()[0]._first("IssuerOfPatientID") == "HOSP_A"


def test_one_patient_id_from_two_issuers_is_two_patients(tmp_path):
    _film(tmp_path / "now.dcm", "12345", "DOE^JANE", "20240301", issuer="HOSP_A")
    _film(tmp_path / "prior.dcm", "12345", "DOE^JANE", "20200101", issuer="HOSP_B", flip=True)
    idx = scan(str(tmp_path))
    assert sorted((p.id, p.issuer, len(p.studies)) for p in idx.patients) == [("12345", "HOSP_A", 1),
                                                                              ("12345", "HOSP_B", 1)]
    assert _of(idx, tmp_path / "now.dcm")[2].issuer == "HOSP_A"
    assert _of(idx, tmp_path / "prior.dcm")[2].issuer == "HOSP_B"
    assert all("issuer" in p for p in idx.to_dict()["patients"])


# ------------------------------------------------------------------ a Study Instance UID of two patients
def test_two_patients_with_one_study_uid_stay_apart_and_it_is_said(tmp_path):
    st = generate_uid()
    a = _film(tmp_path / "a.dcm", "PA1", "ALPHA^ANN", study=st)
    b = _film(tmp_path / "b.dcm", "PB2", "BETA^BOB", study=st, flip=True)
    idx = scan(str(tmp_path))
    assert [(p.id, p.name) for p in idx.patients] == [("PA1", "ALPHA^ANN"), ("PB2", "BETA^BOB")]
    line = f"StudyInstanceUID {st} is used by 2 patients (PA1 ALPHA^ANN, PB2 BETA^BOB): shown apart; check the source"
    for f, ds, pid in (("a.dcm", a, "PA1"), ("b.dcm", b, "PB2")):
        s, study, pat = _of(idx, tmp_path / f)
        assert pat.id == pid and study.uid == st and study.series == [s] and s.instances[0].path.endswith(f)
        assert s.key == s.uid == ds.SeriesInstanceUID  # the key stays the UID: its series UID is its own
        assert s.warnings == [line] and study.warnings == [line]
    assert not idx.problems


# ------------------------------------------------------------------ a Series Instance UID of two patients
def test_one_series_uid_in_two_patients_studies_stays_apart_with_keys_of_their_own(tmp_path):
    se = generate_uid()
    _film(tmp_path / "a.dcm", "PC1", "GAMMA^GUS", "20240301", series=se)
    _film(tmp_path / "b.dcm", "PD2", "DELTA^DAN", "20200101", series=se, flip=True)
    _film(tmp_path / "c.dcm", "PC1", "GAMMA^GUS", "20230101")  # a series of its own: unchanged
    idx = scan(str(tmp_path))
    line = f"SeriesInstanceUID {se} is used by 2 patients (PD2 DELTA^DAN, PC1 GAMMA^GUS): shown apart; check the source"
    (sa, sta, pa), (sb, stb, pb) = _of(idx, tmp_path / "a.dcm"), _of(idx, tmp_path / "b.dcm")
    assert (pa.name, pb.name) == ("GAMMA^GUS", "DELTA^DAN")
    assert [r.path for r in sa.instances] == [str(tmp_path / "a.dcm")]
    assert [r.path for r in sb.instances] == [str(tmp_path / "b.dcm")]
    assert sta.series == [sa] and stb.series == [sb]  # the second study is no longer empty
    assert sa.uid == sb.uid == se and {sa.key, sb.key} == {f"{se}@1", f"{se}@2"}
    assert idx.find_series(sa.key) is sa and idx.find_series(sb.key) is sb
    assert sa.warnings == sb.warnings == [line] and sta.warnings == stb.warnings == [line]
    sc = _of(idx, tmp_path / "c.dcm")[0]
    assert sc.key == sc.uid and not sc.warnings


def test_one_series_uid_in_two_studies_of_one_patient_stays_apart(tmp_path):
    se, st1, st2 = generate_uid(), generate_uid(), generate_uid()
    _film(tmp_path / "a.dcm", "P1", "ONE^PAT", "20240301", study=st1, series=se)
    _film(tmp_path / "b.dcm", "P1", "ONE^PAT", "20200101", study=st2, series=se, flip=True)
    idx = scan(str(tmp_path))
    assert len(idx.patients) == 1 and len(idx.patients[0].studies) == 2
    (sa, sta, _), (sb, stb, _) = _of(idx, tmp_path / "a.dcm"), _of(idx, tmp_path / "b.dcm")
    assert (sta.uid, stb.uid) == (st1, st2) and sta.series == [sa] and stb.series == [sb]
    assert sa.key != sb.key and sa.n_instances == sb.n_instances == 1
    assert sa.warnings[0].startswith(f"SeriesInstanceUID {se} is used in 2 studies of P1 ONE^PAT")


def test_files_of_two_patients_in_one_series_are_never_stacked(tmp_path):
    """The same Study and Series Instance UID, two patients: never one two-image series."""
    st, se = generate_uid(), generate_uid()
    _film(tmp_path / "a.dcm", "PA1", "ALPHA^ANN", study=st, series=se)
    _film(tmp_path / "b.dcm", "PB2", "BETA^BOB", study=st, series=se, flip=True)
    idx = scan(str(tmp_path))
    assert len(idx.patients) == 2 and [s.n_instances for s in idx.all_series()] == [1, 1]
    for f, name in (("a.dcm", "ALPHA^ANN"), ("b.dcm", "BETA^BOB")):
        s, _, pat = _of(idx, tmp_path / f)
        assert pat.name == name and s.instances[0].get("PatientName") == name
        assert [w.split(" is used")[0] for w in s.warnings] == [f"StudyInstanceUID {st}", f"SeriesInstanceUID {se}"]


def test_a_result_of_another_patient_is_not_offered_on_a_series_of_the_same_uid():
    """A SEG names its source series by UID alone: with that UID used by two patients, only the
    SEG of the series' own patient is its result."""
    se = generate_uid()

    def rec(name, pid, series, sop=None):
        tags = {"PatientName": name, "PatientID": pid, "StudyInstanceUID": f"2.25.{abs(hash(name))}",
                "SeriesInstanceUID": series, "SOPInstanceUID": generate_uid()}
        if sop:
            tags["SOPClassUID"] = sop
        return InstanceRecord(path=f"/nonexistent/{name}-{series[-4:]}.dcm", tags=tags)

    idx = StudyIndex("/")
    _build_tree(idx, [rec("A^A", "1", se), rec("B^B", "2", se), rec("A^A", "1", generate_uid(), SEG_CLASS)])
    seg = next(s for s in idx.all_series() if s.result_kind)
    seg.references = [se]
    a = next(s for s in idx.all_series() if s.uid == se and idx.patient_of(s).name == "A^A")
    b = next(s for s in idx.all_series() if s.uid == se and idx.patient_of(s).name == "B^B")
    assert idx.results_for(a) == [seg] and idx.results_for(b) == []


# ------------------------------------------------------------------ what the viewer shows
@pytest.mark.gui
def test_the_corner_text_names_the_patient_of_the_film_shown(qapp, tmp_path):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings

    from _qt import pump_until
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow

    st, se = generate_uid(), generate_uid()
    _film(tmp_path / "study" / "a.dcm", "PA1", "ALPHA^ANN", study=st)
    _film(tmp_path / "study" / "b.dcm", "PB2", "BETA^BOB", study=st, flip=True)
    _film(tmp_path / "series" / "a.dcm", "PC1", "GAMMA^GUS", "20240301", series=se)
    _film(tmp_path / "series" / "b.dcm", "PD2", "DELTA^DAN", "20200101", series=se, flip=True)
    make_app()
    for case, want in (("study", ["BETA, BOB", "ID PB2"]), ("series", ["DELTA, DAN", "ID PD2"])):
        w = MainWindow(settings=QSettings(str(tmp_path / f"{case}.ini"), QSettings.IniFormat))
        try:
            w.resize(1600, 1000)
            w.show()
            w.hanging.enabled = False
            w.open_path(str(tmp_path / case), str(tmp_path / case / "b.dcm"))
            assert pump_until(lambda: w.load_state == "done" and w.doc.volume is not None
                              and w.doc.volume.loaded.all(), 60), w.last_error
            vol = w.doc.volume
            assert [os.path.basename(h.path) for h in vol.headers] == ["b.dcm"]
            tl = w.view_area.grid.cells[0].view.annotation_text()["tl"]
            assert tl[:2] == want, tl
            assert any("shown apart" in x for x in vol.warnings)
        finally:
            w.close()


def test_empty_trailing_name_components_are_one_patient(tmp_path):
    """"DOE^JANE", "DOE^JANE^^^" and "Doe^Jane" are one Person Name (PS3.5 6.2; the priors'
    rule too): one series, one patient, no warning (a series whose files differ only so is not
    split)."""
    from imaging_assist.dicom.index import name_key

    assert name_key("Yamada^Tarou=山田^太郎=") == name_key("YAMADA^TAROU=山田^太郎") != name_key("YAMADA^TAROU")
    study, series = generate_uid(), generate_uid()
    for i, name in enumerate(["DOE^JANE", "DOE^JANE^^^", "Doe^Jane^^^ "]):
        _film(tmp_path / f"{i}.dcm", "P1", name, study=study, series=series)
    index = scan(str(tmp_path))
    (s,) = index.image_series()
    assert len(index.patients) == 1 and s.n_instances == 3 and s.key == series
    assert not [w for w in s.warnings if "used by" in w]
