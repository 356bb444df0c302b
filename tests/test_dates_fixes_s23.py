"""Session 23: dates and times.

1. A de-identified DICOM export with Retain Modified Dates shifted the source StudyDate once more
   for every object it wrote when the study was dated after the run day (a year typo, 2099):
   the "own stamp" test compared with today, and the shift edited the source's own element,
   which highdicom had put into the SEG/SR (the next object copied the re-shifted value).
2. A same-day study from a site ahead of the workstation's time zone was "dated in the future"
   (listed last, no priors): compared with the workstation's date.today().
3. Sources with the ACR-NEMA forms PS3.5 asks readers to accept (DA 2024.02.29, TM 08:10:00):
   no SEG or SR was written, the PDF carried invalid values.
4. anonymize --retain-modified-dates removed a full date written YYYY.MM.DD instead of moving it.
5. The corner-text age and the model population check ignored a DOB or StudyDate written
   YYYY.MM.DD and read "19940305XYZ" as a date.
"""

from __future__ import annotations

import datetime as dt
import glob
import subprocess
import sys
import time
import warnings
import zoneinfo

import pydicom
import pytest
from pydicom.dataset import Dataset

from conftest import SHARED, need
from test_export_dicom import MINI_PDF, _load, _results, dciodvfy_errors

from imaging_assist import viewing
from imaging_assist.dicom.index import StudyInfo, _study_order
from imaging_assist.export.dicom import write_dicom_results
from imaging_assist.models import matching
from imaging_assist.overlay_text import age_text
from imaging_assist.privacy.deid import Options, deidentify_dataset, deidentify_result_dates, patient_key
from imaging_assist.privacy.uids import Keyed

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
KEY = bytes(range(32))


def _slab(folder, **values):
    """The first 6 slices of the LIDC slab with the given attributes set."""
    folder.mkdir()
    for f in sorted(glob.glob(str(need(SLAB) / "*.dcm")))[:6]:
        d = pydicom.dcmread(f)
        for kw, v in values.items():
            setattr(d, kw, v)
        d.save_as(folder / f.rsplit("/", 1)[1])
    return folder


