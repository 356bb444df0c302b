"""Read result objects back: Segmentation (SEG), Parametric Map and Structured Reports.

Result objects are not images to show on their own: they belong to the series they
reference.  :func:`result_kind` tells them apart by SOP Class UID (the index lists them as
result series of their study); :func:`read_segmentation` puts a SEG on the exact voxel grid
of its referenced series, :func:`read_parametric_map` does the same for a Parametric Map
(a heat map), and :func:`read_sr` lists the findings and measurements of an SR with the
images they refer to.

Frames are placed on the source grid by hand rather than with highdicom's
``get_pixels_by_source_instance``/``get_volume``: a SEG written by another tool may carry
only plane positions or only source references, and we must check both against the
Volume that is shown (its own, possibly sheared, affine), refusing - never guessing -
when they disagree.  Decoding the pixels is pydicom's (``pixel_array``: 1-bit unpacking,
compressed syntaxes, float pixel data).  Every problem is a :class:`ResultObjectError`
with a one-line reason.

Overlapping segments: a SEG may give one voxel to several segments.  A single label map
would hide all but one of them, so :meth:`Segmentation.layers` then gives one layer per
segment and :attr:`Segmentation.warnings` says which segments overlap and by how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .header import functional_group_value as _fg

SEG = "SEG"
PARAMETRIC_MAP = "PM"
SR = "SR"
PDF = "PDF"
PR = "PR"  # softcopy presentation states: their annotations (imaging_assist.dicom.presentation_state)

# SOP Class UID -> kind (PS3.4 B.5).
RESULT_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": SEG,  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7": SEG,  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.30": PARAMETRIC_MAP,  # Parametric Map Storage
    "1.2.840.10008.5.1.4.1.1.88.11": SR,  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": SR,  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": SR,  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34": SR,  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35": SR,  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.88.40": SR,  # Procedure Log
    "1.2.840.10008.5.1.4.1.1.88.50": SR,  # Mammography CAD SR
    "1.2.840.10008.5.1.4.1.1.88.65": SR,  # Chest CAD SR
    "1.2.840.10008.5.1.4.1.1.88.67": SR,  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.68": SR,  # Radiopharmaceutical Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.69": SR,  # Colon CAD SR
    "1.2.840.10008.5.1.4.1.1.88.70": SR,  # Implantation Plan SR
    "1.2.840.10008.5.1.4.1.1.88.71": SR,  # Acquisition Context SR
    "1.2.840.10008.5.1.4.1.1.88.72": SR,  # Simplified Adult Echo SR
    "1.2.840.10008.5.1.4.1.1.88.73": SR,  # Patient Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.104.1": PDF,  # Encapsulated PDF Storage
    "1.2.840.10008.5.1.4.1.1.11.1": PR,  # Grayscale Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.11.2": PR,  # Color Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.11.3": PR,  # Pseudo-Color Softcopy Presentation State Storage
}
KIND_NAMES = {SEG: "Segmentation", PARAMETRIC_MAP: "Parametric Map", SR: "Structured Report",
              PDF: "Encapsulated PDF", PR: "Presentation State"}

# Limits against hostile objects (checked before anything is allocated).
MAX_SEGMENTS = 1024
MAX_OVERLAP_LAYERS = 32  # segments shown as layers of their own (each a full grid)
MAX_RESULT_BYTES = 2 * 1024**3  # decoded frames of one object
MAX_SR_ITEMS = 100_000
MAX_SR_DEPTH = 64
# Plane positions are DS strings; other writers round them. A frame more than this away
# from a source slice (in plane or along the normal) does not belong to it.
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 1e-4


class ResultObjectError(UserError):
    """A result object (SEG, Parametric Map, SR) cannot be read or placed; one line."""

    def __init__(self, message: str = ""):
        # values from the file (UIDs, labels) may hold line breaks or swallow the whole file
        # when a length is corrupt: the message stays one short line
        super().__init__(_short_line(message))


def _short_line(text, limit: int = 290) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 1] + "…"


def result_kind(sop_class_uid) -> str | None:
    """"SEG", "PM", "SR", "PDF" for a result object's SOP Class UID, else None."""
    return RESULT_SOP_CLASSES.get(str(sop_class_uid or "").strip())


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def _dataset(source):
    """A pydicom Dataset from a Dataset, an InstanceRecord or a path."""
    import pydicom
    from .header import InstanceRecord, read_dataset
    if isinstance(source, pydicom.Dataset):
        ds = source
    else:
        try:
            if isinstance(source, InstanceRecord):
                ds = read_dataset(source)
            else:
                with open(str(source), "rb") as fh:
                    ds = pydicom.dcmread(fh, force=True)
        except Exception as e:
            raise ResultObjectError(f"cannot read the result object: {_one_line(e)}") from None
    _check_complete(ds)
    return ds


def _check_complete(ds) -> None:
    """Refuse a file that ends inside a value: pydicom reads a truncated file without a word
    (a sequence cut short just has fewer items), and a report or map that lost its end must
    not be shown as if it were whole.  Only values not yet decoded can be checked (a cut
    inside a nested item shortens its top-level element, so those are enough)."""
    from pydicom.dataelem import RawDataElement
    try:
        tags = list(ds.keys())
    except Exception:
        return
    for tag in tags:
        try:
            raw = ds.get_item(tag)
        except Exception:
            continue
        if (isinstance(raw, RawDataElement) and isinstance(raw.value, bytes)
                and raw.length != 0xFFFFFFFF and len(raw.value) < raw.length):
            raise ResultObjectError(f"the file is truncated: element {tag} has {len(raw.value)} of "
                                    f"its {raw.length} bytes")


def referenced_series(ds) -> list[str]:
    """Series UIDs a result object refers to (ReferencedSeriesSequence, SR evidence)."""
    out: list[str] = []

    def add(uid):
        uid = str(uid or "").strip()
        if uid and uid not in out:
            out.append(uid)

    try:
        for item in ds.get("ReferencedSeriesSequence") or []:
            add(item.get("SeriesInstanceUID"))
        for kw in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            for study in ds.get(kw) or []:
                for item in study.get("ReferencedSeriesSequence") or []:
                    add(item.get("SeriesInstanceUID"))
    except Exception:
        pass  # a malformed reference list: the object is listed without links
    return out


# --------------------------------------------------------------------------- placement


