"""PS3.15 Annex E de-identification of DICOM files and folders (no Qt).

The Basic Application Level Confidentiality Profile is applied from the whole of Table E.1-1
(``imaging_assist/data/deid/ps3_15_table_e1_1.json``, made by ``scripts/gen_deid_table.py``; the
sources and editions are in its header and in docs/privacy.md), recursively into every sequence,
with the options (PS3.15 names):

- Retain Longitudinal Temporal Information with Modified Dates (:attr:`Options.modified_dates`):
  every date of one patient moves by that patient's keyed offset (whole days; intervals and times
  of day kept).
- Retain Patient Characteristics (:attr:`Options.patient_characteristics`).
- Retain Device Identity (:attr:`Options.device_identity`).
- Clean Descriptors (:attr:`Options.clean_descriptors`): descriptions and comments are kept with
  every identifying value of the same file (names, IDs, dates, institution, ...) and every long
  digit run cut out, instead of being removed.

Why hand-written and not dicognito or deid (measured, see docs/privacy.md): dicognito 0.19.0
works by VR (names, IDs, dates, UIDs, addresses) plus a short list of removed attributes; it does
not carry Table E.1-1's actions (it keeps e.g. free-text comments and descriptions the table
removes) and has none of the PS3.15 options.  deid 0.4.13 is a recipe engine whose default recipe
is a partial list.  The table itself comes from maintained packages, not typed by hand.

Private attributes are all removed (no safe-list: none of the private data our formats need is
required to read the image).  UIDs are replaced by keyed HMAC UIDs (:mod:`.uids`), so references
(SR, SEG, presentation states, frames of reference, Referenced SOP Instance UID anywhere) follow.
Burned-in text is handled by :mod:`.ocr`.  Sources are only ever read; every output is written
to a temporary name and renamed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import UserError
from ..safe_text import printable

TABLE_RESOURCE = ("imaging_assist", "data/deid/ps3_15_table_e1_1.json")

# DeidentificationMethodCodeSequence: CID 7050 codes (DCM), from pydicom's concept dictionary.
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixels": ("113101", "Clean Pixel Data Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
}
OPTION_NAMES = {
    "modified_dates": "Retain Longitudinal Temporal Information with Modified Dates",
    "patient_characteristics": "Retain Patient Characteristics",
    "device_identity": "Retain Device Identity",
    "clean_descriptors": "Clean Descriptors",
}

# Dummy values for the D action (PS3.15: "a non-zero length value that may be a dummy value and
# consistent with the VR").
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D", "IS": "0",
          "DS": "0", "CS": "ANONYMIZED", "AE": "ANONYMIZED", "SH": "ANONYMIZED", "LO": "ANONYMIZED",
          "ST": "ANONYMIZED", "LT": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED",
          "PN": "ANONYMIZED", "UR": "", "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0,
          "UV": 0, "SV": 0, "AT": None}
_BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
# VRs of attributes outside Table E.1-1 that can name or date a patient (see _walk)
_OUTSIDE_TABLE = {"PN", "DA", "DT", "ST", "LT", "UT"}
_TEXT = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR",
         "UT"}
# UI attributes outside the table that name a class or syntax, never an instance: kept.
_CLASS_UID_KEYWORDS = re.compile(r"(ClassUID|SyntaxUID|CodingSchemeUID|ContextUID|"
                                 r"ImplementationClassUID|PrivateInformationCreatorUID)s?$")
# Presentation Creation Date and Time: Table E.1-1 says X, but they are Type 1 in every
# presentation state (Presentation State Identification module): removing them made the
# object invalid, so a presentation state gets the D dummy instead (docs/privacy.md)
_PRESENTATION_CREATION = {0x00700082, 0x00700083}
_PRESENTATION_STATE_CLASSES = "1.2.840.10008.5.1.4.1.1.11."


@dataclass(frozen=True)
class Options:
    modified_dates: bool = False
    patient_characteristics: bool = False
    device_identity: bool = False
    clean_descriptors: bool = False
    clean_pixels: bool = True  # OCR and black out burned-in text where PS3.15 says it may be

    def names(self) -> list[str]:
        return [OPTION_NAMES[k] for k in OPTION_NAMES if getattr(self, k)]


@dataclass
class FileResult:
    source: str
    relative: str = ""  # path inside the input (printed on this machine, never written out)
    output_relative: str = ""  # path inside the output (the summary file holds only this)
    output: str | None = None
    reason: str | None = None  # set when left out
    boxes: int = 0  # text boxes blacked out
    rects: list = field(default_factory=list)  # their (x0, y0, x1, y1), in every frame
    ocr: str | None = None  # what the pixel check did ("cleaned", "checked, no text", ...)
    # the original identifiers, in memory only (for the audit trail, which pseudonymises them);
    # never written to the summary file
    patient_id: str | None = None
    study_uid: str | None = None
    not_dicom: bool = False  # left out because it is not DICOM at all (a text file, ...)
    detail: str = ""  # what the OCR still read (burned-in text): printed here, never written out


@dataclass
class Summary:
    input: str
    output: str
    options: list[str]
    key_fingerprint: str
    written: list[FileResult] = field(default_factory=list)
    left_out: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    names_kept: bool = False  # file/folder names copied from the input (``keep_names``)
    notes: list[str] = field(default_factory=list)  # e.g. an input moved off the summary's name

    def to_dict(self) -> dict:
        return {
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "options": self.options, "key_fingerprint": self.key_fingerprint,
            "files_written": len(self.written), "files_left_out": len(self.left_out),
            "file_names": "kept from the input" if self.names_kept else "keyed pseudonyms",
            "written": [{"file": r.output_relative, "pixels": r.ocr,
                         "text_boxes_blacked_out": [list(b) for b in r.rects]}
                        for r in self.written],
            # a left-out file is named by the pseudonym it would have had (its source name is
            # printed on this machine only: the summary travels with the output)
            "left_out": [{"file": r.output_relative, "reason": _reason_without_path(r)}
                         for r in self.left_out],
            "seconds": round(self.seconds, 3),
            **({"notes": list(self.notes)} if self.notes else {}),
        }

    def lines(self) -> list[str]:
        out = [f"de-identified {len(self.written)} file(s) into {printable(self.output)}; "
               f"left out {len(self.left_out)}",
               "profile: PS3.15 Basic Application Level Confidentiality Profile"
               + (" + " + ", ".join(self.options) if self.options else " (dates removed)"),
               f"site key fingerprint: {self.key_fingerprint}",
               "file and folder names: " + ("kept from the input (check they name no one)"
                                            if self.names_kept else
                                            "replaced by keyed pseudonyms (the tree's shape is kept)")]
        out += [printable(n) for n in self.notes]
        cleaned = [r for r in self.written if r.boxes]
        if cleaned:
            out.append(f"burned-in text blacked out in {len(cleaned)} file(s) "
                       f"({sum(r.boxes for r in cleaned)} boxes), checked again by OCR")
        for r in self.left_out:  # file names (and OCR text) shown escaped: no ESC or line break
            out.append(printable(f"left out: {r.source}: {r.reason}" + (f" ({r.detail})" if r.detail else "")))
        return out


def _reason_without_path(r: FileResult) -> str | None:
    """The reason a file was left out, with its source path and name cut out (exception texts
    may quote them)."""
    reason = r.reason
    if not reason:
        return reason
    for s in sorted({r.source, Path(r.source).name, r.relative}, key=len, reverse=True):
        if s:
            reason = reason.replace(s, r.output_relative or "<file>")
    return reason


SUMMARY_NAME = "deidentification_summary.json"


def _off_summary_name(roots) -> dict[str, str]:
    """{name: new name} for the names among ``roots`` (the first parts of the output paths) that
    would land on OUT/deidentification_summary.json (a --keep-names input, or a single file, of
    that name; case-insensitively, as macOS and Windows compare names): the input is written
    as deidentification_summary-input.json (-2, -3 ... when taken), so neither it nor the
    summary is lost, and a folder of that name no longer ends the run when the summary is written."""
    taken = {r.casefold() for r in roots}
    moved: dict[str, str] = {}
    stem, ext = os.path.splitext(SUMMARY_NAME)
    for r in sorted(set(roots)):
        if r.casefold() != SUMMARY_NAME.casefold():
            continue
        n = 1
        while (new := f"{stem}-input{'' if n == 1 else f'-{n}'}{ext}").casefold() in taken:
            n += 1
        taken.add(new.casefold())
        moved[r] = new
    return moved


def output_path(rel: Path, keyed, keep_names: bool = False) -> Path:
    """Where a file at ``rel`` (inside the input) is written inside the output.

    File and folder names often carry identifiers (``SMITH_JOHN/CT 2024-03-01/...``), and a
    de-identified export must not keep them: each component is replaced by a keyed pseudonym of
    its path (HMAC under the site key, 60 bits in base32, so the same input tree gets the same
    names on every export and the names cannot be reversed without the key), and every file ends
    in ``.dcm`` (only DICOM files are written).  The tree's shape is kept: files of one folder stay
    together.  ``keep_names`` copies the names unchanged (for trees the user knows are safe)."""
    if keep_names:
        return rel
    parts = rel.parts
    names = [keyed.path_name("/".join(parts[:i + 1])) for i in range(len(parts))]
    names[-1] += ".dcm"
    return Path(*names)


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Row:
    tag: str
    name: str
    basic: str
    options: dict


@lru_cache(maxsize=1)
def table() -> tuple[dict[int, Row], list[tuple[int, int, Row]], dict]:
    """(exact tag -> row, [(value, mask, row)] for the masked 50xx/60xx rows, header)."""
    text = resources.files(TABLE_RESOURCE[0]).joinpath(TABLE_RESOURCE[1]).read_text("utf-8")
    doc = json.loads(text)
    exact: dict[int, Row] = {}
    masked: list[tuple[int, int, Row]] = []
    for r in doc["rows"]:
        row = Row(r["tag"], r["name"], r["basic"], r["options"])
        if r["mask"]:
            masked.append((int(r["tag"].replace("x", "0"), 16), int(r["mask"], 16), row))
        else:
            exact[int(r["tag"], 16)] = row
    header = {k: v for k, v in doc.items() if k != "rows"}
    header["attributes"] = len(doc["rows"])
    return exact, masked, header


def _row(tag: int) -> Row | None:
    exact, masked, _ = table()
    row = exact.get(tag)
    if row is None and (tag >> 16) & 0xFF00 in (0x5000, 0x6000):
        for value, mask, r in masked:
            if tag & mask == value and not (tag >> 16) & 1:
                return r
    return row


def action_for(row: Row, opts: Options, vr: str) -> str:
    """The one action applied: X, Z, D, U, K, C (clean), S (shift dates) or R (recurse: keep the
    sequence, apply the table inside; U*)."""
    o = row.options
    if opts.modified_dates and o.get("rtnLongModifDatesOpt") == "C":
        if vr in ("DA", "DT"):
            return "S"
        if vr == "TM":
            return "K"  # whole-day shifts leave the time of day as it was
    if opts.patient_characteristics and o.get("rtnPatCharsOpt") in ("K", "C"):
        return "K" if o["rtnPatCharsOpt"] == "K" else "C"
    if opts.device_identity and o.get("rtnDevIdOpt") == "K":
        return "K"
    if opts.clean_descriptors and o.get("cleanDescOpt") == "C":
        return "C"
    basic = row.basic
    if basic == "X/Z/U*":
        return "R"
    if "D" in basic.split("/"):
        return "D"  # Z/D, X/D, X/Z/D: a dummy keeps Type 1 attributes valid
    if basic == "X/Z":
        return "Z"
    return basic


# --------------------------------------------------------------------------------------------
# One data set


class _Context:
    def __init__(self, keyed, opts: Options):
        self.keyed = keyed
        self.opts = opts
        self.offset_days = 0
        self.presentation_state = False  # (see _PRESENTATION_CREATION)
        self.phi: list[str] = []  # identifying strings of this file, for Clean Descriptors
        self.names: list[str] = []  # the parts of its person names, of any length
        self._phi_re = None

    def phi_re(self):
        if self._phi_re is None:
            words = sorted({w for w in self.phi if len(w) >= 3}, key=len, reverse=True)
            pats = [re.escape(w) for w in words]
            # a person name's parts of any length ("Li", "Wu", "Ng", "Müller", "Иван"): as whole
            # words; in scripts that do not separate words (李, ナ) every character of the name.
            # Removing each letter of an alphabetic name ("Müller": M, ü, l, e, r) everywhere
            # garbled every description ("Uebersicht" -> "Ubsicht")
            for w in sorted(set(self.names), key=len, reverse=True):
                unspaced = [c for c in w if _unspaced_script(c)]
                pats.extend(re.escape(c) for c in unspaced)
                if len(unspaced) < len(w):
                    pats.append(rf"(?<![^\W_]){re.escape(w)}(?![^\W_])")
            pats.append(r"\d{5,}")  # record numbers, phone numbers, dates without separators
            pats.append(r"\d{1,4}[-./]\d{1,2}[-./]\d{1,4}")  # dates with separators
            pats.append(_WRITTEN_DATE)  # dates with the month's name ("1 Mar 2024", "March 1, 2024")
            self._phi_re = re.compile("|".join(pats), re.IGNORECASE)
        return self._phi_re


#: Unicode character name prefixes of the scripts written without spaces between words (Han,
#: kana, Thai, Lao, Khmer, Myanmar, Tibetan, Yi, Bopomofo).  Hangul, Latin, Greek, Cyrillic,
#: Hebrew, Arabic... separate words with spaces: their names are removed as whole words.
_UNSPACED_SCRIPTS = ("CJK ", "IDEOGRAPHIC ", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "THAI ",
                     "LAO ", "KHMER ", "MYANMAR ", "TIBETAN ", "YI ", "BOPOMOFO ")


def _unspaced_script(c: str) -> bool:
    return unicodedata.name(c, "").startswith(_UNSPACED_SCRIPTS)


_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_WRITTEN_DATE = (rf"\b\d{{1,2}}(?:st|nd|rd|th)?[\s\-/]*{_MONTH}[\s\-/,]*\d{{2,4}}\b"
                 rf"|\b{_MONTH}\s*\d{{1,2}}(?:st|nd|rd|th)?,?\s*\d{{2,4}}\b"
                 rf"|\b{_MONTH}\s+\d{{4}}\b")


def _collect_phi(ds, ctx: _Context) -> None:
    """Every text value the profile removes or replaces (and its words): Clean Descriptors cuts
    these out of the descriptions it keeps."""
    for elem in ds:
        if elem.tag.is_private:
            if elem.VR in _TEXT and elem.value:
                ctx.phi.extend(_words(elem.value))
            continue
        if elem.VR == "SQ":
            for item in elem.value or ():
                _collect_phi(item, ctx)
            continue
        row = _row(int(elem.tag))
        if row is None or elem.VR not in _TEXT or not elem.value:
            continue
        if row.basic != "K" and row.options.get("cleanDescOpt") != "C":
            ctx.phi.extend(_words(elem.value))
            if elem.VR == "PN":
                ctx.names.extend(w for w in re.split(r"[\s^=,.]+", str(elem.value)) if w)


def _words(value) -> list[str]:
    vals = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" \
        else [value]
    out = []
    for v in vals:
        s = str(v).strip()
        if not s:
            continue
        out.append(s)
        out.extend(w for w in re.split(r"[\s^=,;:/\\]+", s) if w)
        if re.fullmatch(r"\d{8}", s):  # a DA value: also its usual written forms
            out += [f"{s[:4]}-{s[4:6]}-{s[6:]}", f"{s[6:]}.{s[4:6]}.{s[:4]}",
                    f"{s[4:6]}/{s[6:]}/{s[:4]}", f"{s[6:]}/{s[4:6]}/{s[:4]}"]
    return out


def _clean_text(value, ctx: _Context):
    rx = ctx.phi_re()

    def one(s):
        s = rx.sub("", str(s))
        return re.sub(r"\s{2,}", " ", s).strip()

    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [one(v) for v in value]
    return one(value)


def _shift(value: str, vr: str, days: int) -> str:
    from ..viewing import parse_date

    def one(s: str) -> str:
        s = s.strip()
        if not s:
            return s
        # a DA also in the ACR-NEMA form YYYY.MM.DD PS3.5 asks readers to accept (written back
        # as YYYYMMDD); a DT's date is its first 8 digits, its time and offset are kept
        d = parse_date(s) if vr == "DA" else parse_date(s[:8]) if s[:8].isdigit() else None
        if d is None:
            return ""  # a partial date (or not a date) cannot be moved exactly: removed
        try:
            d += timedelta(days=days)
        except OverflowError:
            return ""
        return d.strftime("%Y%m%d") + (s[8:] if vr == "DT" else "")

    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [one(str(v)) for v in value]
    return one(str(value))


def _dummy(elem, ctx: _Context):
    vr = elem.VR
    if vr == "UI":
        return _uids(elem.value, ctx)
    if vr in _BINARY:
        return b""
    v = _DUMMY.get(vr, "")
    if vr in ("CS", "SH", "AE") and isinstance(v, str):
        v = v[:16]
    return v


def _well_known(value) -> bool:
    """A UID of the standard's registry (a class, syntax, coding scheme...): names no instance."""
    from pydicom.uid import UID_dictionary

    vals = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" \
        else [value]
    return all(str(v) in UID_dictionary for v in vals)


