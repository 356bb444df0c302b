"""Index a folder, zip, DICOMDIR or single files into Patient -> Study -> Series.

Only headers are read (see :mod:`imaging_assist.dicom.header`).  Everything that cannot
be shown ends up in ``StudyIndex.problems`` with its path and a one-line reason; nothing
raises out of :func:`scan` for a bad file.
"""

from __future__ import annotations

import os
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .header import (DICOMDIR_SOP_CLASS, NATIVE_SYNTAXES, HeaderError, InstanceRecord,
                     read_record)

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
    def is_image(self) -> bool:
        return any(r.has_pixels for r in self.instances)

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

    def to_dict(self) -> dict:
        return {"study_uid": self.uid, "date": self.date, "time": self.time,
                "description": self.description, "accession": self.accession,
                "series": [s.to_dict() for s in self.series]}


@dataclass
class PatientInfo:
    id: str
    name: str
    birth_date: str = ""
    sex: str = ""
    studies: list[StudyInfo] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"patient_id": self.id, "name": self.name, "birth_date": self.birth_date,
                "sex": self.sex, "studies": [s.to_dict() for s in self.studies]}


@dataclass
class StudyIndex:
    root: str
    patients: list[PatientInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_files: int = 0
    dicomdirs: list[str] = field(default_factory=list)  # DICOMDIR files followed (not images)

    def all_series(self) -> list[SeriesInfo]:
        return [s for p in self.patients for st in p.studies for s in st.series]

    def image_series(self) -> list[SeriesInfo]:
        return [s for s in self.all_series() if s.is_image]

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
                "problems": [p.to_dict() for p in self.problems]}


# --------------------------------------------------------------------------- discovery
def _iter_sources(path: str, problems: list[Problem]) -> Iterable[tuple[str, str | None]]:
    """Yield (file, zip-member-or-None) for everything below path."""
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                yield from _iter_file(full, problems)
    elif os.path.isfile(path):
        yield from _iter_file(path, problems)
    else:
        problems.append(Problem(path, "no such file or folder"))


def _iter_file(full: str, problems: list[Problem]):
    if full.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(full) as zf:
                for info in zf.infolist():
                    if info.is_dir() or os.path.basename(info.filename).startswith("."):
                        continue
                    yield (full, info.filename)
        except (zipfile.BadZipFile, OSError) as e:
            problems.append(Problem(full, f"unreadable zip: {e}"))
        return
    yield (full, None)


def _dicomdir_files(rec: InstanceRecord, problems: list[Problem]) -> list[str]:
    """Files a DICOMDIR refers to (pydicom's FileSet does the record walking)."""
    from pydicom.fileset import FileSet
    from .header import read_dataset
    try:
        fs = FileSet(read_dataset(rec))
        return [str(inst.path) for inst in fs]
    except Exception as e:
        problems.append(Problem(rec.path, f"unreadable DICOMDIR: {e}"))
        return []


# --------------------------------------------------------------------------- checks
def _decoder_available(ts: str) -> bool:
    if ts in NATIVE_SYNTAXES or ts == "1.2.840.10008.1.2.1.99":
        return True
    try:
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID
        return get_decoder(UID(ts)).is_available
    except Exception:
        return False


