"""Session 21: the dates of DICOM results made from de-identified data, and a GSPS's Type 1
Presentation Creation Date/Time.

The SEG, SR and Encapsulated PDF stamp their Content / Instance Creation / Contribution (and
Acquisition) dates with the day they are built: those put the real date back into an object
whose study date the profile removed or shifted (ContentDate - shifted StudyDate gave away the
patient's secret offset).  Real data: the LIDC slab, its study dated today (a same-day study)."""

from __future__ import annotations

import datetime
import glob
import warnings

import pydicom

from conftest import SHARED, need
from test_export_dicom import MINI_PDF, _load, _results, dciodvfy_errors

from imaging_assist.export.dicom import DicomRun, write_dicom_results
from imaging_assist.privacy.deid import Options, deidentify_tree

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
KEY = bytes(range(32))
TODAY = datetime.date.today().strftime("%Y%m%d")


def _dated_slab(folder, study_date):
    """The LIDC slab with its study, series, acquisition and content dates set (a study of
    ``study_date``, 08:10)."""
    folder.mkdir()
    for f in sorted(glob.glob(str(need(SLAB) / "*.dcm"))):
        d = pydicom.dcmread(f)
        for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            setattr(d, kw, study_date)
        d.StudyTime = "081000"
        d.save_as(folder / f.rsplit("/", 1)[1])
    return folder


def _dates(ds):
    """(keyword, value) of every DA/DT value in ``ds``, in sequences too."""
    out = []
    for e in ds:
        if e.VR == "SQ":
            for item in e.value:
                out += _dates(item)
        elif e.VR in ("DA", "DT") and e.value:
            out.append((e.keyword, str(e.value)))
    return out


def _day(s):
    return datetime.date(int(s[:4]), int(s[4:6]), int(s[6:8]))


def _new_errors(path, plain):
    """dciodvfy errors of ``path`` that the same object without de-identification does not have."""
    return [e for e in dciodvfy_errors(path) if e not in set(dciodvfy_errors(plain))]


