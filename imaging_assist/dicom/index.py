"""Index a folder, zip, DICOMDIR or single files into Patient -> Study -> Series.

Only headers are read (see :mod:`imaging_assist.dicom.header`).  Everything that cannot
be shown ends up in ``StudyIndex.problems`` with its path and a one-line reason; nothing
raises out of :func:`scan` for a bad file.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .archive import list_members, read_members
from .header import (DICOMDIR_SOP_CLASS, NATIVE_SYNTAXES, HeaderError, InstanceRecord, ensure_pydicom,
                     file_kind, read_record)
from .result_objects import KIND_NAMES, PARAMETRIC_MAP, referenced_series, result_kind

# Refuse to allocate more than this for one series before decoding a single byte.
MAX_SERIES_BYTES = 16 * 1024**3


@dataclass
class Problem:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class SeriesInfo:
    uid: str
    key: str  # uid, or uid + ":N" when one series was split into parts
    instances: list[InstanceRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    split_reason: str = ""
    part: int = 0  # N of a part (key uid:N), 0 for a series that was not split
    # Series UIDs a result object (SEG, Parametric Map, SR) refers to (dicom.result_objects).
    references: list[str] = field(default_factory=list)

    def _first(self, kw, default=""):
        for r in self.instances:
            v = r.get(kw)
            if v not in (None, ""):
                return v
        return default

    @property
    def modality(self) -> str:
        return str(self._first("Modality"))

    @property
    def description(self) -> str:
        return str(self._first("SeriesDescription"))

    @property
    def body_part(self) -> str:
        return str(self._first("BodyPartExamined"))

    @property
    def number(self):
        return self._first("SeriesNumber", None)

    @property
    def n_instances(self) -> int:
        return len(self.instances)

    @property
    def n_frames(self) -> int:
        return sum(r.frames for r in self.instances if r.has_pixels)

    @property
    def rows(self) -> int:
        return int(self._first("Rows", 0))

    @property
    def cols(self) -> int:
        return int(self._first("Columns", 0))

    @property
    def result_kind(self) -> str | None:
        """"SEG", "PM", "SR" or "PDF" for a result object series (by SOP Class UID), else None."""
        for r in self.instances:
            kind = result_kind(r.get("SOPClassUID") or r.get("MediaStorageSOPClassUID"))
            if kind:
                return kind
        return None

    @property
    def is_image(self) -> bool:
        """Pixel data to load as a series; result objects are shown over their source instead."""
        return any(r.has_pixels for r in self.instances) and not self.result_kind

    @property
    def study_uid(self) -> str:
        return str(self._first("StudyInstanceUID"))

    def to_dict(self) -> dict:
        return {
            "series_uid": self.uid,
            "key": self.key,
            "number": self.number,
            "modality": self.modality,
            "description": self.description,
            "body_part": self.body_part,
            "instances": self.n_instances,
            "frames": self.n_frames,
            "rows": self.rows,
            "cols": self.cols,
            "is_image": self.is_image,
            "result_kind": self.result_kind,
            "references": list(self.references),
            "transfer_syntaxes": sorted({r.transfer_syntax for r in self.instances}),
            "warnings": list(self.warnings),
            "files": [r.display_path for r in self.instances],
        }


@dataclass
class StudyInfo:
    uid: str
    date: str = ""
    time: str = ""
    description: str = ""
    accession: str = ""
    series: list[SeriesInfo] = field(default_factory=list)
    # e.g. its StudyInstanceUID is used by another patient too (the index keeps them apart)
    warnings: list[str] = field(default_factory=list)

    def result_series(self) -> list[SeriesInfo]:
        """SEG, Parametric Map, SR and Encapsulated PDF series of this study."""
        return [s for s in self.series if s.result_kind]

    def to_dict(self) -> dict:
        return {"study_uid": self.uid, "date": self.date, "time": self.time,
                "description": self.description, "accession": self.accession,
                "warnings": list(self.warnings), "series": [s.to_dict() for s in self.series]}


@dataclass
class PatientInfo:
    id: str
    name: str
    birth_date: str = ""
    sex: str = ""
    studies: list[StudyInfo] = field(default_factory=list)
    issuer: str = ""  # IssuerOfPatientID: one Patient ID from two issuers is two patients

    def to_dict(self) -> dict:
        return {"patient_id": self.id, "issuer": self.issuer, "name": self.name, "birth_date": self.birth_date,
                "sex": self.sex, "studies": [s.to_dict() for s in self.studies]}


@dataclass
class StudyIndex:
    root: str
    patients: list[PatientInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_files: int = 0
    dicomdirs: list[str] = field(default_factory=list)  # DICOMDIR files followed (not images)
    # Files that are plainly not DICOM (text, XML, JSON, PDF, PNG...): counted and listed
    # apart from the problems, quietly (``reason`` holds what kind of file it is).
    other_files: list[Problem] = field(default_factory=list)

    def all_series(self) -> list[SeriesInfo]:
        return [s for p in self.patients for st in p.studies for s in st.series]

    def image_series(self) -> list[SeriesInfo]:
        return [s for s in self.all_series() if s.is_image]

    def results_for(self, series: SeriesInfo) -> list[SeriesInfo]:
        """Result series (SEG, Parametric Map, SR) that refer to ``series``.  A result names its
        source by UID alone: when series of other patients have that UID too (see _build_tree),
        only the results of ``series``' own patient, never another patient's outlines on it."""
        found = [s for s in self.all_series() if s.result_kind and series.uid in s.references]
        if found and len({id(self.patient_of(s)) for s in self.all_series() if s.uid == series.uid}) > 1:
            pat = self.patient_of(series)
            found = [s for s in found if self.patient_of(s) is pat]
        return found

    def find_series(self, key: str) -> SeriesInfo | None:
        """By key, series UID, or the path of one of its files."""
        series = self.all_series()
        for s in series:
            if key in (s.key, s.uid):
                return s
        norm = os.path.realpath(key)
        for s in series:
            if any(os.path.realpath(r.path) == norm for r in s.instances):
                return s
        return None

    def patient_of(self, series: SeriesInfo) -> PatientInfo | None:
        for p in self.patients:
            for st in p.studies:
                if series in st.series:
                    return p
        return None

    def study_of(self, series: SeriesInfo) -> StudyInfo | None:
        for p in self.patients:
            for st in p.studies:
                if series in st.series:
                    return st
        return None

    def to_dict(self) -> dict:
        return {"root": self.root, "files": self.n_files, "dicomdirs": self.dicomdirs,
                "patients": [p.to_dict() for p in self.patients],
                "problems": [p.to_dict() for p in self.problems],
                "other_files": [{"path": p.path, "kind": p.reason} for p in self.other_files]}


# --------------------------------------------------------------------------- other files
# Files the header reader refused that are plainly something else.  Hand-written: a few
# magic numbers and a text test; python-magic/libmagic is not a dependency and would say
# "data" for the cases that matter (a damaged DICOM without its preamble), which stay problems.
DICOM_EXTENSIONS = {".dcm", ".dicom", ".dic", ".ima"}
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
          (b"II*\x00", "TIFF image"), (b"MM\x00*", "TIFF image"), (b"%PDF", "PDF document"),
          (b"PK\x03\x04", "zip archive"), (b"\x1f\x8b", "gzip file"), (b"\x93NUMPY", "NumPy array"),
          (b"\x89HDF", "HDF5 file"), (b"SQLite format 3\x00", "SQLite database"))
_EXT_KIND = {".bmp": "BMP image", ".nii": "NIfTI volume", ".nrrd": "NRRD volume", ".mha": "MetaImage volume",
             ".mhd": "MetaImage header", ".npy": "NumPy array", ".npz": "NumPy arrays", ".gz": "gzip file",
             ".pdf": "PDF document", ".exe": "program", ".dll": "library", ".so": "library",
             ".pyc": "Python bytecode", ".DS_Store": "folder settings"}
_TEXT_KIND = {".xml": "XML", ".json": "JSON", ".csv": "CSV table", ".tsv": "TSV table", ".md": "Markdown",
              ".html": "HTML", ".htm": "HTML", ".py": "Python source", ".yml": "YAML", ".yaml": "YAML",
              ".ini": "settings", ".cfg": "settings", ".log": "log"}
OTHER_REASONS = ("not DICOM", "unreadable DICOM header")


def _is_member(path: str) -> bool:
    return "!" in path and not os.path.exists(path)


def _head(path: str, n: int = 8192) -> bytes | None:
    """The first n bytes of a file or zip member ("archive.zip!member"); None when unreadable."""
    try:
        if _is_member(path):
            from .archive import member_heads
            zpath, member = path.split("!", 1)
            return member_heads(zpath, [member], n)[member]
        from .header import open_regular
        with open_regular(path) as fh:
            return fh.read(n)
    except Exception:  # noqa: BLE001 - unreadable: it stays a problem
        return None


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if e.start >= len(head) - 3:  # a character cut by the 8 KB window
            return True
    printable = sum(1 for b in head if b >= 32 or b in (9, 10, 13))
    return printable >= 0.97 * len(head)


def other_file_kind(path: str, heads: dict[str, bytes | None] | None = None) -> str | None:
    """What a file the header reader refused plainly is ("XML text", "PNG image"...), or None
    when it may be a damaged DICOM: it has the DICM preamble or a DICOM extension, or its
    content is nothing recognisable (those stay problems with their reason).  ``heads``: first
    bytes already read (zip members, see :func:`split_other_files`), by path."""
    name = path.split("!", 1)[-1]
    base = os.path.basename(name)
    ext = os.path.splitext(base)[1].lower()
    if ext in DICOM_EXTENSIONS:
        return None
    head = heads[path] if heads is not None and path in heads else _head(path)
    if head is None or not head:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:2] == b"BM" and ext == ".bmp":
        return "BMP image"
    if _is_text(head):
        lead = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        kind = _TEXT_KIND.get(ext) or ("XML" if lead == b"<" else "JSON" if lead in (b"{", b"[") else "")
        if not kind and base.upper().startswith(("LICEN", "README", "COPYING", "NOTICE", "CHANGELOG")):
            kind = "licence/readme"
        return f"{kind} text" if kind else "text"
    return _EXT_KIND.get(ext) or _EXT_KIND.get(base)


def split_other_files(problems: list[Problem]) -> tuple[list[Problem], list[Problem]]:
    """(problems, other files): problems whose file is plainly not DICOM become other files.

    The first bytes of zip members are read with each archive opened once (opened per member,
    a zip of thousands of text files took minutes: its central directory parsed each time)."""
    from .archive import member_heads
    wanted = [pr.path for pr in problems if str(pr.reason).startswith(OTHER_REASONS)]
    by_zip: dict[str, list[str]] = defaultdict(list)
    for path in wanted:
        if _is_member(path) and os.path.splitext(path)[1].lower() not in DICOM_EXTENSIONS:
            zpath, member = path.split("!", 1)
            by_zip[zpath].append(member)
    heads = {f"{zpath}!{m}": h for zpath, members in by_zip.items()
             for m, h in member_heads(zpath, members).items()}
    keep, other = [], []
    for pr in problems:
        kind = other_file_kind(pr.path, heads) if str(pr.reason).startswith(OTHER_REASONS) else None
        (other.append(Problem(pr.path, kind)) if kind else keep.append(pr))
    return keep, other


# --------------------------------------------------------------------------- discovery
ZIP_BATCH = 256  # members per task: one archive open per batch, batches run in parallel
ZIP_TASKS = 16


def _iter_sources(path: str, problems: list[Problem]) -> Iterable[tuple]:
    """Yield tasks for everything below path: ("file", path) or ("zip", path, [members]).

    Only regular files are read: named pipes, sockets and devices are problems (opening a
    pipe would block the scan), and so are broken links and symbolic link loops.  Linked
    folders are not followed (os.walk's default), so a folder linked into itself ends.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        problems.append(Problem(path, "no such file or folder" if e.errno == errno.ENOENT
                                else f"cannot read: {e.strerror or e}"))
        return
    if stat.S_ISDIR(st.st_mode):
        def onerror(e: OSError):
            problems.append(Problem(getattr(e, "filename", None) or path,
                                    f"cannot read folder: {e.strerror or e}"))
        for dirpath, dirnames, filenames in os.walk(path, onerror=onerror):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                yield from _iter_file(os.path.join(dirpath, name), problems)
    else:
        yield from _iter_file(path, problems)