def _uids(value, ctx: _Context):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [ctx.keyed.uid(str(v)) for v in value]
    return ctx.keyed.uid(str(value)) if value else value


def _vr_of(ds, tag) -> str:
    """The VR without converting the value (raw elements of implicit-VR files carry none).  An
    element stored as UN (what a node that does not know the attribute writes) whose tag the
    dictionary knows is converted to its VR first (a sequence is then walked like any other);
    one that cannot be converted stays UN (and is removed unless its row keeps it)."""
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr == "UN":
        from pydicom.datadict import dictionary_has_tag

        if dictionary_has_tag(tag):
            try:
                return str(ds[tag].VR)  # pydicom converts UN to the dictionary's VR on access
            except Exception:  # noqa: BLE001 - undecodable: treated as unknown bytes
                return "UN"
    if vr:
        return str(vr)
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _walk(ds, ctx: _Context) -> None:
    """Apply the table to every element of ``ds`` and, recursively, of its sequences.  Values
    are converted only where the action needs them: elements kept as they are stay raw, so they
    (the pixel data above all) are written back byte for byte."""
    from pydicom.sequence import Sequence

    overlays = {t.group for t in ds.keys() if 0x6000 <= t.group <= 0x601E and not t.group & 1}
    for tag in list(ds.keys()):
        if tag.is_private or tag.element == 0:  # private data and group lengths
            del ds[tag]
            continue
        if tag.group in overlays:
            # Overlay Data is X (Clean Graphics, which would keep it, is not offered): the rest of
            # its overlay plane (rows, origin, type...) would describe data that is gone and make
            # the plane invalid, so the group goes with it; a group without Overlay Data too (its
            # description and label are free text)
            del ds[tag]
            continue
        row = _row(int(tag))
        vr = _vr_of(ds, tag)
        if row is None:
            if vr == "SQ":
                for item in ds[tag].value or ():
                    _walk(item, ctx)
            elif vr == "UN":
                del ds[tag]  # bytes nothing can read or check: never kept
            elif vr in _OUTSIDE_TABLE:
                # Names, dates and free text in attributes the table does not list (a reviewer's
                # name, an update date, an SR's TEXT item, a document title) are treated as the
                # table treats its own: names and text get a dummy, dates one too (or the shift)
                if vr in ("DA", "DT") and ctx.opts.modified_dates:
                    ds[tag].value = _shift(ds[tag].value, vr, ctx.offset_days) if ds[tag].value else ds[tag].value
                else:
                    ds[tag].value = _dummy(ds[tag], ctx) if ds[tag].value not in (None, "") else ds[tag].value
            elif vr == "UI":
                elem = ds[tag]
                if elem.value and not _CLASS_UID_KEYWORDS.search(elem.keyword or "") \
                        and not _well_known(elem.value):
                    # An instance UID the table does not list (a newer attribute): replaced
                    # too, so no original UID survives and references still match.
                    elem.value = _uids(elem.value, ctx)
            continue
        act = action_for(row, ctx.opts, vr)
        if act == "X" and ctx.presentation_state and int(tag) in _PRESENTATION_CREATION:
            act = "D"
        if act == "X":
            del ds[tag]
            continue
        if act in ("K", "R") and vr != "SQ":
            continue
        elem = ds[tag]
        if act == "Z":
            elem.value = Sequence() if vr == "SQ" else (b"" if vr in _BINARY else
                                                        (None if vr not in _TEXT else ""))
        elif act in ("D", "R", "K", "C") and vr == "SQ":
            for item in elem.value or ():
                _walk(item, ctx)
        elif act == "D":
            elem.value = _dummy(elem, ctx)
        elif act == "U":
            if vr == "UI":
                elem.value = _uids(elem.value, ctx)
            else:
                del ds[tag]
        elif act == "C":
            if vr in _TEXT and elem.value:
                elem.value = _clean_text(elem.value, ctx)
            elif vr not in _TEXT:
                del ds[tag]  # nothing to clean in binary or numeric values: removed
        elif act == "S":
            if elem.value:
                elem.value = _shift(elem.value, vr, ctx.offset_days)
        else:  # an action this code does not know: never keep silently
            del ds[tag]


