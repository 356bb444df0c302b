"""One query model for C-FIND and QIDO-RS, and one row format for their answers.

Filters follow DICOM matching (PS3.4 C.2.2.2): ``*`` and ``?`` wildcards in names, IDs and
descriptions, a date range ``FROM-TO`` (either end may be empty).  At study level the modality
filter matches Modalities in Study and the description the Study Description; at series level
they match the series' Modality and Series Description.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .nodes import PacsError
from .transfer import valid_uid

_DATE = r"([0-9]{8})"  # ASCII digits only: a DICOM DA value (\d also takes Arabic-Indic digits)
DEFAULT_LIMIT = 1000  # rows kept from one query; more are cancelled and the caller is told


class Rows(list):
    """Query answers; ``truncated`` when the node had more than ``limit`` matches (or, for a
    QIDO query the server cannot take as it is, when not all its answers could be searched);
    ``notes``: what the user should know about how the answer was obtained."""
    truncated: bool = False
    limit: int = DEFAULT_LIMIT
    notes: tuple = ()


def normalise_date(text: str, what: str = "date") -> str:
    """``YYYYMMDD``, ``FROM-TO``, ``FROM-``, ``-TO``; ISO dashes (2024-01-31) accepted.  Digits
    of other scripts (a date typed on an Arabic keyboard: ٢٠٢٤٠١٣١) are sent as ASCII digits,
    the only ones a DICOM date may hold."""
    t = _ascii_digits((text or "").strip())
    if not t:
        return ""
    t = re.sub(r"([0-9]{4})-([0-9]{2})-([0-9]{2})", r"\1\2\3", t)
    if not re.fullmatch(rf"{_DATE}|{_DATE}?-{_DATE}?", t) or t == "-":
        raise PacsError(f"invalid {what} {text!r}: use YYYYMMDD or FROM-TO (e.g. 20240101-20241231)")
    for d in re.findall(r"[0-9]{8}", t):
        y, m, dd = int(d[:4]), int(d[4:6]), int(d[6:])
        if not (1 <= m <= 12 and 1 <= dd <= 31 and y >= 1800):
            raise PacsError(f"invalid {what} {text!r}: {d} is not a date")
    return t


def _ascii_digits(text: str) -> str:
    """Every Unicode decimal digit (Arabic-Indic, Persian, Devanagari, full-width...) as its
    ASCII digit; other characters unchanged."""
    return "".join(str(unicodedata.decimal(c)) if not c.isascii() and unicodedata.decimal(c, None) is not None
                   else c for c in text)


_SAFE = re.compile(r"^[^\\\x00-\x1f]*$")  # no backslash (multi-value separator) or control chars


def _text(value: str, what: str, limit: int = 64) -> str:
    v = (value or "").strip()
    if not _SAFE.match(v) or len(v) > limit:
        raise PacsError(f"invalid {what} {value!r}: at most {limit} characters, no backslash")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (undecodable bytes on the command line)
        raise PacsError(f"invalid {what} {value!r}: not valid text (cannot be encoded as "
                        f"UTF-8)") from None
    return v


def _uid(value: str) -> str:
    """A Study Instance UID filter: digits and dots (UID matching has no wildcards)."""
    v = (value or "").strip()
    if v and not valid_uid(v):
        raise PacsError(f"invalid study UID {value!r}: digits and dots, at most 64 characters")
    return v


UTF8 = "ISO_IR 192"


def charset_for(values) -> str | None:
    """The Specific Character Set an identifier holding ``values`` needs: None when all are
    ASCII (the default repertoire), else ``ISO_IR 192`` (UTF-8, which holds every character,
    so no value is ever sent as ``?``, a wildcard).  A value that is not valid text (a lone
    surrogate) is refused in one line rather than sent altered."""
    need = None
    for v in values:
        if not isinstance(v, str) or v.isascii():
            continue
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise PacsError(f"invalid query value {v!r}: not valid text (cannot be encoded as "
                            f"UTF-8)") from None
        need = UTF8
    return need


@dataclass
class Query:
    patient: str = ""
    patient_id: str = ""
    birth_date: str = ""
    date: str = ""
    modality: str = ""
    accession: str = ""
    description: str = ""
    study_uid: str = ""
    level: str = "study"

    def checked(self) -> Query:
        if self.level not in ("study", "series"):
            raise PacsError(f"invalid level {self.level!r}: study or series")
        return Query(patient=_text(self.patient, "patient name"),
                     patient_id=_text(self.patient_id, "patient ID"),
                     birth_date=normalise_date(self.birth_date, "birth date"),
                     date=normalise_date(self.date),
                     modality=_text(self.modality, "modality", 16).upper(),
                     accession=_text(self.accession, "accession number", 16),
                     description=_text(self.description, "description"),
                     study_uid=_uid(self.study_uid), level=self.level)

    def identifier(self) -> dict[str, str]:
        """Keyword -> value: filters set, return keys empty (both C-FIND and QIDO use it)."""
        q = self
        d = {"PatientName": q.patient, "PatientID": q.patient_id, "PatientBirthDate": q.birth_date,
             "StudyDate": q.date, "StudyTime": "", "AccessionNumber": q.accession,
             "StudyInstanceUID": q.study_uid, "StudyDescription": "", "PatientSex": ""}
        if q.level == "study":
            d.update(StudyDescription=q.description, ModalitiesInStudy=q.modality,
                     NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")
        else:
            d.update(Modality=q.modality, SeriesDescription=q.description, SeriesNumber="",
                     SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")
        return d

    def filters(self) -> dict[str, str]:
        return {k: v for k, v in self.identifier().items() if v}

    def return_keys(self) -> list[str]:
        return [k for k, v in self.identifier().items() if not v]


def _s(ds, kw: str) -> str:
    v = ds.get(kw, "")
    if v is None:
        return ""
    if hasattr(v, "value"):
        v = v.value
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def _n(ds, kw: str):
    v = _s(ds, kw).strip()
    try:
        return int(v)
    except ValueError:
        return None


def row_from_dataset(ds, level: str) -> dict:
    """A C-FIND identifier or QIDO answer (pydicom Dataset) as a plain row."""
    row = {"patient_name": _s(ds, "PatientName"), "patient_id": _s(ds, "PatientID"),
           "birth_date": _s(ds, "PatientBirthDate"), "sex": _s(ds, "PatientSex"),
           "study_date": _s(ds, "StudyDate"), "study_time": _s(ds, "StudyTime"),
           "accession": _s(ds, "AccessionNumber"), "study_description": _s(ds, "StudyDescription"),
           "study_uid": _s(ds, "StudyInstanceUID")}
    if level == "study":
        row.update(modalities=_s(ds, "ModalitiesInStudy"),
                   n_series=_n(ds, "NumberOfStudyRelatedSeries"),
                   n_instances=_n(ds, "NumberOfStudyRelatedInstances"))
    else:
        row.update(series_uid=_s(ds, "SeriesInstanceUID"), modality=_s(ds, "Modality"),
                   series_description=_s(ds, "SeriesDescription"),
                   series_number=_n(ds, "SeriesNumber"),
                   n_instances=_n(ds, "NumberOfSeriesRelatedInstances"))
    return row
