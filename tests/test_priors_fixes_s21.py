"""Priors and hanging: who a prior belongs to, and which study is older (session 21 fixes).

Cases are films written from the real Fuji CR chest (copies with changed attributes, the
prior's pixels flipped), scanned as a folder each:

* the same PatientID under another name or birth date is still hung / listed as the prior, and
  said: in the hanging's notes, the Priors dock, the viewport's link note, the browser tree and
  nodule growth's offer;
* the same PatientID from another issuer (IssuerOfPatientID both given, different) is another
  patient: never a prior;
* a chest film's prior is the most recent chest film, not a hand film made in between; another or
  an unrecorded body part is said;
* StudyDate written YYYY.MM.DD (PS3.5) is a date, not text sorted before YYYYMMDD;
* a current study without a date has no prior (which is older is unknown), the others are listed;
* a study dated in the future is said and is neither the start study nor a prior.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until  # noqa: E402
from conftest import DICOM, need  # noqa: E402
from imaging_assist import hanging, viewing  # noqa: E402
from imaging_assist.dicom import index as ix  # noqa: E402

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
NAME_NOTE = "same patient ID, different name (JONES^MARY / SMITH^JOHN): check the patient"


def film(path: Path, pid, name, date, issuer=None, bp="CHEST", birth=None, flip=False):
    """One CR film: a copy of the Fuji chest with these attributes and new UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(need(CR), force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.PatientID, ds.PatientName, ds.BodyPartExamined, ds.Modality = pid, name, bp, "CR"
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    if birth is not None:
        ds.PatientBirthDate = birth
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    if date is None:
        if "StudyDate" in ds:
            del ds.StudyDate
    else:
        ds.StudyDate = date
    if "StudyTime" in ds:
        del ds.StudyTime
    ds.SeriesDescription = ds.StudyDescription = f"PA {name} {date}"
    if flip:
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=True, little_endian=True)


def _scan(folder: Path):
    idx = ix.scan(str(folder))
    return idx, (lambda name: idx.find_series(str(folder / name)))


def _plan(idx, s):
    store = hanging.ProtocolStore(Path(idx.root).parent / f"{Path(idx.root).name}-hanging.json")
    return hanging.plan(store.match(s.modality, s.body_part), idx, s)


def _shown(idx, h):
    return [os.path.basename(idx.find_series(k).instances[0].path) for k in h.keys]


@pytest.fixture(scope="module")
def app():
    from imaging_assist_ui.app import make_app

    return make_app()


@pytest.fixture()
def same_id(tmp_path):
    film(tmp_path / "now.dcm", "P100", "SMITH^JOHN", "20240301")
    film(tmp_path / "prior.dcm", "P100", "JONES^MARY", "20200101", flip=True)
    return _scan(tmp_path)


# ------------------------------------------------------------------ 3. same ID, another name
def test_same_id_other_name_is_hung_as_the_prior_with_a_note(same_id):
    idx, ser = same_id
    now, prior = ser("now.dcm"), ser("prior.dcm")
    h = _plan(idx, now)
    assert _shown(idx, h) == ["now.dcm", "prior.dcm"]  # the match is kept (a typo is common) ...
    assert NAME_NOTE in h.notes  # ... and said
    assert viewing.patient_note(idx, now, idx.study_of(prior)) == NAME_NOTE


def test_same_id_other_birth_date_is_said_and_spelling_is_not(tmp_path):
    film(tmp_path / "now.dcm", "P5", "DOE^ANN", "20240301", birth="19500101")
    film(tmp_path / "prior.dcm", "P5", "Doe Ann", "20200101", birth="19620505", flip=True)
    idx, ser = _scan(tmp_path)
    h = _plan(idx, ser("now.dcm"))
    assert _shown(idx, h) == ["now.dcm", "prior.dcm"]
    assert h.notes == ["same patient ID, different birth date (19620505 / 19500101): check the patient"]