def check_record(rec: InstanceRecord) -> str | None:
    """A one-line reason why this instance's pixels cannot be shown, or None."""
    if not rec.has_pixels:
        return None
    if rec.rows <= 0 or rec.columns <= 0:
        return f"invalid image size {rec.rows}x{rec.columns}"
    if rec.bits_allocated not in (1, 8, 16, 32, 64):
        return f"unsupported BitsAllocated {rec.bits_allocated}"
    need = rec.expected_pixel_bytes()
    if need > MAX_SERIES_BYTES:
        return (f"implausible size: {rec.rows}x{rec.columns}x{rec.frames} frames would need "
                f"{need / 1024**3:.1f} GiB")
    ts = rec.transfer_syntax
    if ts and not _decoder_available(ts):
        from pydicom.uid import UID
        return f"no decoder installed for transfer syntax {UID(ts).name} ({ts})"
    if not rec.encapsulated and rec.pixel_length is not None:
        # Native pixels: the bytes must be there before anything is allocated or decoded.
        if rec.pixel_length < need:
            return f"truncated pixel data: {rec.pixel_length} bytes present, {need} expected"
        if rec.pixel_offset is not None and rec.member is None \
                and rec.pixel_offset + need > rec.file_size:
            return (f"truncated file: pixel data needs {need} bytes but only "
                    f"{max(0, rec.file_size - rec.pixel_offset)} are present")
    if rec.encapsulated and rec.pixel_offset is not None and rec.pixel_offset >= rec.file_size:
        return "truncated file: no compressed pixel data present"
    return None