def _written(tmp_path, study_date, opts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = _load(_dated_slab(tmp_path / "in", study_date))
        seg, _ = _results(vol, labels=("background", "nodule"))
        pdf = tmp_path / "report.pdf"
        pdf.write_bytes(MINI_PDF)
        objs = write_dicom_results(vol, [seg], tmp_path / "d", report_pdf=pdf, deidentify=opts, deid_key=KEY)
        plain = write_dicom_results(_load(tmp_path / "in"), [seg], tmp_path / "plain", report_pdf=pdf)
    assert sorted(o.kind for o in objs) == ["PDF", "SEG", "SR"]
    return objs, {o.kind: o.path for o in plain}


def test_basic_profile_results_carry_no_real_date_and_stay_valid(tmp_path):
    """write_dicom_results(deidentify=Options()) (File -> Export results (DICOM), De-identify):
    the objects' own dates get the table's dummy (Content Date is Type 1) or go, never today."""
    objs, plain = _written(tmp_path, TODAY, Options())
    for o in objs:
        d = pydicom.dcmread(o.path)
        assert d.StudyDate == "" and d.LongitudinalTemporalInformationModified == "REMOVED", o.kind
        assert not [kv for kv in _dates(d) if kv[1][:8] == TODAY], (o.kind, _dates(d))
        assert (d.ContentDate, d.ContentTime) == ("19000101", "000000"), o.kind
        assert d.get("InstanceCreationDate", "19000101") == "19000101", o.kind
        assert d.get("AcquisitionDateTime", "19000101000000") == "19000101000000", o.kind
        assert not any("ContributionDateTime" in i for i in d.get("ContributingEquipmentSequence", [])), o.kind
        assert _new_errors(o.path, plain[o.kind]) == [], o.kind


def test_modified_dates_results_are_shifted_by_the_patient_offset(tmp_path):
    """With Retain Longitudinal ... Modified Dates, the objects' own dates move by the patient's
    offset: Content Date - Study Date is the real interval (10 days here), and the offset the
    shifted study date hides cannot be read back from an unshifted content date."""
    study = (datetime.date.today() - datetime.timedelta(days=10)).strftime("%Y%m%d")
    objs, plain = _written(tmp_path, study, Options(modified_dates=True))
    for o in objs:
        d = pydicom.dcmread(o.path)
        assert d.LongitudinalTemporalInformationModified == "MODIFIED", o.kind
        offset = (_day(d.StudyDate) - _day(study)).days
        assert offset <= -366, o.kind
        assert (_day(d.ContentDate) - _day(d.StudyDate)).days == 10, (o.kind, d.ContentDate, d.StudyDate)
        assert not [kv for kv in _dates(d) if kv[1][:8] == TODAY], (o.kind, _dates(d))
        for kw in ("InstanceCreationDate", "AcquisitionDateTime"):
            if kw in d:
                assert _day(d.get(kw)) == _day(d.ContentDate), (o.kind, kw)
        created = [str(i.ContributionDateTime) for i in d.get("ContributingEquipmentSequence", [])
                   if "ContributionDateTime" in i]
        assert (created or o.kind == "PDF") and all(_day(c) <= _day(d.ContentDate) for c in created), \
            (o.kind, created)
        assert _new_errors(o.path, plain[o.kind]) == [], o.kind


def test_analyze_deidentify_objects_carry_the_marks_and_no_real_date(tmp_path):
    """analyze/batch --deidentify --dicom: DicomRun on a volume of the de-identified copy (what
    the CLI analyses), then the report's Encapsulated PDF: no real date, the same marks as the
    GUI path, valid."""
    src = _dated_slab(tmp_path / "in", TODAY)
    deidentify_tree(src, tmp_path / "copy", Options(), key=KEY, audit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = _load(tmp_path / "copy")
        seg, _ = _results(vol, labels=("background", "nodule"))
        d = seg.to_dict()
        run = DicomRun(tmp_path / "out", echo=lambda m: None)
        run.add("series", vol, seg, d, "s")
        pdf = tmp_path / "report.pdf"
        pdf.write_bytes(MINI_PDF)
        run.finish(pdf)
        plain = {o.kind: o.path for o in write_dicom_results(_load(src), [seg], tmp_path / "plain", report_pdf=pdf)}
    assert sorted(o.kind for o in run.written) == ["PDF", "SEG", "SR"] and run.failed == 0
    for o in run.written:
        ds = pydicom.dcmread(o.path)
        assert ds.PatientIdentityRemoved == "YES", o.kind
        assert ds.LongitudinalTemporalInformationModified == "REMOVED", o.kind
        assert str(ds.DeidentificationMethod).startswith("PS3.15 Basic"), o.kind
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100", o.kind
        assert ds.StudyDate == "" and ds.ContentDate == "19000101", o.kind
        assert not [kv for kv in _dates(ds) if kv[1][:8] == TODAY], (o.kind, _dates(ds))
        assert _new_errors(o.path, plain[o.kind]) == [], o.kind


def _gsps(folder):
    import highdicom as hd
    from pydicom.uid import generate_uid

    folder.mkdir()
    ds = [pydicom.dcmread(f) for f in sorted(glob.glob(str(need(SLAB) / "*.dcm")))[:4]]
    g = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=ds, series_instance_uid=generate_uid(), series_number=1,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="m",
        manufacturer_model_name="mm", software_versions="1", device_serial_number="1",
        content_label="GSPS",
        voi_lut_transformations=[hd.pr.SoftcopyVOILUTTransformation(window_center=40., window_width=400.)])
    g.PresentationCreationDate, g.PresentationCreationTime = "20240315", "101500"
    g.save_as(folder / "gsps.dcm")
    return folder / "gsps.dcm"


def test_gsps_keeps_its_type1_presentation_creation_date_and_time(tmp_path):
    """Table E.1-1 says X, but they are Type 1 in a presentation state: the basic profile writes
    the D dummy (dciodvfy: no new error), Modified Dates shifts the date and keeps the time."""
    src = _gsps(tmp_path / "in")
    deidentify_tree(src.parent, tmp_path / "basic", Options(), key=KEY, audit=False, keep_names=True)
    out = tmp_path / "basic" / "gsps.dcm"
    d = pydicom.dcmread(out)
    assert (d.PresentationCreationDate, d.PresentationCreationTime) == ("19000101", "000000")
    assert _new_errors(out, src) == []
    deidentify_tree(src.parent, tmp_path / "mod", Options(modified_dates=True), key=KEY, audit=False,
                    keep_names=True)
    m = pydicom.dcmread(tmp_path / "mod" / "gsps.dcm")
    assert (_day(m.PresentationCreationDate) - _day("20240315")).days <= -366
    assert m.PresentationCreationTime == "101500"
