"""Encapsulated PDF Storage of the report, in the source's study (pydicom: highdicom has
no class for it; the modules are those of PS3.3 A.45.1)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from ..privacy.audit import record_export
from . import dicom_common as dc

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
_MAX_PDF = 512 * 1024 * 1024


def build_encapsulated_pdf(pdf_path, datasets, *, series_number: int = 9904,
                           title: str = "Imaging Assist report", series_uid: str | None = None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    pdf_path = Path(pdf_path)
    try:
        size = pdf_path.stat().st_size
        if size > _MAX_PDF:
            raise dc.DicomExportError(f"{pdf_path}: the report is larger than 512 MiB")
        data = pdf_path.read_bytes()
    except OSError as e:
        raise dc.DicomExportError(f"cannot read the report {pdf_path}: {e.strerror or e}") from None
    if not data.startswith(b"%PDF-"):
        raise dc.DicomExportError(f"{pdf_path} is not a PDF file")
    src = datasets[0]
    now = _dt.datetime.now()
    uid = dc.new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = getattr(src, "SpecificCharacterSet", "ISO_IR 192") or "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = uid
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
               "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
               "StudyDescription", "PatientAge", "IssuerOfPatientID", "PatientIdentityRemoved",
               "DeidentificationMethod"):
        if kw in src:  # DA/TM in the forms a writer may use (source_datasets' datasets already are)
            setattr(ds, kw, dc.dicom_date_value(src[kw].value, src[kw].VR))
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if kw not in ds:
            setattr(ds, kw, "")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid or dc.new_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = dc.described("AI report (PDF)")
    ds.Manufacturer = dc.MANUFACTURER
    ds.ManufacturerModelName = dc.MODEL_NAME
    ds.SoftwareVersions = dc.software_version()
    ds.ConversionType = "WSD"  # workstation
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the report shows patient identity
    ds.DocumentTitle = f"{title} ({dc.NOT_CLINICAL})"[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    refs = []
    for d in datasets:
        r = Dataset()
        r.ReferencedSOPClassUID = d.SOPClassUID
        r.ReferencedSOPInstanceUID = d.SOPInstanceUID
        refs.append(r)
    ds.SourceInstanceSequence = refs
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    dc.finalize(ds, datasets)
    return ds


def write_encapsulated_pdf(pdf_path, datasets, out_path, **kw) -> Path:
    ds = build_encapsulated_pdf(pdf_path, datasets, **kw)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    record_export("PDF", out_path, datasets=datasets)  # the audit trail (never raises)
    return out_path