# --------------------------------------------------------------------------- scan
def _read_one(item):
    path, member = item
    try:
        if member is None:
            return read_record(path)
        with zipfile.ZipFile(path) as zf:
            return read_record(path, member, zf)
    except HeaderError as e:
        return Problem(f"{path}!{member}" if member else path, str(e))
    except Exception as e:  # never let one file stop the scan
        return Problem(f"{path}!{member}" if member else path,
                       f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def scan(paths: str | list[str], workers: int | None = None,
         progress: Callable[[int, int], None] | None = None,
         cancel: Callable[[], bool] | None = None) -> StudyIndex:
    """Index DICOM files below ``paths``, reading headers only.

    A thread pool reads the headers: on a cold disk or a network share the time is
    spent waiting for I/O, which threads overlap; the parsing itself is small.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    problems: list[Problem] = []
    items: list[tuple[str, str | None]] = []
    for p in paths:
        items.extend(_iter_sources(str(p), problems))
    records: list[InstanceRecord] = []
    total = len(items)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)

    def consume(results):
        done = 0
        for res in results:
            done += 1
            if isinstance(res, Problem):
                problems.append(res)
            else:
                records.append(res)
            if progress and (done % 16 == 0 or done == total):
                progress(done, total)
            if cancel and cancel():
                break

    if total <= 8 or workers <= 1:
        consume(map(_read_one, items))
    else:
        with ThreadPoolExecutor(workers) as ex:
            consume(ex.map(_read_one, items, chunksize=8))

    # DICOMDIR: follow its references (files not already found by the walk).
    seen = {os.path.realpath(r.path) for r in records if r.member is None}
    extra: list[InstanceRecord] = []
    dicomdirs = [r for r in records if _is_dicomdir(r)]
    for rec in dicomdirs:
        for f in _dicomdir_files(rec, problems):
            if os.path.realpath(f) not in seen:
                seen.add(os.path.realpath(f))
                res = _read_one((f, None))
                (problems.append(res) if isinstance(res, Problem) else extra.append(res))
    records = [r for r in records if not _is_dicomdir(r)] + extra

    index = StudyIndex(root=", ".join(str(p) for p in paths), n_files=total,
                       dicomdirs=[r.display_path for r in dicomdirs])
    good: list[InstanceRecord] = []
    for rec in records:
        reason = check_record(rec)
        if reason:
            problems.append(Problem(rec.display_path, reason))
        else:
            good.append(rec)
    _build_tree(index, good)
    index.problems = sorted(problems, key=lambda p: p.path)
    return index


def _is_dicomdir(rec: InstanceRecord) -> bool:
    return rec.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS or \
        "DirectoryRecordSequence" in rec.flags


def _build_tree(index: StudyIndex, records: list[InstanceRecord]) -> None:
    patients: dict[tuple, PatientInfo] = {}
    studies: dict[str, StudyInfo] = {}
    series_groups: dict[str, list[InstanceRecord]] = defaultdict(list)
    study_of_series: dict[str, str] = {}
    for rec in records:
        # Missing UIDs: fall back to a per-file key so nothing is merged by accident.
        suid = rec.get("SeriesInstanceUID") or f"no-series-uid:{rec.display_path}"
        stuid = rec.get("StudyInstanceUID") or f"no-study-uid:{suid}"
        series_groups[suid].append(rec)
        study_of_series.setdefault(suid, stuid)
        if stuid not in studies:
            studies[stuid] = StudyInfo(uid=stuid, date=str(rec.get("StudyDate", "")),
                                       time=str(rec.get("StudyTime", "")),
                                       description=str(rec.get("StudyDescription", "")),
                                       accession=str(rec.get("AccessionNumber", "")))
            pkey = (str(rec.get("PatientID", "")), str(rec.get("PatientName", "")))
            if pkey not in patients:
                patients[pkey] = PatientInfo(id=pkey[0], name=pkey[1],
                                             birth_date=str(rec.get("PatientBirthDate", "")),
                                             sex=str(rec.get("PatientSex", "")))
            patients[pkey].studies.append(studies[stuid])
    for suid, recs in series_groups.items():
        for part in split_series(suid, recs):
            studies[study_of_series[suid]].series.append(part)
    for st in studies.values():
        st.series.sort(key=lambda s: (_num(s.number), s.description, s.key))
    index.patients = sorted(patients.values(), key=lambda p: (p.name, p.id))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("inf")


def _orientation_key(rec: InstanceRecord):
    iop = rec.get("ImageOrientationPatient")
    if not isinstance(iop, list) or len(iop) != 6:
        return None
    return tuple(np.round(np.asarray(iop, float), 3))


def split_series(uid: str, recs: list[InstanceRecord]) -> list[SeriesInfo]:
    """One SeriesInfo per displayable stack.

    A series is split when its images cannot form one volume: different sizes, colour
    models, orientations, or several images at the same position (echoes, phases,
    repeated acquisitions).  Each split is said in the part's warnings.
    """
    groups: dict[tuple, list[InstanceRecord]] = defaultdict(list)
    for r in recs:
        k = (r.rows, r.columns, r.samples, str(r.get("PhotometricInterpretation", "")),
             _orientation_key(r) if r.frames == 1 else None, r.has_pixels)
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
    parts: list[tuple[list[InstanceRecord], str]] = []
    for _, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        for sub, why in _split_duplicates(members):
            parts.append((sub, why))
    out = []
    for i, (members, why) in enumerate(parts):
        members.sort(key=lambda r: (_num(r.get("InstanceNumber")), r.display_path))
        s = SeriesInfo(uid=uid, key=uid if len(parts) == 1 else f"{uid}:{i + 1}", instances=members)
        all_reasons = reasons + ([why] if why else [])
        if len(parts) > 1:
            s.split_reason = "; ".join(all_reasons) or "several stacks"
            s.warnings.append(f"series split into {len(parts)} parts ({s.split_reason}); "
                              f"this is part {i + 1} with {len(members)} instances")
        out.append(s)
    return out


def _split_duplicates(members: list[InstanceRecord]) -> list[tuple[list[InstanceRecord], str]]:
    """Split single-frame images that share a position by the attribute that tells them apart."""
    single = [r for r in members if r.frames == 1 and isinstance(r.get("ImagePositionPatient"), list)]
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
                        for v, g in sorted(groups.items())]
    # Nothing tells them apart: the k-th image at each position goes to part k.
    same_uid = len({r.get("SOPInstanceUID") for r in members}) < len(members)
    why = ("the same SOP Instance UID in several files (copies of one image)" if same_uid
           else "several images per position with nothing to tell them apart; split by file order")
    seen: dict[tuple, int] = defaultdict(int)
    parts: dict[int, list[InstanceRecord]] = defaultdict(list)
    for p, r in sorted(zip(pos, members), key=lambda t: (_num(t[1].get("InstanceNumber")), t[1].display_path)):
        parts[seen[p]].append(r)
        seen[p] += 1
    return [(g, why) for _, g in sorted(parts.items())]