def _frame_source_refs(frame_item) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, frame number or None) from a frame's DerivationImageSequence."""
    out = []
    if frame_item is None:
        return out
    for der in frame_item.get("DerivationImageSequence") or []:
        for src in der.get("SourceImageSequence") or []:
            uid = str(src.get("ReferencedSOPInstanceUID") or "")
            fr = src.get("ReferencedFrameNumber")
            if isinstance(fr, (list, tuple)) or (fr is not None and hasattr(fr, "__len__")
                                                  and not isinstance(fr, str)):
                fr = list(fr)[0] if len(fr) else None
            out.append((uid, int(fr) if fr not in (None, "") else None))
    return out


class _Grid:
    """The shown volume's grid: SOP/frame -> slice, and LPS position -> slice."""

    def __init__(self, volume):
        self.volume = volume
        shape = volume.array.shape
        self.n, self.rows, self.cols = int(shape[0]), int(shape[1]), int(shape[2])
        self.by_ref: dict[tuple[str, int], int] = {}
        for k, rec in enumerate(getattr(volume, "headers", []) or []):
            uid = str(rec.get("SOPInstanceUID") or "")
            frames = getattr(volume, "frames", None) or []
            fr = (frames[k] + 1) if k < len(frames) else 1
            self.by_ref[(uid, fr)] = k
        self.sop_uids = {u for u, _ in self.by_ref}
        self.geometric = bool(volume.has_geometry)
        if self.geometric:
            a = np.asarray(volume.affine, float)
            self.affine = a
            try:
                self.inv = np.linalg.inv(a)
            except np.linalg.LinAlgError:
                self.geometric = False
        if self.geometric:
            # Each slice's own first-voxel position: the file's ImagePositionPatient for
            # single-frame slices (exact with uneven gaps, where the affine's mean spacing
            # is not), the affine for frames of a multi-frame file.
            self.ipp = np.array([self.affine @ np.array([0.0, 0.0, k, 1.0]) for k in range(self.n)])[:, :3]
            headers = getattr(volume, "headers", []) or []
            if len(headers) == self.n:
                for k, rec in enumerate(headers):
                    v = rec.get("ImagePositionPatient")
                    if rec.frames == 1 and isinstance(v, list) and len(v) == 3:
                        try:
                            p = np.array([float(x) for x in v])
                        except (TypeError, ValueError):
                            continue
                        if np.all(np.isfinite(p)):
                            self.ipp[k] = p

    def slice_of_ref(self, uid: str, frame: int | None) -> int | None:
        if frame is not None and frame < 1:
            return None  # frame numbers start at 1: 0 is not "the first frame"
        if (uid, frame or 1) in self.by_ref:
            return self.by_ref[(uid, frame or 1)]
        if frame is None:  # a multi-frame source referenced without a frame number
            hits = [k for (u, _), k in self.by_ref.items() if u == uid]
            return hits[0] if len(hits) == 1 else None
        return None

    def slice_of_position(self, ipp) -> tuple[int | None, float]:
        """Slice whose first voxel is nearest to ipp, and the distance in mm."""
        p = np.asarray(ipp, float)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            return None, math.inf
        dist = np.linalg.norm(self.ipp - p[None, :], axis=1)
        k = int(np.argmin(dist))
        return k, float(dist[k])

    def slice_ipp(self, k: int) -> np.ndarray:
        return self.ipp[k]

    def check_orientation(self, iop, what: str) -> None:
        if iop is None or not self.geometric:
            return
        iop = np.asarray([float(v) for v in iop], float)
        if iop.shape != (6,) or not np.all(np.isfinite(iop)):
            raise ResultObjectError(f"{what}: unusable ImageOrientationPatient {iop.tolist()}")
        d = np.asarray(self.volume.direction, float)
        if (np.max(np.abs(iop[:3] - d[:, 0])) > ORIENTATION_TOLERANCE
                or np.max(np.abs(iop[3:] - d[:, 1])) > ORIENTATION_TOLERANCE):
            raise ResultObjectError(f"{what}: orientation {np.round(iop, 5).tolist()} differs from the "
                                    f"series' {np.round(np.r_[d[:, 0], d[:, 1]], 5).tolist()}")

    def check_spacing(self, ps, what: str) -> None:
        if ps is None or not self.volume.spacing_known:
            return
        try:
            row, col = (float(v) for v in ps)
        except Exception:
            raise ResultObjectError(f"{what}: unusable PixelSpacing {ps!r}") from None
        if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
            raise ResultObjectError(f"{what}: unusable PixelSpacing {row:g} x {col:g} mm")
        sx, sy = float(self.volume.spacing[0]), float(self.volume.spacing[1])
        if abs(row - sy) > SPACING_TOLERANCE_MM or abs(col - sx) > SPACING_TOLERANCE_MM:
            raise ResultObjectError(f"{what}: pixel spacing {row:g} x {col:g} mm differs from the "
                                    f"series' {sy:g} x {sx:g} mm")