def patient_key(ds) -> str:
    """What identifies the patient of a file for the pseudonym and the date offset: Patient ID
    with its issuer; when it is empty, name + birth date; when those are empty too, the study."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return "id\0" + pid + "\0" + str(ds.get("IssuerOfPatientID", "") or "").strip()
    name = str(ds.get("PatientName", "") or "").strip()
    birth = str(ds.get("PatientBirthDate", "") or "").strip()
    if name or birth:
        return "name\0" + name + "\0" + birth
    return "study\0" + str(ds.get("StudyInstanceUID", "") or "")


def deidentify_dataset(ds, keyed, opts: Options, pixels_cleaned: bool = False) -> None:
    """De-identify one pydicom Dataset in place (header only; pixels by :mod:`.ocr`)."""
    pkey = patient_key(ds)
    ctx = _Context(keyed, opts)
    ctx.offset_days = keyed.day_offset(pkey)
    ctx.presentation_state = str(ds.get("SOPClassUID", "")).startswith(_PRESENTATION_STATE_CLASSES)
    if opts.clean_descriptors or opts.patient_characteristics:
        _collect_phi(ds, ctx)
    pseudonym = keyed.patient_id(pkey)
    _walk(ds, ctx)
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym + "^"  # family name = the pseudonym (one component, said so)
    mark_deidentified(ds, opts, pixels_cleaned)


def mark_deidentified(ds, opts: Options, pixels_cleaned: bool = False) -> None:
    """Write PatientIdentityRemoved, LongitudinalTemporalInformationModified,
    DeidentificationMethod and its code sequence (CID 7050) for ``opts`` into ``ds``."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if opts.modified_dates else "REMOVED"
    names = ["PS3.15 Basic Application Level Confidentiality Profile"] + opts.names()
    if pixels_cleaned:
        names.append("Clean Pixel Data")
    ds.DeidentificationMethod = [n[:64] for n in names]
    keys = ["basic"] + [k for k in OPTION_NAMES if getattr(opts, k)]
    if pixels_cleaned:
        keys.append("clean_pixels")
    seq = []
    for k in keys:
        value, meaning = CID7050[k]
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        seq.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(seq)