def _export(tmp_path, values, opts=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = _load(_slab(tmp_path / "in", **values))
        seg, _ = _results(vol, labels=("background", "nodule"))
        pdf = tmp_path / "report.pdf"
        pdf.write_bytes(MINI_PDF)
        objs = write_dicom_results(vol, [seg], tmp_path / "out", report_pdf=pdf, deidentify=opts, deid_key=KEY)
    assert [o.kind for o in objs] == ["SEG", "SR", "PDF"]
    return {o.kind: pydicom.dcmread(o.path) for o in objs}, {o.kind: o.path for o in objs}


# ------------------------------------------------------------------ 1. compound shift


def test_modified_dates_export_shifts_a_future_study_date_once(tmp_path):
    dates = {kw: "20990101" for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")}
    objs, _ = _export(tmp_path, dict(dates, StudyTime="081000"), Options(modified_dates=True))
    image = pydicom.dcmread(sorted(glob.glob(str(tmp_path / "in" / "*.dcm")))[0])
    offset = Keyed(KEY).day_offset(patient_key(image))
    deidentify_dataset(image, Keyed(KEY), Options(modified_dates=True))  # what anonymize writes
    assert image.StudyDate == (dt.date(2099, 1, 1) + dt.timedelta(days=offset)).strftime("%Y%m%d")
    assert {k: d.StudyDate for k, d in objs.items()} == {k: image.StudyDate for k in objs}
    built = {(dt.date.today() + dt.timedelta(days=offset - k)).strftime("%Y%m%d") for k in (0, 1)}  # midnight
    for d in objs.values():  # the objects' own dates still move by the offset
        assert d.ContentDate in built


def test_result_dates_never_edit_the_source_element():
    """highdicom puts the source's own DataElement into the object: de-identifying the object's
    dates must leave the source header as it was, and a copied date dated after today stays."""
    src = Dataset()
    src.StudyDate = "20891011"  # already shifted (a 2099 typo)
    src.StudyTime = "081000"
    obj = Dataset()
    obj.add(src["StudyDate"])  # the same element object, as highdicom's _copy_attribute does
    obj.add(src["StudyTime"])
    obj.ContentDate = dt.date.today().strftime("%Y%m%d")
    obj.ContentTime = "120000"
    obj.source_header = src  # what export.dicom_common.finalize sets
    deidentify_result_dates(obj, Options(modified_dates=True), dt.date.today(), -400)
    assert src.StudyDate == "20891011" and obj.StudyDate == "20891011"
    assert obj.ContentDate == (dt.date.today() - dt.timedelta(days=400)).strftime("%Y%m%d")


# ------------------------------------------------------------------ 2. time zones


@pytest.fixture
def behind_utc(monkeypatch):
    """A workstation at UTC-12: every site's today is on or after its tomorrow."""
    monkeypatch.setenv("TZ", "Etc/GMT+12")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_same_day_study_at_a_site_ahead_is_not_in_the_future(behind_utc):
    site_today = dt.datetime.now(zoneinfo.ZoneInfo("Pacific/Kiritimati")).date()  # UTC+14
    assert site_today > dt.date.today()  # the workstation is still on an earlier date
    study = StudyInfo(uid="1.2.3", date=site_today.strftime("%Y%m%d"), time="033000")
    assert not viewing.in_future(study)
    assert viewing.date_note(study) == ""
    assert _study_order(study)[0] == 1  # ordered by its date, not listed last
    prior = StudyInfo(uid="1.2.4", date=(site_today - dt.timedelta(days=2)).strftime("%Y%m%d"))
    assert viewing._when(prior) < viewing._when(study)
    typo = StudyInfo(uid="1.2.5", date=(viewing.latest_today() + dt.timedelta(days=1)).strftime("%Y%m%d"))
    assert viewing.in_future(typo) and viewing.date_note(typo).startswith("dated in the future")


# ------------------------------------------------------------------ 3. ACR-NEMA forms in an export


def test_acr_nema_source_dates_export_valid_objects(tmp_path):
    objs, paths = _export(tmp_path, {"StudyDate": "2024.02.29", "StudyTime": "08:10:00.5",
                                     "PatientBirthDate": "1960.01.02", "SeriesDate": "2024.02.29"})
    for kind, d in objs.items():
        assert (d.StudyDate, d.StudyTime, d.PatientBirthDate) == ("20240229", "081000.5", "19600102"), kind
        assert dciodvfy_errors(paths[kind]) == [], kind
    # the sources on disk are untouched
    assert pydicom.dcmread(sorted(glob.glob(str(tmp_path / "in" / "*.dcm")))[0]).StudyTime == "08:10:00.5"


# ------------------------------------------------------------------ 4. anonymize a YYYY.MM.DD date


def test_modified_dates_move_a_full_date_written_with_dots():
    ds = Dataset()
    ds.PatientID = "PID42"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: "Invalid value for VR DA"
        ds.StudyDate = "2024.02.29"
        ds.SeriesDate = "202402"  # partial: removed
    ds.ContentDate = "20240229"
    offset = Keyed(KEY).day_offset(patient_key(ds))
    deidentify_dataset(ds, Keyed(KEY), Options(modified_dates=True))
    moved = (dt.date(2024, 2, 29) + dt.timedelta(days=offset)).strftime("%Y%m%d")
    assert ds.StudyDate == moved and ds.ContentDate == moved
    assert not ds.get("SeriesDate")


# ------------------------------------------------------------------ 5. ages from YYYY.MM.DD


def test_age_reads_dates_with_dots_and_refuses_junk():
    assert age_text(None, "1994.03.05", "20240101") == "Age 29 y (from DOB)"
    assert age_text(None, "19940305", "2024.01.01") == "Age 29 y (from DOB)"
    assert age_text(None, "19940305XYZ", "20240101") == ""
    years = matching._age_years([{"PatientBirthDate": "1994.03.05", "StudyDate": "20240101"}], None)
    assert years is not None and 29 < years < 30
    assert matching._age_years([{"PatientBirthDate": "19940305XYZ", "StudyDate": "20240101"}], None) is None
    # matching stays importable without Qt
    code = ("import sys, imaging_assist.models.matching as m; assert m._date('1994.03.05'); "
            "assert not [k for k in sys.modules if k.startswith(('PySide', 'PyQt', 'torch'))]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