def _place_frames(ds, volume, what: str) -> list[int]:
    """The source slice of every frame of ds; refuses what does not fit exactly."""
    grid = _Grid(volume)
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if (rows, cols) != (grid.rows, grid.cols):
        raise ResultObjectError(f"{what} is {rows}x{cols} but the series' images are "
                                f"{grid.rows}x{grid.cols}")
    n = int(ds.get("NumberOfFrames") or 1)
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per) not in (0, n):
        raise ResultObjectError(f"{what} has {n} frames but {len(per)} per-frame functional groups")
    grid.check_orientation(_fg(None, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), what)
    grid.check_spacing(_fg(None, shared, "PixelMeasuresSequence", "PixelSpacing"), what)
    # positions mean something only in the frame of reference they were written in (PS3.3
    # C.7.6.2.1.1): an object in another one is not laid on this series by its positions, nor
    # by references that contradict them
    d = _differs("FrameOfReferenceUID", ds.get("FrameOfReferenceUID"), volume)
    if d and grid.geometric:
        raise ResultObjectError(f"{what} is in another frame of reference ({d[1]}) than the series "
                                f"({d[0]}): its positions do not apply here")
    # A series without plane geometry (CR/DX, US) has no positions to lay anything by: an object
    # made on it in a frame of reference of its own (the Parametric Map IOD requires one, so the
    # app's map of a CR has a new one) is placed by its frames' source image references only
    by_ref_only = bool(d)
    out = []
    for f in range(n):
        item = per[f] if per else None
        if item is not None:
            grid.check_orientation(_fg(item, None, "PlaneOrientationSequence", "ImageOrientationPatient"), what)
            grid.check_spacing(_fg(item, None, "PixelMeasuresSequence", "PixelSpacing"), what)
        k_ref = None
        refs = _frame_source_refs(item)
        for uid, fr in refs:
            k_ref = grid.slice_of_ref(uid, fr)
            if k_ref is not None:
                break
        ipp = _fg(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        k_pos, dist = (None, math.inf)
        if ipp is not None and grid.geometric:
            try:
                ipp = np.array([float(v) for v in ipp], float)
            except (TypeError, ValueError):
                ipp = None
            if ipp is None or ipp.shape != (3,) or not np.all(np.isfinite(ipp)):
                raise ResultObjectError(f"{what} frame {f + 1}: unusable ImagePositionPatient")
            k_pos, dist = grid.slice_of_position(ipp)
        if k_ref is not None:
            if ipp is not None and grid.geometric:
                if k_pos != k_ref or dist > POSITION_TOLERANCE_MM:
                    off = float(np.linalg.norm(grid.slice_ipp(k_ref) - ipp))
                    raise ResultObjectError(
                        f"{what} frame {f + 1} references slice {k_ref + 1} but its position is "
                        f"{off:.3g} mm from that slice")
            out.append(k_ref)
        elif ipp is not None and grid.geometric:
            if k_pos is None or dist > POSITION_TOLERANCE_MM:
                raise ResultObjectError(f"{what} frame {f + 1} at {[round(float(v), 3) for v in ipp]} "
                                        "lies on no slice of the series")
            if refs and any(u for u, _ in refs):
                raise ResultObjectError(f"{what} frame {f + 1} references an image that is not in "
                                        "the series")
            out.append(k_pos)
        elif refs:
            raise ResultObjectError(f"{what} frame {f + 1} references an image that is not in the series")
        elif by_ref_only:
            raise ResultObjectError(f"{what} is in another frame of reference ({d[1]}) than the series "
                                    f"({d[0]}) and its frame {f + 1} references no image of the series: "
                                    "cannot place it")
        elif grid.n == 1 and n == 1:
            out.append(0)  # one frame on one image without references or geometry
        else:
            raise ResultObjectError(f"{what} frame {f + 1} has neither a source image reference "
                                    "nor a plane position: cannot place it")
    return out


def _check_series(ds, volume, what: str) -> None:
    refs = referenced_series(ds)
    uid = str(getattr(volume, "series_uid", "") or "")
    if refs and uid and uid not in refs:
        raise ResultObjectError(f"{what} references series {refs[0]}, not the series shown ({uid})")
    why = other_patient(ds.get("PatientID"), volume)
    if why:
        raise ResultObjectError(f"{what} {why}")


def other_patient(patient_id, volume) -> str | None:
    """Why a result object whose Patient ID is ``patient_id`` is not drawn on ``volume`` (a
    different Patient ID from the series'), else None.  A SEG, map, SR or presentation state
    carries the Patient module of the images it was made on: a series UID shared by another
    patient's object (a copied, edited or mis-sent file) must not put that patient's findings
    on this one.  An ID missing on either side cannot be compared (no refusal)."""
    d = _differs("PatientID", patient_id, volume)
    return f"is of another patient (Patient ID {d[1]!r}, the series shown {d[0]!r}): not shown" if d else None


def other_study(study_uid, volume) -> str | None:
    """A warning when a result object's StudyInstanceUID is not the series' (it may still be
    about these images: shown, and said), else None."""
    d = _differs("StudyInstanceUID", study_uid, volume)
    return f"it belongs to another study ({d[1]}) than the series shown" if d else None


def _differs(keyword: str, theirs, volume) -> tuple[str, str] | None:
    """(the series' value, the object's) of ``keyword`` when both are given and differ, else None
    (a value missing on either side cannot be compared); each cut to 64 characters."""
    headers = getattr(volume, "headers", None) or []
    mine = str(headers[0].get(keyword) or "").strip() if headers else ""
    theirs = str(theirs or "").strip()
    return (mine[:64], theirs[:64]) if mine and theirs and mine != theirs else None


def _decoded_pixels(ds, what: str, itemsize: int) -> np.ndarray:
    n = int(ds.get("NumberOfFrames") or 1)
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or cols < 1 or n < 1:
        raise ResultObjectError(f"{what} has no frames ({n} frames of {rows}x{cols})")
    need = n * rows * cols * itemsize
    if need > MAX_RESULT_BYTES:
        raise ResultObjectError(f"{what} would need {need / 1024**3:.1f} GiB for {n} frames of "
                                f"{rows}x{cols} (limit {MAX_RESULT_BYTES / 1024**3:.0f} GiB)")
    try:
        from pydicom.pixels import pixel_array
        arr = pixel_array(ds)
    except Exception as e:
        raise ResultObjectError(f"{what}: pixel data unreadable: {_one_line(e)}") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (n, rows, cols):
        raise ResultObjectError(f"{what}: pixel data is {arr.shape}, expected {n} frames of {rows}x{cols}")
    return arr


# --------------------------------------------------------------------------- SEG
@dataclass
class SegmentInfo:
    number: int
    label: str
    category: str = ""
    type: str = ""
    algorithm: str = ""  # "AUTOMATIC/SEMIAUTOMATIC/MANUAL[: name version]"
    color: tuple[int, int, int] | None = None
    voxels: int = 0

    def to_dict(self) -> dict:
        return {"number": self.number, "label": self.label, "category": self.category,
                "type": self.type, "algorithm": self.algorithm, "voxels": self.voxels}


@dataclass
class Segmentation:
    """A SEG on its source series' grid (``[k, j, i]`` like ``Volume.array``)."""

    description: str
    series_uid: str
    segmentation_type: str  # BINARY, FRACTIONAL, LABELMAP
    segments: list[SegmentInfo]
    shape: tuple[int, int, int]
    # per segment: {slice k: 2-D float32 fraction in [0, 1]} (bool for binary and label maps)
    _frames: dict[int, dict[int, np.ndarray]] = field(repr=False, default_factory=dict)
    overlaps: dict[tuple[int, int], int] = field(default_factory=dict)  # (a, b) -> voxels
    warnings: list[str] = field(default_factory=list)

    @property
    def fractional(self) -> bool:
        return self.segmentation_type == "FRACTIONAL"

    def fraction(self, number: int) -> np.ndarray:
        """Segment ``number``'s stored value on the grid (0..1 float32; 1 for binary)."""
        out = np.zeros(self.shape, np.float32)
        for k, f in self._frames.get(number, {}).items():
            out[k] = np.maximum(out[k], f.astype(np.float32, copy=False))
        return out

    def mask(self, number: int) -> np.ndarray:
        """Segment ``number`` on the grid: fractional values >= 0.5 (binary as stored)."""
        out = np.zeros(self.shape, bool)
        for k, f in self._frames.get(number, {}).items():
            out[k] |= f >= 0.5
        return out

    def label_map(self) -> np.ndarray:
        """Segment numbers on the grid (uint16, 0 = none); refused when segments overlap."""
        if self.overlaps:
            raise ResultObjectError("segments overlap: one label map would hide some of them "
                                    "(use one mask per segment)")
        out = np.zeros(self.shape, np.uint16)
        for s in self.segments:
            for k, f in self._frames.get(s.number, {}).items():
                out[k][f >= 0.5] = s.number
        return out

    def layers(self) -> list:
        """imaging_assist.layers layers: one label map of the segments that do not overlap,
        and one layer of its own for each segment that overlaps another."""
        from ..layers import LabelLayer
        name = self.description or "Segmentation"
        overlapping = {n for pair in self.overlaps for n in pair}
        if len(overlapping) > MAX_OVERLAP_LAYERS:
            raise ResultObjectError(f"{len(overlapping)} segments overlap each other: more than "
                                    f"{MAX_OVERLAP_LAYERS} layers would be needed to show them apart")
        dtype = np.uint8 if max((s.number for s in self.segments), default=0) < 256 else np.uint16
        out = []
        rest = [s for s in self.segments if s.number not in overlapping]
        if rest:
            lm = np.zeros(self.shape, dtype)
            for s in rest:
                for k, f in self._frames.get(s.number, {}).items():
                    lm[k][f >= 0.5] = s.number
            out.append(LabelLayer(name, lm, names={s.number: s.label for s in rest}))
        for s in self.segments:
            if s.number in overlapping:
                arr = self.mask(s.number).astype(dtype) * dtype(s.number)
                out.append(LabelLayer(f"{name}: {s.label}", arr, names={s.number: s.label}))
        return out

    def to_dict(self) -> dict:
        return {"kind": SEG, "description": self.description, "series_uid": self.series_uid,
                "segmentation_type": self.segmentation_type,
                "segments": [s.to_dict() for s in self.segments],
                "overlaps": [{"segments": list(k), "voxels": v} for k, v in self.overlaps.items()],
                "warnings": list(self.warnings)}


def _code_meaning(item, seq: str) -> str:
    try:
        s = item.get(seq)
        return str(s[0].get("CodeMeaning") or s[0].get("CodeValue") or "") if s else ""
    except Exception:
        return ""


def _segment_infos(ds, what: str, labelmap: bool = False) -> list[SegmentInfo]:
    seq = ds.get("SegmentSequence") or []
    if len(seq) == 0:
        raise ResultObjectError(f"{what} has no segments (empty SegmentSequence)")
    if len(seq) > MAX_SEGMENTS:
        raise ResultObjectError(f"{what} declares {len(seq)} segments (limit {MAX_SEGMENTS})")
    out, seen = [], set()
    for item in seq:
        try:
            num = int(item.SegmentNumber)
        except Exception:
            raise ResultObjectError(f"{what}: a segment has no usable SegmentNumber") from None
        if num == 0 and labelmap and 0 not in seen:
            seen.add(0)  # a label map's background, described by some writers
            continue
        if num < 1 or num > 65535 or num in seen:
            raise ResultObjectError(f"{what}: segment number {num} is invalid or repeated")
        seen.add(num)
        alg = str(item.get("SegmentAlgorithmType") or "")
        if item.get("SegmentAlgorithmName"):
            alg += f": {item.SegmentAlgorithmName}"
        label = str(item.get("SegmentLabel") or "") or _code_meaning(item, "SegmentedPropertyTypeCodeSequence") \
            or f"segment {num}"
        out.append(SegmentInfo(number=num, label=label,
                               category=_code_meaning(item, "SegmentedPropertyCategoryCodeSequence"),
                               type=_code_meaning(item, "SegmentedPropertyTypeCodeSequence"),
                               algorithm=alg))
    return out


def read_segmentation(source, volume) -> Segmentation:
    """Read a SEG (path, InstanceRecord or Dataset) onto ``volume``'s grid.

    Frames are matched to the volume's slices by referenced SOP Instance UID (and frame)
    and by plane position; both, where present, must agree within
    POSITION_TOLERANCE_MM, and orientation/pixel spacing/size must match the volume.
    Fractional values are divided by MaximumFractionalValue and kept; masks threshold
    them at 0.5.  Raises ResultObjectError with a one-line reason.
    """
    ds = _dataset(source)
    what = "the segmentation"
    try:
        return _read_segmentation(ds, volume, what)
    except ResultObjectError:
        raise
    except Exception as e:  # a malformed attribute no check foresaw: still one line
        raise ResultObjectError(f"{what} is malformed: {type(e).__name__}: {_one_line(e)}") from None


def _read_segmentation(ds, volume, what) -> Segmentation:
    if result_kind(ds.get("SOPClassUID")) != SEG:
        raise ResultObjectError(f"not a segmentation (SOP Class {ds.get('SOPClassUID', 'missing')})")
    if volume.array.ndim != 3:
        raise ResultObjectError(f"{what} cannot be laid on a colour image")
    _check_series(ds, volume, what)
    seg_type = str(ds.get("SegmentationType") or "").upper()
    segments = _segment_infos(ds, what, labelmap=seg_type == "LABELMAP")
    if not segments:
        raise ResultObjectError(f"{what} describes only a background")
    by_number = {s.number: s for s in segments}
    if seg_type not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise ResultObjectError(f"{what}: SegmentationType {seg_type or 'missing'} is not supported "
                                "(BINARY, FRACTIONAL or LABELMAP)")
    labelmap = seg_type == "LABELMAP"  # one frame per slice, pixel value = segment number
    n_frames = int(ds.get("NumberOfFrames") or 1)
    grid_shape = tuple(int(v) for v in volume.array.shape)
    if n_frames > grid_shape[0] * (1 if labelmap else len(segments)):
        raise ResultObjectError(f"{what} has {n_frames} frames, more than {grid_shape[0]} slices x "
                                f"{len(segments)} segments")
    slices = _place_frames(ds, volume, what)
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    seg_of_frame = []
    for f in range(0 if labelmap else n_frames):
        v = _fg(per[f] if per else None, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        try:
            num = int(v)
        except Exception:
            raise ResultObjectError(f"{what} frame {f + 1} names no segment") from None
        if num not in by_number:
            raise ResultObjectError(f"{what} frame {f + 1} refers to segment {num}, which is not described")
        seg_of_frame.append(num)
    bits = {"BINARY": (1,), "FRACTIONAL": (8,), "LABELMAP": (8, 16)}[seg_type]
    if int(ds.get("BitsAllocated") or 0) not in bits:
        raise ResultObjectError(f"{what}: BitsAllocated {ds.get('BitsAllocated')} for a {seg_type} "
                                "segmentation")
    arr = _decoded_pixels(ds, what, int(ds.BitsAllocated) // 8 or 1)
    maxv = 1.0
    if seg_type == "FRACTIONAL":
        maxv = float(ds.get("MaximumFractionalValue") or 0)
        if not (math.isfinite(maxv) and 1 <= maxv <= 255):
            raise ResultObjectError(f"{what}: MaximumFractionalValue {ds.get('MaximumFractionalValue')} "
                                    "(1..255 expected)")
    frames: dict[int, dict[int, np.ndarray]] = {s.number: {} for s in segments}
    if labelmap:
        if len(set(slices)) != len(slices):
            raise ResultObjectError(f"{what}: two frames on one slice")
        unknown = sorted(set(np.unique(arr).tolist()) - set(by_number) - {0})
        if unknown:
            raise ResultObjectError(f"{what}: pixel values {unknown[:5]} name no described segment")
        for f, k in enumerate(slices):
            for num in np.unique(arr[f]).tolist():
                if num:
                    frames[num][k] = arr[f] == num
    for f, (k, num) in enumerate(zip(slices, seg_of_frame)):
        if k in frames[num]:
            raise ResultObjectError(f"{what}: segment {num} has two frames on slice {k + 1}")
        if seg_type == "FRACTIONAL":
            v = np.minimum(arr[f].astype(np.float32) / np.float32(maxv), np.float32(1.0))
        else:
            v = arr[f] != 0  # binary: kept as bool (a quarter of float32's memory)
        if v.any():
            frames[num][k] = v
    result = Segmentation(description=str(ds.get("SeriesDescription") or ds.get("ContentLabel") or ""),
                          series_uid=str(ds.get("SeriesInstanceUID") or ""),
                          segmentation_type=seg_type, segments=segments,
                          shape=grid_shape, _frames=frames)
    # Voxel counts and overlaps, slice by slice (no full-volume copy per segment).
    nums = [s.number for s in segments]
    for s in segments:
        s.voxels = int(sum(int(np.count_nonzero(f >= 0.5)) for f in frames[s.number].values()))
    ks = sorted({k for d in frames.values() for k in d})
    for k in ks:
        present = [(n, frames[n][k] >= 0.5) for n in nums if k in frames[n]]
        if len(present) < 2:
            continue
        for i in range(len(present)):
            for j in range(i + 1, len(present)):
                c = int(np.count_nonzero(present[i][1] & present[j][1]))
                if c:
                    key = (present[i][0], present[j][0])
                    result.overlaps[key] = result.overlaps.get(key, 0) + c
    if result.overlaps:
        pairs = ", ".join(f"{by_number[a].label} / {by_number[b].label} ({v} voxels)"
                          for (a, b), v in sorted(result.overlaps.items())[:5])
        more = len(result.overlaps) - 5
        result.warnings.append(f"segments overlap: {pairs}{f' and {more} more pairs' if more > 0 else ''}; "
                               "each overlapping segment is shown as a layer of its own")
    study = other_study(ds.get("StudyInstanceUID"), volume)
    if study:
        result.warnings.append(study)
    return result


# --------------------------------------------------------------------------- Parametric Map
#: ImageComments of a heat map the engine flagged (``explain.flags``), written by
#: ``export.parametric_map``: the viewer that reopens the map hides it with the reasons, as the run did
FLAGGED_PREFIX = "AI heat map flagged by Imaging Assist, not to be trusted as an explanation: "


@dataclass
class ParametricMap:
    description: str
    series_uid: str
    array: np.ndarray  # float32 on the source grid; NaN where the map has no frame
    units: str = ""
    label: str = ""
    warnings: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # the writer's reasons not to trust it (ours)

    def layer(self):
        from ..layers import HeatmapLayer
        # NaN (slices the map does not cover) stays NaN: transparent, never a colour for 0
        layer = HeatmapLayer(self.description or self.label or "Parametric map", self.array,
                             units=self.units if self.units not in ("no units", "1") else "")
        layer.set_flags(self.flags)  # hidden with the reasons, as in the run that wrote it
        return layer

    def to_dict(self) -> dict:
        finite = self.array[np.isfinite(self.array)]
        rng = [float(finite.min()), float(finite.max())] if finite.size else None
        return {"kind": PARAMETRIC_MAP, "description": self.description, "series_uid": self.series_uid,
                "label": self.label, "units": self.units, "value_range": rng,
                "warnings": list(self.warnings), "flags": list(self.flags)}


def read_parametric_map(source, volume) -> ParametricMap:
    """Read a Parametric Map onto ``volume``'s grid, in real-world values (float32)."""
    ds = _dataset(source)
    what = "the parametric map"
    try:
        return _read_parametric_map(ds, volume, what)
    except ResultObjectError:
        raise
    except Exception as e:
        raise ResultObjectError(f"{what} is malformed: {type(e).__name__}: {_one_line(e)}") from None


def _read_parametric_map(ds, volume, what) -> ParametricMap:
    if result_kind(ds.get("SOPClassUID")) != PARAMETRIC_MAP:
        raise ResultObjectError(f"not a parametric map (SOP Class {ds.get('SOPClassUID', 'missing')})")
    if volume.array.ndim != 3:
        raise ResultObjectError(f"{what} cannot be laid on a colour image")
    _check_series(ds, volume, what)
    n = int(ds.get("NumberOfFrames") or 1)
    grid_shape = tuple(int(v) for v in volume.array.shape)
    if n > grid_shape[0]:
        raise ResultObjectError(f"{what} has {n} frames for {grid_shape[0]} slices")
    slices = _place_frames(ds, volume, what)
    # by placement, not by what a slice holds: a first frame of NaN (nothing computed there)
    # would otherwise let a second frame take its slice unnoticed
    twice = sorted({k for k in slices if slices.count(k) > 1})
    if twice:
        raise ResultObjectError(f"{what}: two frames on slice {twice[0] + 1}")
    itemsize = 8 if "DoubleFloatPixelData" in ds else 4 if "FloatPixelData" in ds else \
        max(1, int(ds.get("BitsAllocated") or 8) // 8)
    arr = _decoded_pixels(ds, what, itemsize)
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    out = np.full(grid_shape, np.nan, np.float32)
    units = label = ""
    for f, k in enumerate(slices):
        item = per[f] if per else None
        rwvm = None
        for it in (item, shared):
            if it is not None and it.get("RealWorldValueMappingSequence"):
                rwvm = it.RealWorldValueMappingSequence[0]
                break
        vals = arr[f].astype(np.float64)
        if rwvm is not None:
            if rwvm.get("RealWorldValueSlope") is None or rwvm.get("RealWorldValueIntercept") is None:
                if "RealWorldValueLUTData" in rwvm:
                    raise ResultObjectError(f"{what}: a real-world value LUT is not supported "
                                            "(slope/intercept only)")
                # never a guessed 1 / 0: the stored values are not the real-world values
                raise ResultObjectError(f"{what} frame {f + 1}: the real-world value mapping has no "
                                        "slope/intercept")
            slope = float(rwvm.RealWorldValueSlope)
            icpt = float(rwvm.RealWorldValueIntercept)
            if not (math.isfinite(slope) and math.isfinite(icpt)) or slope == 0:
                raise ResultObjectError(f"{what}: real-world value slope {slope} / intercept {icpt}")
            vals = vals * slope + icpt
            units = units or _code_meaning(rwvm, "MeasurementUnitsCodeSequence")
            label = label or str(rwvm.get("LUTExplanation") or rwvm.get("LUTLabel") or "")
        elif not ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds):
            raise ResultObjectError(f"{what} frame {f + 1} has no real-world value mapping")
        out[k] = vals.astype(np.float32)
    pm = ParametricMap(description=str(ds.get("SeriesDescription") or ds.get("ContentLabel") or ""),
                       series_uid=str(ds.get("SeriesInstanceUID") or ""), array=out,
                       units=units, label=label)
    comments = str(ds.get("ImageComments") or "")
    if FLAGGED_PREFIX in comments:  # a map Imaging Assist wrote flagged (explain/flags.py)
        pm.flags = [r.strip() for r in comments.split(FLAGGED_PREFIX, 1)[1].split(" | ") if r.strip()][:20]
    bad = int(np.count_nonzero(np.isinf(out)))
    if bad:
        pm.warnings.append(f"{bad} infinite values in the parametric map")
    study = other_study(ds.get("StudyInstanceUID"), volume)
    if study:
        pm.warnings.append(study)
    return pm


# --------------------------------------------------------------------------- SR
@dataclass
class SRRegion:
    """A usable SCOORD (image pixels, first pixel's centre at (0.5, 0.5)) or SCOORD3D (LPS mm)
    region of an SR: where a measurement group's region is drawn
    (:func:`imaging_assist.dicom.sr_regions.place_regions`)."""

    graphic_type: str  # POINT, MULTIPOINT, POLYLINE, CIRCLE, ELLIPSE (2D); POLYGON, ELLIPSOID (3D)
    points: list[tuple[float, ...]]  # (column, row) or (x, y, z)
    dims: int  # 2 or 3
    references: list[tuple[str, int | None]] = field(default_factory=list)  # 2D: its images
    frame_of_reference: str = ""  # 3D
    key: int = 0  # one region seen by the several items of its group has one key

    def to_dict(self) -> dict:
        return {"graphic_type": self.graphic_type, "dims": self.dims,
                "points": [list(p) for p in self.points],
                "references": [list(r) for r in self.references],
                "frame_of_reference": self.frame_of_reference}


@dataclass
class SRItem:
    """One finding or measurement of an SR, with the images it refers to."""

    kind: str  # "measurement", "finding", "text"
    name: str
    value: str  # number as text, coded meaning, or text
    unit: str = ""
    group: str = ""  # the measurement group / container it is in (tracking id when given)
    number: float | None = None
    references: list[tuple[str, int | None]] = field(default_factory=list)  # (SOP UID, frame)
    point_lps: tuple[float, float, float] | None = None  # first SCOORD3D point
    frame_of_reference: str = ""  # the point's Referenced Frame of Reference UID
    regions: list[SRRegion] = field(default_factory=list)  # its own or its group's regions

    def text(self) -> str:
        v = f"{self.value} {self.unit}".strip()
        g = f"{self.group}: " if self.group else ""
        return f"{g}{self.name} = {v}" if self.name else f"{g}{v}"

    def slice_in(self, volume, grid: "_Grid | None" = None) -> int | None:
        """The slice of ``volume`` this item refers to, or None: by image reference (frame
        numbers from 1), else by its 3D point's level when the point is in the volume's frame
        of reference and within half the largest slice gap of a slice.  ``grid``: the volume's
        slice table when the caller asks for many items (:meth:`StructuredReport.slices_in`)."""
        grid = grid if grid is not None and grid.volume is volume else _Grid(volume)
        for uid, fr in self.references:
            k = grid.slice_of_ref(uid, fr)
            if k is not None:
                return k
        if self.point_lps is not None and grid.geometric:
            # a point in another frame of reference is no position in this series
            headers = getattr(volume, "headers", None) or []
            vol_for = str(headers[0].get("FrameOfReferenceUID") or "") if headers else ""
            if self.frame_of_reference and vol_for and self.frame_of_reference != vol_for:
                return None
            # the slice whose plane is nearest (each slice's own position: uneven gaps)
            p = np.asarray(self.point_lps, float)
            n = np.asarray(volume.normal, float)
            d = np.abs((p[None, :] - grid.ipp) @ n)
            k = int(np.argmin(d))
            gaps = np.abs(np.diff(grid.ipp @ n))
            half = (float(np.max(gaps)) if gaps.size else float(volume.spacing[2])) / 2
            if d[k] <= max(half, POSITION_TOLERANCE_MM):
                return k  # the slice at the point's level (in plane it may lie beside the image)
        return None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "value": self.value, "unit": self.unit,
                "group": self.group, "references": [list(r) for r in self.references],
                "point_lps": list(self.point_lps) if self.point_lps else None,
                "regions": [r.to_dict() for r in self.regions]}


# Spatial coordinates (PS3.3 C.18.6 / C.18.9): graphic type -> (fewest, most) points.
_GRAPHIC_POINTS = {
    "SCOORD": {"POINT": (1, 1), "MULTIPOINT": (1, None), "POLYLINE": (2, None), "CIRCLE": (2, 2),
               "ELLIPSE": (4, 4)},
    "SCOORD3D": {"POINT": (1, 1), "MULTIPOINT": (1, None), "POLYLINE": (2, None), "POLYGON": (3, None),
                 "ELLIPSE": (4, 4), "ELLIPSOID": (6, 6)},
}


#: Graphic data values read from one item at most (6 x the 20,000 points a region may have to be
#: drawn): a hostile file's millions of coordinates are refused from their byte length, before
#: anything is converted.
MAX_GRAPHIC_VALUES = 120_000


def graphic_values(item) -> list | str:
    """The GraphicData of ``item`` as floats, or why they cannot be used (a string).

    Above 65,534 bytes (8,191 points in 2D) an FL value cannot be written with Explicit VR, so
    pydicom writes and reads it as UN: raw little-endian float32 bytes (PS3.5 6.2.2), which
    were taken one byte per coordinate. Those bytes are decoded as FL here, and the number of
    values is checked from the byte length before any conversion."""
    elem = item.get_item("GraphicData") if hasattr(item, "get_item") else None
    if elem is None:
        return []
    raw = elem.value
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) % 4:
            return f"graphic data of {len(raw)} bytes (not 32-bit floats)"
        if len(raw) // 4 > MAX_GRAPHIC_VALUES:
            return f"{len(raw) // 4} graphic data values (over {MAX_GRAPHIC_VALUES})"
        little = getattr(elem, "is_little_endian", True)
        return np.frombuffer(raw, "<f4" if little is not False else ">f4").astype(float).tolist()
    data = item.get("GraphicData")
    if isinstance(data, (int, float)):
        return [float(data)]  # one value (pydicom gives a single number, not a list)
    if data is not None and len(data) > MAX_GRAPHIC_VALUES:
        return f"{len(data)} graphic data values (over {MAX_GRAPHIC_VALUES})"
    try:
        return [float(v) for v in (data if data is not None else [])]
    except (TypeError, ValueError):
        return "graphic data that are not numbers"


def _scoord_problem(item, vt: str) -> str | None:
    """Why an SCOORD / SCOORD3D item's coordinates are unusable, or None."""
    dims = 3 if vt == "SCOORD3D" else 2
    gtype = str(item.get("GraphicType") or "").strip().upper()
    if gtype not in _GRAPHIC_POINTS[vt]:
        return f"graphic type {gtype[:16] or 'missing'}"
    values = graphic_values(item)
    if isinstance(values, str):
        return values
    if not values or len(values) % dims:
        return f"{len(values)} graphic data values (not a multiple of {dims})"
    if not all(math.isfinite(v) for v in values):
        return "coordinates that are not finite"
    lo, hi = _GRAPHIC_POINTS[vt][gtype]
    n = len(values) // dims
    if n < lo or (hi is not None and n > hi):
        return f"{n} points for a {gtype}"
    return None


def _sop_refs(image_item) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, frame number or None) of an IMAGE content item."""
    refs = []
    for r in image_item.get("ReferencedSOPSequence") or []:
        fr = r.get("ReferencedFrameNumber")
        if fr is not None and not isinstance(fr, (int, str)):
            fr = list(fr)[0] if len(fr) else None
        refs.append((str(r.get("ReferencedSOPInstanceUID") or ""), int(fr) if fr not in (None, "") else None))
    return refs


def _region_of(item, vt: str, for_uid: str, key: int) -> SRRegion:
    """The region of an SCOORD / SCOORD3D item that :func:`_scoord_problem` passed."""
    dims = 3 if vt == "SCOORD3D" else 2
    values = graphic_values(item)  # checked by _scoord_problem: a list
    pts = [tuple(values[i:i + dims]) for i in range(0, len(values), dims)]
    refs = []
    if dims == 2:  # the images the coordinates are on: the SCOORD's own IMAGE items
        for c in item.get("ContentSequence") or []:
            if str(c.get("ValueType") or "") == "IMAGE":
                refs += _sop_refs(c)
    return SRRegion(str(item.GraphicType).strip().upper(), pts, dims, refs,
                    for_uid if dims == 3 else "", key)


@dataclass
class StructuredReport:
    title: str
    series_uid: str
    items: list[SRItem]
    warnings: list[str] = field(default_factory=list)
    patient_id: str = ""  # of the images it reports on (its Patient module): other_patient()
    study_uid: str = ""

    def slices_in(self, volume) -> list[int | None]:
        """:meth:`SRItem.slice_in` of every item, the volume's slice table built once (an SR of
        hundreds of items on a long series listed without a pause)."""
        grid = _Grid(volume)
        return [it.slice_in(volume, grid) for it in self.items]

    def to_dict(self) -> dict:
        return {"kind": SR, "title": self.title, "series_uid": self.series_uid,
                "items": [i.to_dict() for i in self.items], "warnings": list(self.warnings)}


_SKIP_CONTAINERS = {"image library", "image library group"}
# UCUM codes shown as a reader expects them (others: the code when short, else its meaning).
_UCUM_SHOWN = {"[hnsf'U]": "HU", "1": "", "{ratio}": "", "%": "%", "mm2": "mm²", "cm2": "cm²",
               "mm3": "mm³", "cm3": "cm³", "ml": "mL", "mL": "mL"}


def read_sr(source) -> StructuredReport:
    """Findings and measurements of any SR (TID 1500 and others), with their image references.

    A generic walk of the content tree (pydicom), not highdicom's TID 1500 parser: it must
    also list SRs of other templates.  NUM items are measurements, CODE items findings,
    TEXT items text; the IMAGE and SCOORD/SCOORD3D items of an item and of its enclosing
    group are its references.  Observer context and concept modifiers are not listed.
    A measurement without a finite value is left out and a missing unit said (warnings); a
    region whose coordinates are unusable (not finite, a count or graphic type that does not
    fit, an SCOORD3D without its frame of reference) is said and places nothing.  A file that
    ends inside a value is refused (pydicom would read it as a shorter report).
    """
    ds = _dataset(source)
    try:
        return _read_sr(ds)
    except ResultObjectError:
        raise
    except RecursionError:
        raise ResultObjectError("the structured report is nested too deeply") from None
    except Exception as e:
        raise ResultObjectError(f"the structured report is malformed: {type(e).__name__}: "
                                f"{_one_line(e)}") from None


def _read_sr(ds) -> StructuredReport:
    if result_kind(ds.get("SOPClassUID")) != SR:
        raise ResultObjectError(f"not a structured report (SOP Class {ds.get('SOPClassUID', 'missing')})")
    items: list[SRItem] = []
    count = [0]
    report = StructuredReport(title=_code_meaning(ds, "ConceptNameCodeSequence") or "Structured report",
                              series_uid=str(ds.get("SeriesInstanceUID") or ""), items=items,
                              patient_id=str(ds.get("PatientID") or ""),
                              study_uid=str(ds.get("StudyInstanceUID") or ""))

    checked: dict[int, tuple] = {}  # id(SCOORD item) -> (problem or None, frame of reference, region)

    def warn(text: str) -> None:
        if text not in report.warnings:
            report.warnings.append(text)

    def refs_of(item, name: str) -> tuple[list[tuple[str, int | None]], tuple | None, list[SRRegion]]:
        """Image references, a 3D point (with its frame of reference) and the usable regions
        held by item itself or its direct children."""
        refs, point, regions = [], None, []
        stack = [(item, 0)]
        while stack:
            it, d = stack.pop()
            vt = str(it.get("ValueType") or "")
            if vt == "IMAGE":
                refs += _sop_refs(it)
            elif vt in ("SCOORD", "SCOORD3D"):
                if id(it) not in checked:  # a group's region is seen again as its own item
                    why = _scoord_problem(it, vt)
                    for_uid = str(it.get("ReferencedFrameOfReferenceUID") or "").strip()
                    if why is None and vt == "SCOORD3D" and not for_uid:
                        why = "no frame of reference"
                    region = None
                    if why:
                        warn(f"{name or 'an item'}: image region with {why}: its coordinates are not used")
                    else:
                        region = _region_of(it, vt, for_uid, len(checked) + 1)
                    checked[id(it)] = (why, for_uid, region)
                why, for_uid, region = checked[id(it)]
                if region is not None and all(r.key != region.key for r in regions):
                    regions.append(region)
                if why is None and vt == "SCOORD3D" and point is None:
                    # graphic_values: a long outline's GraphicData is raw UN bytes (checked by _scoord_problem)
                    point = (tuple(float(v) for v in graphic_values(it)[:3]), for_uid)
            if d < 2 and (vt in ("SCOORD", "SCOORD3D") or d == 0):
                for c in it.get("ContentSequence") or []:
                    cvt = str(c.get("ValueType") or "")
                    if cvt in ("IMAGE", "SCOORD", "SCOORD3D"):
                        stack.append((c, d + 1))
        return refs, point, regions

    def visit(seq, depth: int, group: str, inherited, inh_point, inh_regions):
        if depth > MAX_SR_DEPTH:
            raise ResultObjectError(f"the structured report is nested deeper than {MAX_SR_DEPTH} levels")
        for it in seq or []:
            count[0] += 1
            if count[0] > MAX_SR_ITEMS:
                raise ResultObjectError(f"the structured report has more than {MAX_SR_ITEMS} content items")
            rel = str(it.get("RelationshipType") or "")
            if rel in ("HAS OBS CONTEXT", "HAS CONCEPT MOD", "HAS ACQ CONTEXT"):
                continue
            vt = str(it.get("ValueType") or "")
            name = _code_meaning(it, "ConceptNameCodeSequence")
            if vt == "CONTAINER":
                if name.lower() in _SKIP_CONTAINERS:
                    continue
                g = group
                for c in it.get("ContentSequence") or []:
                    if _code_meaning(c, "ConceptNameCodeSequence").lower() == "tracking identifier":
                        g = str(c.get("TextValue") or "") or g
                if depth > 0 and g == group and name and name.lower() not in ("imaging measurements",):
                    g = name
                refs, point, regions = refs_of(it, g or name)
                visit(it.get("ContentSequence"), depth + 1, g, refs or inherited, point or inh_point,
                      regions or inh_regions)
                continue
            refs, point, regions = refs_of(it, f"{group}: {name}" if group else name)
            refs = refs or list(inherited)
            point = point or inh_point
            regions = regions or list(inh_regions)
            pt, for_uid = point if point else (None, "")
            if vt == "NUM":
                mv = (it.get("MeasuredValueSequence") or [None])[0]
                if mv is None:
                    report.warnings.append(f"measurement {name or '(unnamed)'} has no value: left out")
                    continue
                try:
                    num = float(mv.get("NumericValue"))
                except (TypeError, ValueError):
                    report.warnings.append(f"measurement {name or '(unnamed)'} has no numeric value: left out")
                    continue
                if not math.isfinite(num):
                    report.warnings.append(f"measurement {name or '(unnamed)'} is not a finite number: left out")
                    continue
                unit = _code_meaning(mv, "MeasurementUnitsCodeSequence")
                unit_code = ""
                try:
                    unit_code = str(mv.MeasurementUnitsCodeSequence[0].CodeValue)
                except Exception:
                    pass
                if not unit_code.strip() and not unit.strip():
                    report.warnings.append(f"measurement {name or '(unnamed)'} has no unit")
                shown_unit = _UCUM_SHOWN.get(unit_code, unit_code if 0 < len(unit_code) <= 6 else unit)
                items.append(SRItem("measurement", name, f"{num:g}", shown_unit, group, num, refs, pt, for_uid,
                                    regions))
            elif vt == "CODE":
                if name.lower() in ("finding category", "finding site"):
                    continue  # qualifiers of a group, not findings
                items.append(SRItem("finding", name, _code_meaning(it, "ConceptCodeSequence"), "",
                                    group, None, refs, pt, for_uid, regions))
            elif vt == "TEXT":
                if name.lower() in ("tracking identifier",):
                    continue
                items.append(SRItem("text", name, str(it.get("TextValue") or ""), "", group, None,
                                    refs, pt, for_uid, regions))
            if vt not in ("CONTAINER",) and it.get("ContentSequence"):
                visit([c for c in it.ContentSequence if str(c.get("ValueType") or "") in
                       ("NUM", "CODE", "TEXT", "CONTAINER")], depth + 1, group, refs, point, regions)

    visit(ds.get("ContentSequence"), 0, "", [], None, [])
    if not items:
        report.warnings.append("the structured report holds no findings or measurements")
    report.warnings = [_short_line(w) for w in report.warnings]  # names may hold line breaks
    return report


def read_result(source, volume=None):
    """Segmentation, ParametricMap, StructuredReport or PresentationState for any supported
    result object."""
    ds = _dataset(source)
    try:
        kind = result_kind(ds.get("SOPClassUID"))
    except Exception as e:  # an element pydicom cannot decode (a corrupt VR): still one line
        raise ResultObjectError(f"the result object is malformed: {type(e).__name__}: {_one_line(e)}") from None
    if kind == SR:
        return read_sr(ds)
    if kind in (SEG, PARAMETRIC_MAP, PR):
        if volume is None:
            raise ResultObjectError(f"a {KIND_NAMES[kind]} needs the series it refers to")
        if kind == PR:
            from .presentation_state import read_presentation_state  # it imports this module
            return read_presentation_state(ds, volume)
        return read_segmentation(ds, volume) if kind == SEG else read_parametric_map(ds, volume)
    if kind == PDF:
        raise ResultObjectError("an encapsulated PDF is a document, not an overlay")
    raise ResultObjectError(f"not a result object (SOP Class {ds.get('SOPClassUID', 'missing')})")