def test_same_id_other_name_in_the_priors_dock_the_tree_and_the_link_note(same_id, app):
    from imaging_assist_ui.radiology.browser import StudyBrowser
    from imaging_assist_ui.radiology.document import ViewerDocument
    from imaging_assist_ui.radiology.layouts import GridArea
    from imaging_assist_ui.radiology.priors import PriorsPanel

    idx, ser = same_id
    now, prior = ser("now.dcm"), ser("prior.dcm")
    panel = PriorsPanel()
    assert len(panel.set_current(idx, now)) == 1
    assert NAME_NOTE in panel.title.text() and NAME_NOTE in panel.list.item(0).text()
    b = StudyBrowser()
    b.set_index(idx)
    tops = [b.tree.topLevelItem(i) for i in range(b.tree.topLevelItemCount())]
    assert len(tops) == 2 and all("same ID as another name" in t.text(0) for t in tops)
    assert all(NAME_NOTE.split(" (")[0] in t.toolTip(0) for t in tops)
    g = GridArea(ViewerDocument())
    for c, s in zip(g.cells, (now, prior)):  # two radiographs side by side
        c.doc.volume = NS(has_geometry=False, is_cine=False, n_slices=1)
        c.doc.series, c.doc.patient = s, idx.patient_of(s)
    g._relink()
    assert g.cells[1].link_note == NAME_NOTE


def test_nodule_growth_offers_a_prior_of_another_name_with_a_note(same_id):
    from imaging_assist_ui.radiology.nodules import NoduleTool

    idx, ser = same_id
    now, prior = ser("now.dcm"), ser("prior.dcm")

    def nodule(s, date):
        return NS(id="N1", series=s.key, facts={"patient_id": "P100", "study_date": date,
                                                 "study_uid": idx.study_of(s).uid})
    cur, old = nodule(now, "2024-03-01"), nodule(prior, "2020-01-01")
    said = []
    tool = NS(by_series={now.key: [cur], prior.key: [old]}, w=NS(loading=NS(index=idx)),
              _say=lambda text, kind="info": said.append((text, kind)))
    assert NoduleTool.priors_of(tool, cur) == [old]  # offered ...
    assert said == [(f"N1: N1 of 2020-01-01: {NAME_NOTE}", "warn")]  # ... and said


# ------------------------------------------------------------------ 4. another issuer
def test_same_id_from_another_issuer_is_not_a_prior(tmp_path, app):
    from imaging_assist_ui.radiology.document import ViewerDocument
    from imaging_assist_ui.radiology.layouts import GridArea

    film(tmp_path / "now.dcm", "12345", "DOE^JANE", "20240301", issuer="HOSP_A")
    film(tmp_path / "prior.dcm", "12345", "DOE^JANE", "20200101", issuer="HOSP_B", flip=True)
    film(tmp_path / "same.dcm", "12345", "DOE^JANE", "20180101", issuer="HOSP_A")
    idx, ser = _scan(tmp_path)
    now, other = ser("now.dcm"), ser("prior.dcm")
    assert [st.date for st in viewing.other_studies(idx, now)] == ["20180101"]
    assert [st.date for st in viewing.prior_studies(idx, now)] == ["20180101"]
    assert _shown(idx, _plan(idx, now)) == ["now.dcm", "same.dcm"]
    g = GridArea(ViewerDocument())  # put beside by hand: another patient
    for c, s in zip(g.cells, (now, other)):
        c.doc.volume = NS(has_geometry=False, is_cine=False, n_slices=1)
        c.doc.series, c.doc.patient = s, idx.patient_of(s)
    g._relink()
    assert g.cells[1].link_note == "another patient (ID 12345 of HOSP_B), not the current one"


# ------------------------------------------------------------------ 5. another body part
def test_a_chest_films_prior_is_the_chest_film_not_a_hand_film_in_between(tmp_path):
    film(tmp_path / "now.dcm", "P1", "BODY^PART", "20240301")
    film(tmp_path / "hand2023.dcm", "P1", "BODY^PART", "20230101", bp="HAND", flip=True)
    film(tmp_path / "chest2019.dcm", "P1", "BODY^PART", "20190101")
    idx, ser = _scan(tmp_path)
    h = _plan(idx, ser("now.dcm"))
    assert _shown(idx, h) == ["now.dcm", "chest2019.dcm"] and not h.notes


@pytest.mark.parametrize("bp,note", [
    ("HAND", "the prior is of another body part (HAND, current CHEST): check"),
    ("", "body part not recorded (prior ?, current CHEST): check the prior is the same exam")])
def test_a_prior_of_another_or_no_body_part_is_said(tmp_path, bp, note):
    film(tmp_path / "now.dcm", "P1", "BODY^PART", "20240301")
    film(tmp_path / "old.dcm", "P1", "BODY^PART", "20230101", bp=bp, flip=True)
    idx, ser = _scan(tmp_path)
    h = _plan(idx, ser("now.dcm"))
    assert _shown(idx, h) == ["now.dcm", "old.dcm"]
    assert h.notes == [note]