def deidentify_headers(datasets, opts: Options = Options(), key: bytes | None = None) -> int:
    """De-identify the header-only source datasets a result object copies and references
    (``write_dicom_results(..., deidentify=opts)``), in memory: the same profile, options, keyed
    UIDs and patient pseudonym as an ``anonymize`` export of the source files under the same site
    key, so the results reference the de-identified copy's instances and pair with it.  Returns
    the day offset of their patient (one series: one patient) for :func:`deidentify_result_dates`."""
    from .uids import Keyed, site_key

    keyed = Keyed(key if key is not None else site_key())
    offset = keyed.day_offset(patient_key(datasets[0])) if datasets else 0
    for ds in datasets:
        deidentify_dataset(ds, keyed, opts)
    return offset


def source_options(ds) -> Options | None:
    """The options a source was de-identified with, read from its marks (Patient Identity Removed
    YES and the CID 7050 codes :func:`mark_deidentified` writes, e.g. the copy ``analyze
    --deidentify`` analyses); None when it does not say it was de-identified by this profile."""
    if str(ds.get("PatientIdentityRemoved", "") or "").upper() != "YES":
        return None
    codes = {str(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence", None) or ()}
    if CID7050["basic"][0] not in codes:
        return None
    return Options(**{k: CID7050[k][0] in codes for k in OPTION_NAMES})


def deidentify_result_dates(ds, opts: Options, since: date, offset_days: int | None = None) -> None:
    """Put the dates and times of a result object (SEG, SR, Parametric Map, Encapsulated PDF)
    made from de-identified source headers through the same profile, in place.

    The object copies the source's patient and study attributes, already de-identified, and
    stamps its own (Content, Instance Creation, Contribution, Acquisition Date/Time) with the
    day it was built: those carried the real date into an object whose study date was removed
    or shifted.  Only DA, DT and TM elements are touched (the UIDs were mapped in the sources).
    Without Modified Dates every one gets the table's action (the same action again on the
    copied values changes nothing).  With it, a top-level element whose value is the source
    header's (``ds.source_header``, which :func:`..export.dicom_common.finalize` sets) was
    copied and is already shifted; every other one is the object's own and moves by the
    patient's ``offset_days``.  (Deciding by the date instead, "dated ``since`` or later", shifted
    a source dated in the future, e.g. a year typo 2099, once more in every object.)  Without a
    source header the date decides.  When the offset is not known (``None``: a source
    de-identified before, in a copy), the object's own dates get the basic profile's action.

    Elements are replaced, never changed in place: highdicom puts the source's own element
    objects (and sequences) into the object, so an edit here changed the shared source header
    and the next object copied the already re-shifted value."""
    basic = Options()
    start = since.strftime("%Y%m%d")
    source = getattr(ds, "source_header", None)

    def copied(d, tag) -> bool:
        """With Modified Dates: the element was copied from the source (and is shifted)."""
        if source is not None:  # the object's own top-level value, or the source's
            return d is ds and tag in source and source[tag].value == d[tag].value
        value = d[tag].value
        return _vr_of(d, tag) in ("DA", "DT") and not all(
            str(v)[:8] >= start for v in (value if type(value).__name__ == "MultiValue" else [value]))

    def dated(d) -> bool:
        """The item holds a DA, DT or TM value (at any depth)."""
        for tag in d.keys():
            vr = _vr_of(d, tag)
            if vr == "SQ" and any(dated(item) for item in d[tag].value or ()):
                return True
            if vr in ("DA", "DT", "TM") and not tag.is_private and d[tag].value:
                return True
        return False

    def walk(d):
        from pydicom.dataelem import DataElement

        for tag in list(d.keys()):
            if tag.is_private or tag.element == 0:
                continue
            vr = _vr_of(d, tag)
            if vr == "SQ":
                if (source is not None and opts.modified_dates and copied(d, tag)) \
                        or not any(dated(item) for item in d[tag].value or ()):
                    continue
                d[tag] = copy.deepcopy(d[tag])  # may be the source's sequence: a copy is edited
                for item in d[tag].value:
                    walk(item)
                continue
            if vr not in ("DA", "DT", "TM"):
                continue
            elem = d[tag]
            if not elem.value:
                continue
            if opts.modified_dates and copied(d, tag):
                continue  # copied from the source: already shifted
            o = opts if offset_days is not None or vr == "TM" else basic
            row = _row(int(tag))
            if row is None:  # outside the table: as _walk does (dates dummied or shifted)
                if vr == "TM":
                    continue
                act = "S" if o.modified_dates else "D"
            else:
                act = action_for(row, o, vr)
            if act == "X":
                del d[tag]
            elif act == "Z":
                d[tag] = DataElement(tag, vr, "")
            elif act == "D":
                d[tag] = DataElement(tag, vr, _DUMMY[vr])
            elif act == "S":
                d[tag] = DataElement(tag, vr, _shift(elem.value, vr, offset_days))
            elif act != "K":  # an action this code does not know for a date: never keep silently
                del d[tag]

    walk(ds)


def may_carry_burned_in_text(ds) -> str | None:
    """Why a source's pixels may carry burned-in text (as :func:`.ocr.needs_check` decides for a
    file being de-identified), also for a header read without its pixels; None when they do not."""
    from . import ocr as ocr_mod

    if "PixelData" in ds:
        return ocr_mod.needs_check(ds)
    probe = copy.copy(ds)
    probe.PixelData = b""
    return ocr_mod.needs_check(probe)


# --------------------------------------------------------------------------------------------
# Files and folders


class NotDicom(ValueError):
    pass


def _read(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        # A file without the preamble and File Meta (old CR/ACR-NEMA style) is read with force,
        # and accepted only if it really is an image object (SOP class and instance present).
        ds = pydicom.dcmread(path, force=True)
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise NotDicom("not a DICOM file") from None
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            from pydicom.uid import ImplicitVRLittleEndian
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    if "SOPInstanceUID" not in ds:
        raise ValueError("no SOP Instance UID (not a composite object)")
    # pydicom reads a file cut short without complaint: an element whose value is shorter than
    # its declared length, or an image without its pixel data, means the file is truncated.
    for tag in ds.keys():
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (length is not None and length != 0xFFFFFFFF and isinstance(value, bytes)
                and len(value) < length):
            raise ValueError(f"truncated file: {tag} holds {len(value)} of {length} bytes")
    if "Rows" in ds and "PixelData" not in ds and "FloatPixelData" not in ds \
            and "DoubleFloatPixelData" not in ds:
        raise ValueError("truncated file: an image without pixel data")
    return ds


def _new_meta(ds, old_meta):
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = old_meta.TransferSyntaxUID
    return meta


def deidentify_file(src: Path, dst: Path, keyed, opts: Options, ocr_check=None,
                    rel: str = "", out_rel: str = "") -> FileResult:
    """De-identify one file to ``dst``.  Never raises for bad input: a file that cannot be read,
    de-identified or cleaned comes back with ``reason`` set and nothing written."""
    from . import ocr as ocr_mod

    res = FileResult(str(src), relative=rel, output_relative=out_rel or rel)
    if src.is_symlink():
        res.reason = "a symbolic link (not followed: it may point outside the input)"
        return res
    if not src.is_file():  # reading a named pipe waits for a writer: the run would hang
        res.reason = "not a regular file (a named pipe, socket or device)"
        return res
    try:
        ds = _read(src)
    except Exception as e:  # noqa: BLE001 - any unreadable input is one reason, never a crash
        res.reason = f"cannot be read as DICOM ({_short(e)})"
        res.not_dicom = isinstance(e, NotDicom)
        return res
    if ds.get("SOPClassUID", "") == "1.2.840.10008.1.3.10" or src.name.upper() == "DICOMDIR":
        res.reason = "DICOMDIR (a directory index naming the original files) is not copied"
        return res
    res.patient_id = str(ds.get("PatientID", "") or "") or None
    res.study_uid = str(ds.get("StudyInstanceUID", "") or "") or None
    cleaned = False
    try:
        kind = ocr_mod.needs_check(ds) if opts.clean_pixels else None
        if kind is None and not opts.clean_pixels and ocr_mod.needs_check(ds):
            res.reason = ("may carry burned-in text (" + ocr_mod.needs_check(ds) +
                          ") and pixel cleaning is off")
            return res
        if kind is not None:
            outcome = (ocr_check or ocr_mod.clean_burned_in_text)(ds)
            if outcome.reason:
                res.reason = f"burned-in text ({kind}): {outcome.reason}"
                res.detail = getattr(outcome, "detail", "")
                return res
            res.boxes = outcome.boxes
            res.rects = list(outcome.rects)
            res.ocr = outcome.summary
            cleaned = outcome.boxes > 0
        else:
            res.ocr = "unchanged (no burned-in text expected)"
        deidentify_dataset(ds, keyed, opts, pixels_cleaned=cleaned)
        if cleaned:
            ds.BurnedInAnnotation = "NO"
        ds.file_meta = _new_meta(ds, ds.file_meta)
        ds.preamble = b"\0" * 128  # PS3.10 lets the preamble hold anything (a TIFF header, a name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part")
        try:
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, dst)
        finally:
            if tmp.exists():
                tmp.unlink()
    except Exception as e:  # noqa: BLE001 - one bad file never stops the run
        res.reason = f"cannot be de-identified ({_short(e)})"
        return res
    res.output = str(dst)
    return res


def _short(e: Exception) -> str:
    s = " ".join(str(e).split())
    return f"{type(e).__name__}: {s[:160]}" if s else type(e).__name__


def _check_folders(src: Path, out: Path) -> None:
    if not src.exists():
        raise UserError(f"{src} does not exist")
    s = src.resolve()
    o = out.resolve()
    if s.is_dir() and (o == s or s in o.parents):
        raise UserError(f"the output {out} lies inside the input {src}: choose a folder outside it")
    if o in s.parents or o == s:
        raise UserError(f"the output {out} contains the input {src}: choose another folder")
    if o.exists() and not o.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if o.exists() and any(o.iterdir()):
        raise UserError(f"the output folder {out} is not empty: choose a new or empty folder "
                        f"(files of an earlier export are never overwritten)")


def _inputs(src: Path, unreadable: list | None = None) -> list[tuple[Path, Path]]:
    """(file, path inside ``src``) for every file below ``src``.  A folder that cannot be read
    is appended to ``unreadable`` as (folder, path inside ``src``, reason): listed as left out,
    never skipped in silence; ``src`` itself unreadable is a ``UserError``."""
    if src.is_file():
        return [(src, Path(src.name))]
    out = []

    def onerror(e: OSError) -> None:
        folder = Path(getattr(e, "filename", None) or src)
        if folder == src:
            raise UserError(f"cannot read folder {src}: {e.strerror or e}")
        if unreadable is not None:
            unreadable.append((folder, folder.relative_to(src), f"cannot read folder: {e.strerror or e}"))

    for root, dirs, files in os.walk(src, onerror=onerror):
        dirs.sort()
        for d in dirs:
            if (Path(root) / d).is_symlink():  # os.walk does not enter it: listed, not silent
                out.append((Path(root) / d, (Path(root) / d).relative_to(src)))
        for f in sorted(files):
            p = Path(root) / f
            out.append((p, p.relative_to(src)))  # links are listed as left out, not followed
    return out


def deidentify_tree(src, out, opts: Options = Options(), key: bytes | None = None,
                    progress=None, workers: int = 1, ocr_check=None, audit: bool = True,
                    keep_names: bool = False) -> Summary:
    """De-identify a file or folder ``src`` into ``out`` (mirroring the tree's shape, with file
    and folder names replaced by keyed pseudonyms unless ``keep_names``: :func:`output_path`).
    Every file is written or listed as left out with its reason.  ``workers`` > 1 uses
    processes."""
    from .uids import Keyed, fingerprint, site_key

    src = Path(src).expanduser()
    out = Path(out).expanduser()
    _check_folders(src, out)
    key = key if key is not None else site_key()
    t0 = time.perf_counter()
    summary = Summary(str(src), str(out), opts.names(), fingerprint(key), names_kept=keep_names)
    namer = Keyed(key)
    unreadable: list[tuple[Path, Path, str]] = []
    jobs = [(p, rel, output_path(rel, namer, keep_names)) for p, rel in _inputs(src, unreadable)]
    gone = [(p, rel, output_path(rel, namer, keep_names)) for p, rel, _ in unreadable]
    moved = _off_summary_name([o.parts[0] for _, _, o in jobs + gone])

    def placed(orel: Path) -> Path:  # the output path, off the summary's name
        return Path(moved[orel.parts[0]], *orel.parts[1:]) if orel.parts[0] in moved else orel

    jobs = [(p, rel, placed(orel)) for p, rel, orel in jobs]
    summary.notes += [f"{old} of the input is written as {new}: that name is kept for this summary"
                      for old, new in moved.items()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror or e}") from None
    results: list[FileResult] = []
    if workers > 1 and len(jobs) > 8 and ocr_check is None:
        from concurrent.futures import ProcessPoolExecutor

        import pydicom.filewriter  # noqa: F401 - imported once here: forked workers inherit it
        table()  # ... and the parsed table
        chunks = [jobs[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            futs = [pool.submit(_run_chunk, c, str(out), key, opts) for c in chunks]
            for f in futs:
                results.extend(f.result())
        if progress:
            progress(len(jobs), len(jobs))
    else:
        for i, (path, rel, orel) in enumerate(jobs):
            results.append(deidentify_file(path, out / orel, namer, opts, ocr_check=ocr_check,
                                           rel=str(rel), out_rel=str(orel)))
            if progress:
                progress(i + 1, len(jobs))
    order = {str(p): i for i, (p, _, _) in enumerate(jobs)}
    results.sort(key=lambda r: order.get(r.source, 0))
    for p, rel, why in unreadable:  # a folder left out: named by its pseudonym (no ".dcm")
        orel = placed(output_path(rel, namer, keep_names))
        orel = orel if keep_names else orel.with_name(orel.name.removesuffix(".dcm"))
        results.append(FileResult(str(p), relative=str(rel), output_relative=str(orel), reason=why))
    for r in results:
        (summary.written if r.output else summary.left_out).append(r)
    summary.seconds = time.perf_counter() - t0
    text = json.dumps(summary.to_dict(), indent=1) + "\n"
    made = False
    try:  # "x" (O_EXCL): never replaces a file of the run (no input is placed on this name)
        with open(out / SUMMARY_NAME, "x", encoding="utf-8") as f:
            made = True
            f.write(text)
    except OSError as e:
        if made:  # created, then the write failed (a full disk): no half summary left behind
            (out / SUMMARY_NAME).unlink(missing_ok=True)
        if audit:
            _audit(summary)
        raise UserError(f"the summary {out / SUMMARY_NAME} was not written: {e.strerror or e}; "
                        f"the {len(summary.written)} de-identified file(s) are in {out}") from None
    if audit:
        _audit(summary)
    return summary


def _run_chunk(chunk, out, key, opts):
    from .uids import Keyed

    keyed = Keyed(key)
    return [deidentify_file(p, Path(out) / orel, keyed, opts, rel=str(rel), out_rel=str(orel))
            for p, rel, orel in chunk]


def _audit(summary: Summary) -> None:
    """One audit record per de-identification run (the audit trail of issue 16)."""
    try:
        from . import audit
    except ImportError:
        return  # the audit module has not landed in this tree
    record = getattr(audit, "record", None)
    if record is None:
        return
    # source/output/patient_ids/study_uids are pseudonymised by the audit module itself
    record("deidentify", source=summary.input, output=summary.output, options=summary.options,
           key_fingerprint=summary.key_fingerprint, files_written=len(summary.written),
           files_left_out=len(summary.left_out),
           patient_ids=sorted({r.patient_id for r in summary.written if r.patient_id}),
           study_uids=sorted({r.study_uid for r in summary.written if r.study_uid}))


_COPIES: list = []  # temporary de-identified copies made for this process, removed at exit


def _sigterm_exits(signum, frame):
    raise SystemExit(128 + signum)


def _sigterm_interrupts(signum, frame):
    raise KeyboardInterrupt


def exit_on_sigterm(interrupt: bool = False) -> None:
    """Make SIGTERM (``kill``, ``timeout``, ``systemctl stop``) end this process through
    ``SystemExit``, so that ``atexit`` removes the temporary folders of identified originals
    (a PACS retrieve for ``batch --deidentify``) and of the de-identified copies: by default
    SIGTERM ends it at once and they stayed in the temporary folder. Only from the main
    thread, and only when nobody else handles SIGTERM.

    ``interrupt``: raise ``KeyboardInterrupt`` instead, so that a command stopped with SIGTERM
    does what it does on Ctrl-C (``batch``: stops its worker processes and marks its run
    ``interrupted``); ``atexit`` runs then too, so this replaces the ``SystemExit`` handler
    above (never the other way round)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    now = signal.getsignal(signal.SIGTERM)
    if now in (signal.SIG_DFL, None) or (interrupt and now is _sigterm_exits):
        signal.signal(signal.SIGTERM, _sigterm_interrupts if interrupt else _sigterm_exits)


def deidentified_input(path, opts: Options = Options(), echo=None) -> str:
    """A de-identified copy of ``path`` for the export paths (``analyze --deidentify``): every
    result, report, key image and DICOM object is then made from de-identified data only
    (headers by the profile, burned-in text blacked out), and its UIDs are the ones an
    ``anonymize`` export of the same input with the same site key carries, so the two can be
    paired.  Files that are not DICOM are left out (listed).  The copy lives in a temporary
    folder removed when the process ends."""
    import atexit
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="imaging-assist-deid-")
    _COPIES.append(tmp)
    if len(_COPIES) == 1:
        atexit.register(lambda: [t.cleanup() for t in _COPIES])
        exit_on_sigterm()
    src = Path(path).expanduser()
    dst = Path(tmp.name) / "input"  # no source name in the copy's path either
    summary = deidentify_tree(src, dst, opts)
    for line in summary.lines():
        (echo or (lambda m: None))(line)
    if not summary.written:
        raise UserError(f"--deidentify: no DICOM file of {path} could be de-identified"
                        + (f" ({summary.left_out[0].reason})" if summary.left_out else ""))
    return summary.written[0].output if src.is_file() else str(dst)