def _iter_file(full: str, problems: list[Problem]):
    try:
        st = os.stat(full)  # follows links: a loop or a dangling link raises here
    except OSError as e:
        problems.append(Problem(full, f"cannot read: {e.strerror or e}"))
        return
    if not stat.S_ISREG(st.st_mode):
        if not stat.S_ISDIR(st.st_mode):  # a linked folder: not followed, not a problem
            problems.append(Problem(full, f"not a regular file ({file_kind(st.st_mode)}): skipped"))
        return
    if full.lower().endswith(".zip"):
        names, reason = list_members(full)
        if reason:
            problems.append(Problem(full, reason))
        # At most ZIP_TASKS batches per archive: each batch parses the central directory
        # once, so the cost stays linear in the number of members.
        size = max(ZIP_BATCH, -(-len(names) // ZIP_TASKS))
        for i in range(0, len(names), size):
            yield ("zip", full, names[i:i + size])
        return
    yield ("file", full)


def _task_size(task) -> int:
    return len(task[2]) if task[0] == "zip" else 1


# Levels of a DICOMDIR's record tree (PATIENT, STUDY, SERIES, IMAGE and a few private ones).
DICOMDIR_MAX_DEPTH = 16


def _dicomdir_files(rec: InstanceRecord, problems: list[Problem]) -> list[str]:
    """Files a DICOMDIR refers to, record by record.

    The records are walked here (not by pydicom's FileSet, which follows the offsets without
    remembering where it has been: a record pointing back to an earlier one hung the scan, and
    one bad record made it refuse every other).  Each record is followed once, at most
    ``DICOMDIR_MAX_DEPTH`` levels deep; a loop, an offset that points to no record, a
    ReferencedFileID outside the DICOMDIR's folder or a file that is not there is one problem
    line of the DICOMDIR, and the other records are still read.  Records outside the tree
    with a ReferencedFileID are read too (as pydicom's FileSet did).
    """
    ensure_pydicom()
    from pathlib import Path
    from .header import read_dataset

    if rec.member is not None:
        return []  # inside a zip: every member is scanned already
    try:
        ds = read_dataset(rec)
        records = {item.seq_item_tell: item for item in ds.get("DirectoryRecordSequence") or []}
        first = ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity")
    except Exception as e:
        problems.append(Problem(rec.path, f"unreadable DICOMDIR: {_one_line(e)}"))
        return []
    root = Path(rec.path).resolve().parent
    order: list[int] = []  # records in tree order, each once
    seen: set[int] = set()

    def bad(text: str) -> None:
        problems.append(Problem(rec.path, text))

    def walk(offset, depth: int, came_from: str) -> None:
        while offset:
            if offset in seen:
                bad(f"DICOMDIR records form a loop: {came_from} points back to the record at offset "
                    f"{offset}; the walk stops there")
                return
            if offset not in records:
                bad(f"DICOMDIR: {came_from} points to offset {offset}, where there is no record")
                return
            seen.add(offset)
            order.append(offset)
            item = records[offset]
            lower = item.get("OffsetOfReferencedLowerLevelDirectoryEntity")
            if lower:
                if depth >= DICOMDIR_MAX_DEPTH:
                    bad(f"DICOMDIR: the record at offset {offset} is more than {DICOMDIR_MAX_DEPTH} levels "
                        "deep: its lower records are not read")
                else:
                    walk(lower, depth + 1, f"the lower-level offset of the record at offset {offset}")
            offset, came_from = item.get("OffsetOfTheNextDirectoryRecord"), \
                f"the next-record offset of the record at offset {offset}"

    try:
        walk(first, 0, "the first-record offset")
    except Exception as e:  # a value of the wrong type: the records reached so far are kept
        bad(f"DICOMDIR record offsets unreadable: {_one_line(e)}")
    order += [o for o in records if o not in seen]  # orphans
    files = []
    for offset in order:
        try:
            fid = records[offset].get("ReferencedFileID")
            if not fid:
                continue
            rel = Path(fid) if isinstance(fid, str) else Path(*fid)
            full = root / rel
            if rel.anchor or not full.resolve().is_relative_to(root):
                bad(f"DICOMDIR record at offset {offset}: ReferencedFileID {str(rel)!r} is outside the "
                    "DICOMDIR's folder: not read")
            elif not os.path.exists(full):
                bad(f"DICOMDIR names a file that is not there: {full}")
            else:
                files.append(str(full))
        except Exception as e:
            bad(f"DICOMDIR record at offset {offset} unreadable: {_one_line(e)}")
    return files


# --------------------------------------------------------------------------- checks
def _decoder_available(ts: str) -> bool:
    if ts in NATIVE_SYNTAXES or ts == "1.2.840.10008.1.2.1.99":
        return True
    try:
        ensure_pydicom()
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID
        return get_decoder(UID(ts)).is_available
    except Exception:
        return False


# Decoding is refused beyond this many bytes per compressed byte (for outputs over
# RATIO_FLOOR_BYTES): lossless codecs give 2-4:1, lossy ones 10-50:1, and even blank frames
# in RLE stay below ~64:1; a header that promises more describes a different image.
MAX_DECODE_RATIO = 1000
RATIO_FLOOR_BYTES = 64 << 20

# Attributes with exactly one value; (keyword, kind) where kind says what the value must be.
# uid: a UID string (grouping keys); us: an unsigned 16-bit integer; frames: an integer >= 1;
# DS ones: finite numbers (NaN or Inf would become silently wrong geometry or values).
_SINGLE = {"SOPInstanceUID": "uid", "SeriesInstanceUID": "uid", "StudyInstanceUID": "uid",
           "SOPClassUID": "uid", "TransferSyntaxUID": "uid",
           "Rows": "us", "Columns": "us", "SamplesPerPixel": "us", "BitsAllocated": "us",
           "BitsStored": "us", "HighBit": "us", "PixelRepresentation": "us",
           "PlanarConfiguration": "us", "NumberOfFrames": "frames",
           "RescaleIntercept": "ds", "RescaleSlope": "ds"}
# Geometry and display values (PixelSpacing, ImageOrientationPatient, ImagePositionPatient,
# SliceThickness, WindowCenter/Width, ...) are NOT checked here: a bad one does not make the
# pixels unreadable, so the file is indexed and the loader opens it without what the value
# would have given (spacing unknown, no 3D geometry, no file window), with a warning naming
# the attribute (loader._plan_geometry, display.presets_for) - what a reader expects.
# Text with one value: a backslash in it is kept as it is in the file (joined back).
_TEXT_SINGLE = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                "StudyDate", "StudyTime", "AccessionNumber", "Modality", "Manufacturer", "StudyDescription",
                "SeriesDescription", "BodyPartExamined", "PhotometricInterpretation",
                "RescaleType", "VOILUTFunction", "MediaStorageSOPClassUID")
_TRANSFER_SYNTAX_DIGITS = set("0123456789.")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _check_values(rec: InstanceRecord) -> str | None:
    """Normalise text values and say why a value makes the record unusable (or None)."""
    tags = rec.tags
    for kw in _TEXT_SINGLE:
        v = tags.get(kw)
        if isinstance(v, list):
            tags[kw] = "\\".join(str(x) for x in v)
        elif v is not None and not isinstance(v, str):
            tags[kw] = str(v)
    for kw, kind in _SINGLE.items():
        v = tags.get(kw)
        if v is None or v == "":
            continue
        if isinstance(v, list):
            return f"{kw} has {len(v)} values where one is expected ({_show(v)})"
        if kind == "uid":
            if not isinstance(v, str):
                return f"{kw} is not a UID ({type(v).__name__} {_show(v)}; wrong VR?)"
            if len(v) > 64 * 4 or not v.isprintable() or not v.isascii():
                return f"{kw} is not a UID ({_show(v)})"
        elif kind in ("us", "frames"):
            if not _is_int(v) and not (isinstance(v, float) and v.is_integer()):
                return f"{kw} is not an integer ({_show(v)})"
            v = int(v)
            tags[kw] = v
            if kind == "us" and not 0 <= v <= 65535:
                return f"{kw} {v} is outside the range of an unsigned 16-bit value (wrong VR?)"
            if kind == "frames" and v < 1:
                return f"NumberOfFrames {v} (at least 1 expected)"
        elif kind == "ds" and not _is_number(v):
            return f"{kw} is not a finite number ({_show(v)})"
    if tags.get("RescaleSlope") == 0:
        return "RescaleSlope is 0 (every pixel would get the same value)"
    ts = rec.transfer_syntax
    if not isinstance(ts, str) or (ts and not set(ts) <= _TRANSFER_SYNTAX_DIGITS):
        return f"invalid transfer syntax UID {_show(ts)}"
    return None


def _claims_image(rec: InstanceRecord) -> str | None:
    """What makes a record without pixel data look like an image (or None)."""
    for kw in ("Rows", "Columns"):
        if rec.tags.get(kw) not in (None, ""):
            return f"it has {kw}"
    sop = rec.tags.get("SOPClassUID") or rec.tags.get("MediaStorageSOPClassUID")
    if isinstance(sop, str) and sop:
        try:
            ensure_pydicom()
            from pydicom.uid import UID
            name = UID(sop).name
        except Exception:
            return None
        if name.endswith("Image Storage") and "Presentation State" not in name:
            return f"its SOP Class is {name}"
    return None


def _frame_bytes(rec: InstanceRecord, native: bool) -> int:
    """Bytes of one frame as stored (native) or decoded; Part 5 8.1.1 and C.7.6.3."""
    n = rec.rows * rec.columns * rec.samples
    if rec.bits_allocated == 1:
        return n / 8  # packed across frames: may be fractional per frame
    b = n * (rec.bits_allocated // 8)
    if native and str(rec.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        b = b // 3 * 2  # two samples per pixel stored for 4:2:2 native data
    return b


def check_record(rec: InstanceRecord) -> str | None:
    """A one-line reason why this instance cannot be indexed or shown, or None.

    The single gate before anything is allocated or decoded: scan() puts every record
    through it (a reason makes the file a Problem), and the loader checks again.  It
    normalises text values (a multi-valued Modality is joined back as in the file).
    """
    reason = _check_values(rec)
    if reason:
        return reason
    for kw in ("SOPInstanceUID", "SeriesInstanceUID"):
        if not rec.tags.get(kw):
            return f"no {kw}: not a usable DICOM instance"
    if not rec.has_pixels:
        why = _claims_image(rec)
        if why:
            return f"claims to be an image ({why}) but has no Pixel Data"
        return None
    if "FloatPixelData" in rec.flags:
        if result_kind(rec.get("SOPClassUID")) == PARAMETRIC_MAP:
            return None  # read by dicom.result_objects, which bounds the size before decoding
        return "float pixel data is not supported"
    if rec.rows <= 0 or rec.columns <= 0:
        return f"invalid image size {rec.rows}x{rec.columns}"
    if rec.bits_allocated not in (1, 8, 16, 32, 64):
        return f"unsupported BitsAllocated {rec.bits_allocated}"
    bits_stored = rec.get("BitsStored")
    if bits_stored is not None and not 1 <= bits_stored <= rec.bits_allocated:
        return f"BitsStored {bits_stored} does not fit BitsAllocated {rec.bits_allocated}"
    high_bit = rec.get("HighBit")
    if bits_stored is not None and high_bit is not None and high_bit != bits_stored - 1:
        # PS3.5 8.1.1: High Bit is one less than Bits Stored (the stored bits sit at the bottom);
        # read as if it were, data placed higher would be masked into other values
        return f"HighBit {high_bit} is not BitsStored - 1 ({bits_stored - 1}): the pixel values cannot be placed"
    if rec.samples not in (1, 3):
        return f"unsupported SamplesPerPixel {rec.samples}"
    if rec.get("PixelRepresentation", 0) not in (0, 1):
        return f"invalid PixelRepresentation {rec.get('PixelRepresentation')}"
    frames = rec.frames
    need = rec.expected_pixel_bytes()
    if need > MAX_SERIES_BYTES:
        return (f"implausible size: {rec.rows}x{rec.columns}x{frames} frames would need "
                f"{need / 1024**3:.1f} GiB")
    ts = rec.transfer_syntax
    if ts and not _decoder_available(ts):
        ensure_pydicom()
        from pydicom.uid import UID
        return f"no decoder installed for transfer syntax {UID(ts).name} ({ts})"
    attrs = "Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated/8"
    if not rec.encapsulated:
        fb = _frame_bytes(rec, native=True)
        stored = math.ceil(fb * frames)
        if rec.pixel_length is None:
            return "native pixel data of undefined length"
        if rec.pixel_length < stored:
            return f"truncated pixel data: {rec.pixel_length} bytes present, {stored} expected ({attrs})"
        excess = rec.pixel_length - stored
        # Padding is a byte or a few (even length, vendor blocks); a whole image row or more
        # in excess means Rows/Columns do not describe the data (a smaller Rows would crop
        # the image silently, a wrong Columns would shear it).
        row = max(fb / max(rec.rows, 1), 2)
        if excess > 1 and excess >= row:
            return (f"Pixel Data holds {rec.pixel_length} bytes but {attrs} = {stored}: "
                    f"the attributes do not describe the data")
        if excess > 1:
            note = f"{excess} bytes after the pixel data ignored (padding)"
            if note not in rec.notes:
                rec.notes.append(note)
        if rec.pixel_available is not None and rec.pixel_available < stored:
            return (f"truncated file: pixel data needs {stored} bytes but only "
                    f"{rec.pixel_available} are present")
        return None
    # Encapsulated: the frames must be in the fragments, and the decoded size must be
    # plausible for the bytes present.
    if rec.pixel_available is not None and rec.pixel_available < 8:
        return "truncated file: no compressed pixel data present"
    if rec.fragment_error:
        return rec.fragment_error
    if rec.fragments is not None:
        if rec.fragments == 0:
            return "truncated file: no compressed pixel data present"
        if rec.offset_table_entries and rec.offset_table_entries != frames:
            return (f"the Basic Offset Table lists {rec.offset_table_entries} frames but "
                    f"NumberOfFrames is {frames}")
        if rec.fragments < frames:
            return (f"NumberOfFrames is {frames} but the pixel data has only "
                    f"{rec.fragments} fragment{'s' if rec.fragments != 1 else ''}")
    cs = rec.codestream or {}
    if "segments" in cs:
        want = rec.samples * max(1, rec.bits_allocated // 8)
        if cs["segments"] != want:
            return (f"the RLE data has {cs['segments']} segments per frame but SamplesPerPixel "
                    f"x BitsAllocated/8 = {want}")
    elif cs.get("rows") and cs.get("columns"):
        got = (cs["rows"], cs["columns"], cs.get("samples") or rec.samples)
        if got != (rec.rows, rec.columns, rec.samples):
            return (f"the compressed frame is {got[0]}x{got[1]} with {got[2]} samples but Rows x "
                    f"Columns x SamplesPerPixel say {rec.rows}x{rec.columns}x{rec.samples}")
    compressed = rec.fragment_bytes if rec.fragment_bytes is not None else rec.pixel_available
    if compressed is not None and need > RATIO_FLOOR_BYTES and need > MAX_DECODE_RATIO * max(1, compressed):
        return (f"implausible compression ratio: {rec.rows}x{rec.columns}x{frames} frames "
                f"({need / 1024**2:.0f} MiB) from {compressed} compressed bytes "
                f"(limit {MAX_DECODE_RATIO}:1)")
    return None


# --------------------------------------------------------------------------- scan
def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def _read_one(path: str) -> InstanceRecord | Problem:
    try:
        return read_record(path)
    except HeaderError as e:
        return Problem(path, str(e))
    except Exception as e:  # never let one file stop the scan
        return Problem(path, f"unreadable: {type(e).__name__}: {_one_line(e)}")


def _run_task(task) -> list[InstanceRecord | Problem]:
    if task[0] == "zip":
        return [Problem(*r) if isinstance(r, tuple) else r for r in read_members(task[1], task[2])]
    return [_read_one(task[1])]


def preload_pydicom() -> None:
    """Import pydicom now (thread-safe); the scan itself imports it only when a file needs it."""
    ensure_pydicom()


def scan(paths: str | list[str], workers: int | None = None,
         progress: Callable[[int, int], None] | None = None,
         cancel: Callable[[], bool] | None = None) -> StudyIndex:
    """Index DICOM files below ``paths``, reading headers only.

    A thread pool reads the headers: on a cold disk or a network share the time is
    spent waiting for I/O, which threads overlap; the parsing itself is small.
    Every per-file failure becomes one :class:`Problem`; nothing raises for a bad file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    problems: list[Problem] = []
    tasks: list[tuple] = []
    for p in paths:
        tasks.extend(_iter_sources(str(p), problems))
    records: list[InstanceRecord] = []
    total = sum(_task_size(t) for t in tasks)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)

    def consume(results):
        done = 0
        last = 0
        for batch in results:
            for res in batch:
                done += 1
                if isinstance(res, Problem):
                    problems.append(res)
                else:
                    records.append(res)
            if progress and (done - last >= 16 or done == total):
                last = done
                progress(done, total)
            if cancel and cancel():
                break

    if len(tasks) <= 1 or total <= 8 or workers <= 1:
        consume(map(_run_task, tasks))
    else:
        with ThreadPoolExecutor(workers) as ex:
            consume(ex.map(_run_task, tasks, chunksize=8 if len(tasks) > 64 else 1))

    # DICOMDIR: follow its references (files not already found by the walk).
    seen = {os.path.realpath(r.path) for r in records if r.member is None}
    extra: list[InstanceRecord] = []
    dicomdirs = [r for r in records if _is_dicomdir(r)]
    for rec in dicomdirs:
        for f in _dicomdir_files(rec, problems):
            if os.path.realpath(f) not in seen:
                seen.add(os.path.realpath(f))
                res = _read_one(f)
                (problems.append(res) if isinstance(res, Problem) else extra.append(res))
    records = [r for r in records if not _is_dicomdir(r)] + extra

    index = StudyIndex(root=", ".join(str(p) for p in paths), n_files=total,
                       dicomdirs=[r.display_path for r in dicomdirs])
    good: list[InstanceRecord] = []
    for rec in records:
        try:
            reason = check_record(rec)
        except Exception as e:  # a value no check foresaw: still only this file's problem
            reason = f"invalid header value: {type(e).__name__}: {_one_line(e)}"
        if reason:
            problems.append(Problem(rec.display_path, reason))
        else:
            good.append(rec)
    _build_tree(index, good, problems)
    problems, other = split_other_files(problems)
    index.problems = sorted(problems, key=lambda p: p.path)
    index.other_files = sorted(other, key=lambda p: p.path)
    from ..privacy.audit import record_index  # the audit trail: whose headers were listed (never raises)
    record_index(index)
    return index


def _is_dicomdir(rec: InstanceRecord) -> bool:
    return rec.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS or \
        "DirectoryRecordSequence" in rec.flags


def _patient_label(p: PatientInfo) -> str:
    return " ".join(x for x in (p.id or "(no ID)", p.name, f"(issuer {p.issuer})" if p.issuer else "") if x)


def _build_tree(index: StudyIndex, records: list[InstanceRecord],
                problems: list[Problem] | None = None) -> None:
    """Patients are keyed by (IssuerOfPatientID, PatientID, PatientName): the issuer as
    nodules.growth.patient_key tells patients apart, the name so that one entry (whose name the
    corner text shows) never holds films of two names; studies by (patient, StudyInstanceUID),
    series by (study, SeriesInstanceUID).  A study or series UID that more than one patient (or a
    series UID that more than one study) uses is kept apart, with a warning on each: keyed by the
    UID alone, a second patient's images were shown under the first patient's name."""
    problems = problems if problems is not None else index.problems
    patients: dict[tuple, PatientInfo] = {}
    studies: dict[tuple, StudyInfo] = {}
    series_groups: dict[tuple, list[InstanceRecord]] = defaultdict(list)
    for rec in records:
        try:
            suid = str(rec.get("SeriesInstanceUID"))
            stuid = str(rec.get("StudyInstanceUID") or f"no-study-uid:{suid}")
            pkey = (str(rec.get("IssuerOfPatientID", "") or "").strip(), str(rec.get("PatientID", "")),
                    name_key(rec.get("PatientName", "")))
        except Exception as e:  # check_record makes this unreachable; one file, one problem
            problems.append(Problem(rec.display_path, f"invalid header value: {_one_line(e)}"))
            continue
        stkey = (pkey, stuid)
        series_groups[(stkey, suid)].append(rec)
        if stkey not in studies:
            studies[stkey] = StudyInfo(uid=stuid, date=str(rec.get("StudyDate", "")),
                                       time=str(rec.get("StudyTime", "")),
                                       description=str(rec.get("StudyDescription", "")),
                                       accession=str(rec.get("AccessionNumber", "")))
            if pkey not in patients:
                patients[pkey] = PatientInfo(id=pkey[1], name=str(rec.get("PatientName", "")), issuer=pkey[0],
                                             birth_date=str(rec.get("PatientBirthDate", "")),
                                             sex=str(rec.get("PatientSex", "")))
            patients[pkey].studies.append(studies[stkey])
    clashes: dict[tuple, list[str]] = defaultdict(list)  # series group -> what is said on it
    by_study_uid: dict[str, list[tuple]] = defaultdict(list)
    for pkey, stuid in studies:
        by_study_uid[stuid].append(pkey)
    for stuid, pkeys in by_study_uid.items():
        if len(pkeys) > 1 and not stuid.startswith("no-study-uid:"):
            line = (f"StudyInstanceUID {stuid} is used by {len(pkeys)} patients "
                    f"({', '.join(_patient_label(patients[k]) for k in sorted(pkeys, key=_patient_order))}): "
                    "shown apart; check the source")
            for g in series_groups:
                if g[0][1] == stuid:
                    clashes[g].append(line)
    by_series_uid: dict[str, list[tuple]] = defaultdict(list)
    for g in series_groups:
        by_series_uid[g[1]].append(g)
    base_key: dict[tuple, str] = {}
    for suid, groups in by_series_uid.items():
        if len(groups) == 1:
            base_key[groups[0]] = suid  # the normal case: the key stays the UID
            continue
        # Each group gets a key of its own ("uid@1", "uid@2"...), in the order the browser lists
        # them, so that results and annotations kept by series key stay with their own images.
        groups.sort(key=lambda g: (_patient_order(g[0][0]), studies[g[0]].date, g[0][1]))
        pkeys = list(dict.fromkeys(g[0][0] for g in groups))
        if len(pkeys) > 1:
            line = (f"SeriesInstanceUID {suid} is used by {len(pkeys)} patients "
                    f"({', '.join(_patient_label(patients[k]) for k in pkeys)}): shown apart; check the source")
        else:
            line = (f"SeriesInstanceUID {suid} is used in {len(groups)} studies of {_patient_label(patients[pkeys[0]])} "
                    f"({', '.join(g[0][1] for g in groups)}): shown apart; check the source")
        for i, g in enumerate(groups):
            base_key[g] = f"{suid}@{i + 1}"
            clashes[g].append(line)
    # Said on each series (the browser's line, the banner when it opens, `scan`) and its study;
    # not a Problem: those are files that cannot be shown.
    for g, recs in series_groups.items():
        parts = split_series(g[1], recs, key=base_key[g])
        for part in parts:
            part.warnings[:0] = clashes.get(g, [])
        study = studies[g[0]]
        study.warnings += [w for w in clashes.get(g, []) if w not in study.warnings]
        study.series.extend(parts)
    for st in studies.values():
        # parts by number: as text, part 10 came before part 2 (and a 2x2 hung time points 1, 10, 11, 12)
        st.series.sort(key=lambda s: (_num(s.number), s.description, s.uid, s.part))
    for p in patients.values():
        # stable with reverse=True: undated studies keep the order they were found in, last
        p.studies.sort(key=_study_order, reverse=True)
    index.patients = sorted(patients.values(), key=lambda p: (name_key(p.name), p.name, p.id, p.issuer))
    _link_results(index)


def _study_order(st: StudyInfo) -> tuple:
    """(1, StudyDate, StudyTime) to list studies most recent first, as the Priors panel does
    (``viewing.other_studies``); (0,) for a study without a usable date or dated in the future
    (a typo), listed last."""
    from ..viewing import in_future, parse_date  # viewing imports this module

    d = parse_date(st.date)
    if d is None or in_future(st):
        return (0,)
    return 1, d, st.time.replace(":", "").strip()  # TM (HHMMSS) or HH:MM:SS


def name_key(name) -> str:
    """A Person Name as one patient: letter case, component separators, padding and empty
    trailing components or groups are no difference ("DOE^JOHN", "Doe^John^^^" and "DOE JOHN"
    are one name, PS3.5 6.2); the component groups (alphabetic=ideographic=phonetic) are kept.
    The index groups patients by it and the priors compare names by it (viewing)."""
    groups = [" ".join(g.replace("^", " ").split()).casefold() for g in str(name or "").split("=")]
    return "=".join(groups).rstrip("=")


def _patient_order(pkey: tuple):
    issuer, pid, name = pkey
    return name, pid, issuer


def _link_results(index: StudyIndex) -> None:
    """Fill ``references`` of result series (headers read by pydicom: few, small files)."""
    from .header import read_dataset
    known = {s.uid for s in index.all_series()}
    for s in index.all_series():
        kind = s.result_kind
        if not kind or not s.instances:
            continue
        refs: list[str] = []
        for rec in s.instances[:16]:  # a result series holds one or a few objects
            try:
                ds = read_dataset(rec, stop_before_pixels=True)
            except Exception as e:
                s.warnings.append(f"references of {rec.display_path} unreadable: {_one_line(e)}")
                continue
            refs += [u for u in referenced_series(ds) if u not in refs]
        s.references = refs
        missing = [u for u in refs if u not in known]
        if missing:
            s.warnings.append(f"this {KIND_NAMES[kind]} refers to series {missing[0]}"
                              f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, "
                              "which is not in this index")


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("inf")


def _finite_vector(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)


def _orientation_key(rec: InstanceRecord):
    iop = rec.get("ImageOrientationPatient")
    if not _finite_vector(iop, 6):
        return None  # unusable orientation: the loader warns and opens without geometry
    return tuple(np.round(np.asarray(iop, float), 3))


def _spacing_key(rec: InstanceRecord):
    """PixelSpacing to 0.001 mm: images of one stack share it (the loader takes one pixel size
    per stack, so a slice with another would be drawn and measured at the wrong scale)."""
    ps = rec.get("PixelSpacing")
    if not _finite_vector(ps, 2):
        return None  # missing or unusable: the loader says so
    return tuple(np.round(np.asarray(ps, float), 3))


def _loop_key(rec: InstanceRecord):
    """A multi-frame image without patient positions (no ImagePositionPatient, no functional
    groups that could hold per-frame positions) is a cine loop: its own stack, played at its
    own FrameTime.  Two loops of one size in one series were one stack of both loops' frames."""
    if rec.frames <= 1 or not rec.has_pixels or _finite_vector(rec.get("ImagePositionPatient"), 3) \
            or rec.flags & {"PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"}:
        return None
    return str(rec.get("SOPInstanceUID", "") or "") or rec.display_path  # copies of one loop: _split_duplicates


def _instance_order(rec: InstanceRecord):
    return _num(rec.get("InstanceNumber")), rec.display_path


def _value_order(v: str):
    """Split values in number order when they are numbers ("2" before "10"), else as text."""
    n = _num(v)
    return (0, n, v) if math.isfinite(n) else (1, 0.0, v)


def split_series(uid: str, recs: list[InstanceRecord], key: str | None = None) -> list[SeriesInfo]:
    """One SeriesInfo per displayable stack (keyed ``key``, by default the UID, or "key:N" for parts).

    A series is split when its images cannot form one volume: different sizes, colour
    models, orientations, pixel spacings, or several images at the same position (echoes,
    phases, repeated acquisitions).  Each split is said in the part's warnings.
    """
    groups: dict[tuple, list[InstanceRecord]] = defaultdict(list)
    for r in recs:
        k = (r.rows, r.columns, r.samples, str(r.get("PhotometricInterpretation", "")),
             _orientation_key(r) if r.frames == 1 else None, r.has_pixels,
             result_kind(r.get("SOPClassUID")),  # a SEG/PM/SR never joins its images
             _spacing_key(r) if r.frames == 1 else None, _loop_key(r))
        groups[k].append(r)
    reasons = []
    if len(groups) > 1:
        sizes = {(k[0], k[1]) for k in groups}
        if len(sizes) > 1:
            reasons.append("mixed image sizes " + ", ".join(f"{a}x{b}" for a, b in sorted(sizes)))
        if len({k[4] for k in groups}) > 1:
            reasons.append("mixed orientations")
        if len({(k[2], k[3]) for k in groups}) > 1:
            reasons.append("mixed colour models")
        if len({k[6] for k in groups}) > 1:
            reasons.append("result objects (SEG, Parametric Map, SR) share the images' series UID")
        spacings = {k[7] for k in groups}
        if len(spacings) > 1:
            reasons.append("mixed pixel spacings " + ", ".join(
                "x".join(f"{v:g}" for v in sp) if sp else "none" for sp in sorted(spacings, key=str)))
        if len({k[8] for k in groups}) > 1:
            reasons.append("multi-frame images without patient positions (cine loops), each a part of its own")
    parts: list[tuple[list[InstanceRecord], str]] = []
    # the largest group first; groups of one size (cine loops) by InstanceNumber
    for _, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), min(_instance_order(r) for r in kv[1]))):
        for sub, why in _split_duplicates(members):
            parts.append((sub, why))
    key = key or uid
    out = []
    for i, (members, why) in enumerate(parts):
        members.sort(key=_instance_order)
        s = SeriesInfo(uid=uid, key=key if len(parts) == 1 else f"{key}:{i + 1}", instances=members,
                       part=i + 1 if len(parts) > 1 else 0)
        all_reasons = reasons + ([why] if why else [])
        if len(parts) > 1:
            s.split_reason = "; ".join(all_reasons) or "several stacks"
            s.warnings.append(f"series split into {len(parts)} parts ({s.split_reason}); "
                              f"this is part {i + 1} with {len(members)} instances")
        notes: dict[str, int] = defaultdict(int)
        for r in members:
            for n in r.notes:
                notes[n] += 1
        for n, k in notes.items():  # what the readers noticed (inferred syntax, padding, ...)
            s.warnings.append(n if len(members) == 1 else f"{k} of {len(members)} files: {n}")
        out.append(s)
    return out


def _split_duplicates(members: list[InstanceRecord]) -> list[tuple[list[InstanceRecord], str]]:
    """Split single-frame images that share a position by the attribute that tells them apart;
    copies of one image (the same SOP Instance UID in several files: a folder and a zip of it)
    go to parts of their own, whether or not the images have positions (stacked, a film and
    its copy were a two-image "series" and every area counted twice)."""
    uids = [str(r.get("SOPInstanceUID", "") or "") for r in members]
    if len(members) > 1 and all(uids) and len(set(uids)) < len(uids):
        copy_no: dict[str, int] = defaultdict(int)
        by_copy: dict[int, list[InstanceRecord]] = defaultdict(list)
        for u, r in sorted(zip(uids, members), key=lambda t: _instance_order(t[1])):
            by_copy[copy_no[u]].append(r)
            copy_no[u] += 1
        return [(g, "the same SOP Instance UID in several files (copies of one image)")
                for _, g in sorted(by_copy.items())]
    single = [r for r in members if r.frames == 1 and _finite_vector(r.get("ImagePositionPatient"), 3)]
    if len(single) != len(members) or len(members) < 2:
        return [(members, "")]
    pos = [tuple(np.round(np.asarray(r.get("ImagePositionPatient"), float), 3)) for r in members]
    if len(set(pos)) == len(pos):
        return [(members, "")]
    for kw in ("EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "ImageType"):
        vals = [str(r.get(kw, "")) for r in members]
        if len(set(vals)) > 1:
            groups: dict[str, list[InstanceRecord]] = defaultdict(list)
            for v, r in zip(vals, members):
                groups[v].append(r)
            ok = all(len({tuple(np.round(np.asarray(r.get("ImagePositionPatient"), float), 3))
                          for r in g}) == len(g) for g in groups.values())
            if ok:
                return [(g, f"several images per position, split by {kw}={v}")
                        for v, g in sorted(groups.items(), key=lambda kv: _value_order(kv[0]))]
    # Nothing tells them apart: the k-th image at each position goes to part k.
    same_uid = len({r.get("SOPInstanceUID") for r in members}) < len(members)
    why = ("the same SOP Instance UID in several files (copies of one image)" if same_uid
           else "several images per position with nothing to tell them apart; split by file order")
    seen: dict[tuple, int] = defaultdict(int)
    parts: dict[int, list[InstanceRecord]] = defaultdict(list)
    for p, r in sorted(zip(pos, members), key=lambda t: _instance_order(t[1])):
        parts[seen[p]].append(r)
        seen[p] += 1
    return [(g, why) for _, g in sorted(parts.items())]