# ------------------------------------------------------------------ 6. dates written YYYY.MM.DD
def test_dates_written_with_dots_are_dates_not_text(tmp_path, app):
    from imaging_assist_ui.radiology.priors import PriorsPanel

    film(tmp_path / "now.dcm", "P600", "DATE^FMT", "20200601")
    film(tmp_path / "later.dcm", "P600", "DATE^FMT", "2020.12.01", flip=True)
    film(tmp_path / "old.dcm", "P600", "DATE^FMT", "2019.01.01")
    idx, ser = _scan(tmp_path)
    now, later = ser("now.dcm"), ser("later.dcm")
    assert viewing.is_later(idx.study_of(later), idx.study_of(now))
    assert [st.date for st in viewing.other_studies(idx, now)] == ["2020.12.01", "2019.01.01"]
    assert [st.date for st in viewing.prior_studies(idx, now)] == ["2019.01.01"]
    assert _shown(idx, _plan(idx, now)) == ["now.dcm", "old.dcm"]  # not the December film
    assert [st.date for st in viewing.prior_studies(idx, later)] == ["20200601", "2019.01.01"]
    panel = PriorsPanel()
    panel.set_current(idx, now)
    assert panel.list.item(0).text().startswith("2020-12-01  ") and "(later)" in panel.list.item(0).text()
    # a date that is not one is unknown, never compared as text
    assert viewing.parse_date("2020.12.01").isoformat() == "2020-12-01" and viewing.parse_date("2020-13-01") is None
    assert not viewing.is_later(NS(date="zzzz", time=""), NS(date="20200101", time=""))


# ------------------------------------------------------------------ 7. current study without a date
def test_a_current_study_without_a_date_hangs_no_prior(tmp_path, app):
    from imaging_assist_ui.radiology.priors import PriorsPanel

    film(tmp_path / "now.dcm", "P700", "NO^DATE", None)
    film(tmp_path / "newer.dcm", "P700", "NO^DATE", "20250101", flip=True)
    idx, ser = _scan(tmp_path)
    now = ser("now.dcm")
    assert viewing.prior_studies(idx, now) == []
    h = _plan(idx, now)
    assert _shown(idx, h) == ["now.dcm"]
    assert "current study: no study date; which study is older is unknown, so none is hung as its prior" in h.notes
    panel = PriorsPanel()
    assert len(panel.set_current(idx, now)) == 1  # listed, not called its prior
    assert "(order unknown)" in panel.list.item(0).text() and "which is older is unknown" in panel.title.text()


# ------------------------------------------------------------------ 8. a study dated in the future
def test_a_study_dated_in_the_future_is_said_and_never_the_newest_or_a_prior(tmp_path):
    film(tmp_path / "now.dcm", "P2", "FUTURE^DATE", "20240301")
    film(tmp_path / "typo.dcm", "P2", "FUTURE^DATE", "20420301", flip=True)
    idx, ser = _scan(tmp_path)
    now, typo = ser("now.dcm"), ser("typo.dcm")
    assert not viewing.is_later(idx.study_of(typo), idx.study_of(now))  # the start rule's test
    assert viewing.prior_studies(idx, now) == [] and viewing.prior_studies(idx, typo) == []
    assert "a study dated in the future (2042-03-01) is not taken as a prior: check its date" in _plan(idx, now).notes
    assert any("dated in the future (2042-03-01): check" in n for n in _plan(idx, typo).notes)


@pytest.mark.parametrize("typo_name", ["typo.dcm", "a_typo.dcm"])  # listed after / before the real one
def test_a_folder_with_a_study_dated_in_the_future_opens_on_the_real_newest(tmp_path, tmp_path_factory, typo_name):
    film(tmp_path / "now.dcm", "P2", "FUTURE^DATE", "20240301")
    film(tmp_path / typo_name, "P2", "FUTURE^DATE", "20420301", flip=True)
    w = open_window(tmp_path_factory, str(tmp_path))
    try:
        assert wait_until(lambda: w.doc.series is not None, 30), w.last_error
        assert os.path.basename(w.doc.series.instances[0].path) == "now.dcm"
        assert wait_until(lambda: w.reading.priors.list.count() == 1, 10)
        assert "(dated in the future: check)" in w.reading.priors.list.item(0).text()
    finally:
        w.close()
