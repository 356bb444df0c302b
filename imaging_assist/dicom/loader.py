"""Assemble one indexed series into a :class:`~imaging_assist.volume.Volume`.

Geometry rules (the same as dcm2niix / ITK's GDCM reader, plus the warnings they print):

* slices are sorted by their position along the slice normal (cross product of the
  ImageOrientationPatient row and column cosines), never by InstanceNumber or name;
* the slice spacing comes from those positions, not from SliceThickness;
* uneven gaps and gantry tilt are detected and reported as warnings; a tilted stack
  keeps its true (sheared) slice direction so the affine stays exact;
* rescale slope/intercept (per frame for enhanced objects) and the Modality LUT are
  applied, so values are in modality units (HU for CT).

Nothing loads silently wrong (issue 12): non-finite or zero rescale, Rows/Columns that do
not match the pixel data, an unknown PhotometricInterpretation -> LoadError; an unusable
PixelSpacing -> ``spacing_source`` "none" (lengths in pixels); unusable or missing
ImageOrientationPatient / ImagePositionPatient -> no 3D geometry; each with a warning
naming the attribute.  Where the pixel size comes from follows PS3.3 10.7.1.3
(``Volume.spacing_source``).  Every decoder call is guarded: a decoder exception, a Rust
panic (a BaseException) or a crashed worker process becomes a one-line LoadError naming
the file and frame.

Uncompressed little-endian slices are read straight from disk into the volume with
``numpy.fromfile`` at the offset the header walk found; everything else is decoded by
pydicom with the pylibjpeg plugins, on a thread pool.  Both open the file only after
checking it is still the one scanned (``InstanceRecord.file_identity``; for a zip member its
size and CRC-32, ``member_crc``): a file changed since is refused in one line ("changed since
it was indexed"), never read at a stale offset.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..errors import UserError
from ..volume import Volume
from .. import display
from .header import EXPLICIT_LE, IMPLICIT_LE, HeaderError, InstanceRecord, open_regular, read_dataset
from .header import functional_group_value as _fg
from .index import MAX_SERIES_BYTES, SeriesInfo, check_record

POSITION_TOL_MM = 0.01  # positions closer than this are "the same position"
PIXEL_SPACING_RANGE_MM = (1e-4, 100.0)  # a pixel size outside this is not believed
MAX_POSITION_MM = 1e6  # |ImagePositionPatient| beyond a kilometre is not a patient position
IOP_QUIET_TOL = 1e-3  # rounding in files: re-orthonormalised without a word
IOP_MAX_TOL = 1e-2  # beyond this the orientation is not two orthogonal unit vectors
MAX_ERMF = 5.0  # EstimatedRadiographicMagnificationFactor is >= 1 and a few at most
# More images/frames than this in one series is not a plausible image (the longest cine loops
# and enhanced MR/CT objects hold tens of thousands): refused before any per-frame work, which
# a file of a million 1x1 frames (1 MB) turned into minutes and gigabytes.
MAX_FRAMES = 100_000
NATIVE_UNIT_BYTES = 1 << 20  # uncompressed frames are read in units of about this size (or one frame)
CINE_MODALITIES = {"US", "XA", "RF", "ES", "XC", "OP", "IVUS", "IVOCT", "GM", "SM", "OT", "DX", "CR", "MG", "IO", "PX", ""}
PHOTOMETRICS = {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422",
                "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT"}
PROJECTION_MODALITIES = {"CR", "DX", "MG", "IO", "RF", "XA", "PX", "RG", "DF"}
UNEVEN_REL_TOL = 0.01  # gaps differing by more than 1 % (and > 0.01 mm) are uneven
TILT_TOL_DEG = 0.1
LINE_TOL_MM = 0.1  # a slice further than this (or a quarter pixel) from the line of the others: no 3D geometry


class LoadError(UserError):
    """The series cannot be shown; the message says why in one line."""


# Exceptions that must keep their meaning (Ctrl-C, exit); everything else a decoder raises -
# including pyo3's PanicException, which derives from BaseException - becomes a LoadError.
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    first = next((ln.strip() for ln in s.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


_STDERR_LOCK = threading.Lock()


@contextmanager
def _decoder_stderr_muted():
    """Hold back what native decoders write to file descriptor 2 while they run.

    Hand-written because no library offers it: a Rust decoder (pylibjpeg-rle) that panics
    prints the panic and a full backtrace straight to fd 2 before Python sees the
    exception, so the user would get pages of text around our one-line error.  The
    output is captured in a temporary file; it is replayed unless the decoder failed
    (the failure is then reported as one line by the caller).  The lock serialises the
    fd swap; the decoders hold the GIL anyway, so no parallelism is lost.
    """
    state = {"failed": False}
    with _STDERR_LOCK:
        saved = tmp = None
        try:
            saved = os.dup(2)
            tmp = tempfile.TemporaryFile()
        except OSError:  # no stderr (or no temp dir): decode without holding anything back
            if saved is not None:
                os.close(saved)
            yield state
            return
        try:
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed stderr must not stop decoding
            pass
        os.dup2(tmp.fileno(), 2)
        try:
            yield state
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not state["failed"]:
                tmp.seek(0)
                data = tmp.read()
                if data:
                    try:
                        os.write(2, data)
                    except OSError:
                        pass
            tmp.close()


@dataclass
class Slot:
    rec: int  # index into the stack's record list
    frame: int  # frame within that record
    ipp: np.ndarray | None = None
    iop: np.ndarray | None = None
    pixel_spacing: tuple[float, float] | None = None
    slope: float = 1.0
    intercept: float = 0.0
    window: tuple[list, list, list] | None = None  # centers, widths, explanations
    # how stored values become modality values: "rescale" (slope/intercept given), "lut" (Modality
    # LUT Sequence), "none" (neither: identity), "top-level" (an enhanced frame without its Pixel
    # Value Transformation, the file's top-level rescale used)
    transform: str = "rescale"
    lut_type: str = ""  # ModalityLUTType of a "lut" transform
    thickness: float | None = None  # an enhanced frame's SliceThickness (Pixel Measures); else the header's


@dataclass
class StackPlan:
    records: list[InstanceRecord]
    slots: list[Slot]
    rows: int
    cols: int
    samples: int
    photometric: str
    dtype: np.dtype = np.dtype(np.int16)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    positions: np.ndarray | None = None
    has_geometry: bool = False
    is_cine: bool = False
    frame_time_ms: float | None = None
    warnings: list[str] = field(default_factory=list)
    spacing_source: str = "none"  # see imaging_assist.volume.SPACING_SOURCES
    calibrated_regions: list = field(default_factory=list)  # see Volume.calibrated_regions
    units_hu: bool = True  # False: a CT without rescale attributes (values not known to be HU)
    label: str = ""
    datasets: dict = field(default_factory=dict)  # rec index -> pydicom header, when read


# --------------------------------------------------------------------------- planning
def _f(v, default=None):
    try:
        return float(v[0] if isinstance(v, list) else v)
    except (TypeError, ValueError, IndexError):
        return default


def _vec(v, n):
    if isinstance(v, list) and len(v) == n:
        try:
            return np.asarray([float(x) for x in v], float)
        except (TypeError, ValueError):
            return None
    return None


def _pair(v) -> tuple[float, float] | None:
    if v is None:
        return None
    vals = _vec(list(v) if not isinstance(v, (str, bytes, float, int)) else [v], 2)
    return (float(vals[0]), float(vals[1])) if vals is not None else (float("nan"), float("nan"))


def _spacing_ok(ps) -> bool:
    lo, hi = PIXEL_SPACING_RANGE_MM
    return ps is not None and all(np.isfinite(v) and lo <= v <= hi for v in ps)


def _fmt_vals(v) -> str:
    return "\\".join(f"{float(x):g}" for x in v)


def _pos_float(v, hi: float = 1e4) -> float | None:
    """A finite, positive value (slice gaps, thickness), or None."""
    x = _f(v)
    return x if x is not None and np.isfinite(x) and 0 < x <= hi else None


def _check_iop(iop: np.ndarray) -> tuple[np.ndarray | None, str | None, bool]:
    """(orthonormal iop or None, reason it was refused, whether it had to be corrected visibly)."""
    vals = _fmt_vals(iop)
    if not np.all(np.isfinite(iop)):
        return None, f"ImageOrientationPatient ({vals}) has non-finite values", False
    r, c = iop[:3], iop[3:]
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if nr < 1e-6 or nc < 1e-6:
        return None, f"ImageOrientationPatient ({vals}) is degenerate (a zero vector)", False
    err = max(abs(nr - 1), abs(nc - 1), abs(float(r @ c)))
    if err > IOP_MAX_TOL:
        return None, (f"ImageOrientationPatient ({vals}) is not two orthogonal unit vectors "
                      f"(off by {err:.3g})"), False
    # Gram-Schmidt: files store the cosines rounded to a few digits.
    r = r / nr
    c = c - (c @ r) * r
    c = c / np.linalg.norm(c)
    return np.concatenate([r, c]), None, err > IOP_QUIET_TOL


def _validate_slots(keyed, recs, counts: list[int] | None = None) -> list[str]:
    """Refuse values that would load silently wrong; drop broken geometry with a warning.

    Non-finite or zero rescale -> LoadError (the values would be meaningless);
    non-finite / absurd ImagePositionPatient or unusable ImageOrientationPatient -> that
    slot loses its geometry (the stack is then shown without 3D geometry).  ``counts``: how
    many frames each slot stands for (frames sharing one geometry are validated once)."""
    counts = counts or [1] * len(keyed)
    warns: list[str] = []
    for s, _ in keyed:
        rec = recs[s.rec]
        for attr, v in (("RescaleSlope", s.slope), ("RescaleIntercept", s.intercept)):
            if v is None or not np.isfinite(v):
                raise LoadError(f"{rec.display_path}: {attr} {v} is not a finite number: "
                                "pixel values cannot be computed")
        if s.slope == 0:
            raise LoadError(f"{rec.display_path}: RescaleSlope is 0: every pixel would have the same value")
        lo, hi = _stored_range(rec) if rec.samples == 1 else (0, 255)
        big = max(abs(lo), abs(hi)) * abs(s.slope) + abs(s.intercept)
        if big > 3e38:
            raise LoadError(f"{rec.display_path}: RescaleSlope {s.slope:g} / RescaleIntercept {s.intercept:g} "
                            "give values beyond the float32 range")
        if s.ipp is not None and not (np.all(np.isfinite(s.ipp)) and np.abs(s.ipp).max() <= MAX_POSITION_MM):
            warns.append(f"ImagePositionPatient ({_fmt_vals(s.ipp)}) of {rec.display_path} is not a usable "
                         "position: images are shown without 3D geometry")
            s.ipp = None
        if s.iop is not None:
            fixed, reason, loud = _check_iop(s.iop)
            if reason:
                warns.append(f"{reason} in {rec.display_path}: images are shown without 3D geometry "
                             "(no MPR, no orientation labels)")
            elif loud:
                warns.append(f"ImageOrientationPatient ({_fmt_vals(s.iop)}) of {rec.display_path} was not "
                             "orthonormal; corrected")
            s.iop = fixed
    total = sum(counts)
    for kw, vals in (("ImagePositionPatient", [s.ipp for s, _ in keyed]),
                     ("ImageOrientationPatient", [s.iop for s, _ in keyed])):
        missing = sum(n for v, n in zip(vals, counts) if v is None)
        if 0 < missing < total:
            warns.append(f"{kw} missing (or unusable) in {missing} of {total} images/frames: "
                         "those are shown without 3D geometry")
    out = list(dict.fromkeys(warns))
    if len(out) > 3:
        out = out[:3] + [f"... and {len(out) - 3} more geometry warnings"]
    return out


def _as_list(v):
    if v is None or v == "":
        return []
    return v if isinstance(v, list) else [v]


def _needs_pydicom_header(rec: InstanceRecord) -> bool:
    return bool(rec.flags & {"PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
                             "VOILUTSequence", "ModalityLUTSequence"}) or not rec.fast




def _enhanced_slots(ri: int, ds) -> list[tuple[Slot, tuple, int]]:
    """(slot, dimension key, frame count) per frame; the frames without a per-frame item
    (shared groups only) are one slot standing for all of them (validated once)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    # Which dimension (if any) is the in-stack position: drop it from the stack key.
    drop = set()
    for d, item in enumerate(ds.get("DimensionIndexSequence") or []):
        ptr = item.get("DimensionIndexPointer")
        if ptr is not None and int(ptr) in (0x00209057, 0x00200032):
            drop.add(d)
    out = []
    n = int(ds.get("NumberOfFrames", 1) or 1)
    for i in range(min(n, len(per) + 1)):
        f = per[i] if i < len(per) else None
        ipp = _fg(f, shared, "PlanePositionSequence", "ImagePositionPatient")
        iop = _fg(f, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _fg(f, shared, "PixelMeasuresSequence", "PixelSpacing")
        th = _fg(f, shared, "PixelMeasuresSequence", "SliceThickness")
        slope = _fg(f, shared, "PixelValueTransformationSequence", "RescaleSlope")
        icpt = _fg(f, shared, "PixelValueTransformationSequence", "RescaleIntercept")
        wc = _fg(f, shared, "FrameVOILUTSequence", "WindowCenter")
        ww = _fg(f, shared, "FrameVOILUTSequence", "WindowWidth")
        we = _fg(f, shared, "FrameVOILUTSequence", "WindowCenterWidthExplanation")
        wf = _fg(f, shared, "FrameVOILUTSequence", "VOILUTFunction")
        dims = ()
        if f is not None and f.get("FrameContentSequence"):
            div = f.FrameContentSequence[0].get("DimensionIndexValues")
            if div is not None:
                div = list(div) if not isinstance(div, int) else [div]
                dims = tuple(v for d, v in enumerate(div) if d not in drop)
        transform = "rescale"
        if slope is None and icpt is None:
            # the frame has no Pixel Value Transformation: the file's top-level rescale (not part
            # of an enhanced object, but what pydicom's apply_modality_lut uses), said in a warning
            slope, icpt = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
            transform = "none" if slope is None and icpt is None else "top-level"
        slot = Slot(rec=ri, frame=i,
                    ipp=_vec(list(ipp), 3) if ipp is not None else None,
                    iop=_vec(list(iop), 6) if iop is not None else None,
                    pixel_spacing=_pair(ps),
                    slope=_f(slope, 1.0) if slope is not None else 1.0,
                    intercept=_f(icpt, 0.0) if icpt is not None else 0.0,
                    window=(_as_list(wc), _as_list(ww), _as_list(we), wf) if wc is not None else None,
                    transform=transform, thickness=_pos_float(th))
        out.append((slot, dims, 1 if f is not None else n - i))
    return out


def plan_series(series: SeriesInfo) -> list[StackPlan]:
    """Work out every displayable stack of a series (no pixels are read)."""
    recs = [r for r in series.instances if r.has_pixels]
    if not recs:
        raise LoadError(f"series {series.uid} has no images (modality {series.modality or '?'})")
    size_notes: list[str] = []
    for r in recs:
        if r.frames > MAX_FRAMES:
            raise LoadError(f"{r.display_path}: NumberOfFrames {r.frames} is not plausible "
                            f"(more than {MAX_FRAMES}): not opened")
    total = sum(r.frames for r in recs)
    if total > MAX_FRAMES:
        raise LoadError(f"series {series.uid}: {total} images/frames is not plausible for one series "
                        f"(more than {MAX_FRAMES}): not opened")
    for r in recs:
        reason = check_record(r)
        if reason:
            raise LoadError(f"{r.display_path}: {reason}")
        bs = r.get("BitsStored")
        if bs is not None and not (isinstance(bs, (int, float)) and 1 <= bs <= r.bits_allocated):
            raise LoadError(f"{r.display_path}: BitsStored {bs} does not fit BitsAllocated {r.bits_allocated}")
        if not r.encapsulated and r.pixel_length is not None and r.transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE):
            note = _check_native_length(r, r.pixel_length)
            if note:
                size_notes.append(note)
    datasets = {}
    # (slot, stack key, frame count): the frames of a non-enhanced multi-frame file share one
    # geometry and rescale, so one slot stands for all of them until it is validated
    entries: list[tuple[Slot, tuple, int]] = []
    lut_notes: list[tuple[int, str]] = []  # (record, path) of files with a Modality LUT and a rescale
    lone_notes: list[tuple[int, str]] = []  # (record, path) of files with RescaleSlope or Intercept alone
    for ri, r in enumerate(recs):
        if _needs_pydicom_header(r):
            try:
                ds = read_dataset(r, stop_before_pixels=True)
            except HeaderError as e:  # changed since the scan, not a regular file
                raise LoadError(f"{r.display_path}: {e}") from None
            except Exception as e:
                raise LoadError(f"{r.display_path}: unreadable header: {e}") from None
            datasets[ri] = ds
            try:
                enhanced = bool(ds.get("PerFrameFunctionalGroupsSequence") or ds.get("SharedFunctionalGroupsSequence"))
                if enhanced:
                    slots = _enhanced_slots(ri, ds)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError,
                    OverflowError) as e:  # pydicom converts raw values lazily, here
                raise LoadError(f"{r.display_path}: unreadable functional groups ({_one_line(e)})") from None
            if enhanced:
                entries.extend(((s, (ri,) + k, c) if len(recs) > 1 else (s, k, c)) for s, k, c in slots)
                continue
        window = None
        if r.get("WindowCenter") is not None and r.get("WindowWidth") is not None:
            window = (_as_list(r.get("WindowCenter")), _as_list(r.get("WindowWidth")),
                      _as_list(r.get("WindowCenterWidthExplanation")), r.get("VOILUTFunction"))
        ps = _vec(r.get("PixelSpacing"), 2)
        has_rescale = r.get("RescaleSlope") is not None or r.get("RescaleIntercept") is not None
        transform = "rescale" if r.get("RescaleSlope") is not None and r.get("RescaleIntercept") is not None \
            else "none"
        slope, icpt, lut_type = _f(r.get("RescaleSlope"), 1.0), _f(r.get("RescaleIntercept"), 0.0), ""
        if has_rescale and transform == "none" and "ModalityLUTSequence" not in r.flags:
            # a rescale only with both attributes (as pydicom's apply_modality_lut): a slope alone
            # was applied while the CT warning said the values were shown as stored.  A value that
            # is no usable number is refused all the same; a usable one is not applied, and said.
            _validate_slots([(Slot(rec=ri, frame=0, slope=slope, intercept=icpt), ())], recs)
            lone_notes.append((ri, r.display_path))
            slope, icpt = 1.0, 0.0
        if "ModalityLUTSequence" in r.flags:
            # PS3.3 C.11.1: a Modality LUT or a rescale, never both; the LUT is applied to the
            # pixels (as pydicom's apply_modality_lut does), so a rescale beside it is not
            slope, icpt, transform = 1.0, 0.0, "lut"
            ds = datasets.get(ri)
            try:
                lut_type = str(ds.ModalityLUTSequence[0].get("ModalityLUTType", "") or "").strip().upper()
            except (AttributeError, IndexError, TypeError, ValueError):
                lut_type = ""
            if has_rescale:
                lut_notes.append((ri, r.display_path))
        entries.append((Slot(rec=ri, frame=0, ipp=_vec(r.get("ImagePositionPatient"), 3),
                             iop=_vec(r.get("ImageOrientationPatient"), 6),
                             pixel_spacing=tuple(ps) if ps is not None else None,
                             slope=slope, intercept=icpt, window=window,
                             transform=transform, lut_type=lut_type), (), r.frames))

    geo_warnings = _validate_slots([(s, k) for s, k, _ in entries], recs, [c for _, _, c in entries])
    keyed: list[tuple[Slot, tuple]] = []
    for s, k, c in entries:  # one slot per frame, each a copy of its validated slot
        keyed.append((s, k))
        keyed.extend((replace(s, frame=s.frame + i), k) for i in range(1, c))

    # Group into stacks: frames of an enhanced object by their non-position dimensions.
    by_key: dict[tuple, list[Slot]] = defaultdict(list)
    for s, k in keyed:
        by_key[k].append(s)
    if len(by_key) > 1:
        merged = [s for s, _ in keyed]
        if _positions_unique(merged) and len({_spacing_key(s) for s in merged}) == 1:
            by_key = {(): merged}  # e.g. a volume split over several files
    # Frames of one stack with different pixel sizes (single files are split by the index
    # already): one pixel size per stack, as every distance and the affine assume one.
    spacing_split = sorted({_spacing_key(s) for sl in by_key.values() for s in sl})
    if any(len({_spacing_key(s) for s in sl}) > 1 for sl in by_key.values()):
        split: dict[tuple, list[Slot]] = defaultdict(list)
        for k, sl in by_key.items():
            for s in sl:
                split[k + _spacing_key(s)].append(s)
        by_key = split
    else:
        spacing_split = []
    plans = []
    for n, (k, slots) in enumerate(sorted(by_key.items())):
        plan = _plan_stack(series, recs, slots, datasets, geo_warnings)
        plan.warnings.extend(size_notes[:3])
        mine = [path for ri, path in lut_notes if any(s.rec == ri for s in slots)]
        if mine:
            plan.warnings.append(f"{mine[0]}" + (f" and {len(mine) - 1} more file(s)" if len(mine) > 1 else "")
                                 + " hold both a Modality LUT and RescaleSlope/Intercept (the standard allows "
                                   "one): the Modality LUT is applied, the rescale ignored")
        mine = [path for ri, path in lone_notes if any(s.rec == ri for s in slots)]
        if mine and series.modality.upper() != "CT":  # a CT says "shown as stored" already
            plan.warnings.append(f"{mine[0]}" + (f" and {len(mine) - 1} more file(s)" if len(mine) > 1 else "")
                                 + " hold RescaleSlope or RescaleIntercept without the other: not applied "
                                   "(a rescale needs both), values are shown as stored")
        if spacing_split:
            plan.warnings.insert(0, "frames have different pixel sizes (PixelSpacing " + ", ".join(
                f"{a / 1000:g}x{b / 1000:g}" if a >= 0 else "none" for _, a, b in spacing_split[:4])
                + " mm): each pixel size is a stack of its own")
        if len(by_key) > 1:
            plan.label = f"stack {n + 1} of {len(by_key)}"
            plan.warnings.insert(0, f"series holds {len(by_key)} stacks (repeated positions, "
                                    "ImagePositionPatient: time points, echoes or image types); "
                                    f"this is {plan.label}")
        plans.append(plan)
    return plans


def stack_label(plans: list, k: int) -> str:
    """The label of stack ``k`` of a series planned as ``plans`` ("stack 1 of 2"; "" for a
    series of one stack): what keys a stack's saved measurements (``AnnotationStore``) in the
    viewer, its grid cells and ``imaging-assist annotations --stack``."""
    return str(getattr(plans[k], "label", "") or "") if len(plans) > 1 and 0 <= k < len(plans) else ""


def _spacing_key(s: Slot) -> tuple[int, int, int]:
    """A slot's PixelSpacing in µm, as sortable integers ((-1, -1, -1): none)."""
    ps = s.pixel_spacing
    if ps is None or not all(np.isfinite(ps)):
        return (-1, -1, -1)
    return (-1, int(round(float(ps[0]) * 1000)), int(round(float(ps[1]) * 1000)))


def _positions_unique(slots: list[Slot]) -> bool:
    if any(s.ipp is None or s.iop is None for s in slots):
        return False
    n = _normal(slots[0].iop)
    d = np.sort([float(s.ipp @ n) for s in slots])
    return bool(np.all(np.diff(d) > POSITION_TOL_MM))


def _off_line(slots: list[Slot]) -> tuple[float, int]:
    """How far (mm) the slice positions lie from the line through the first and last along the
    normal, each slice placed by its distance along the normal (uneven gaps and a gantry tilt
    stay on the line); and the index of the worst slice."""
    n = _normal(slots[0].iop)
    d = np.array([float(s.ipp @ n) for s in slots])
    order = np.argsort(d, kind="stable")
    p = np.array([slots[i].ipp for i in order], dtype=float)
    d = d[order]
    if d[-1] - d[0] <= POSITION_TOL_MM:
        return 0.0, 0
    t = (d - d[0]) / (d[-1] - d[0])
    dev = np.linalg.norm(p - (p[0] + t[:, None] * (p[-1] - p[0])), axis=1)
    i = int(np.argmax(dev))
    return float(dev[i]), int(order[i])


def _normal(iop: np.ndarray) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    return n / (np.linalg.norm(n) or 1.0)


def _plan_stack(series: SeriesInfo, recs, slots: list[Slot], datasets,
                geo_warnings: list[str] = ()) -> StackPlan:
    r0 = recs[slots[0].rec]
    photometric = str(r0.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    plan = StackPlan(records=recs, slots=list(slots), rows=r0.rows, cols=r0.columns,
                     samples=r0.samples, photometric=photometric, datasets=datasets)
    if photometric not in PHOTOMETRICS:
        raise LoadError(f"{r0.display_path}: PhotometricInterpretation {photometric[:40]!r} is not a known "
                        "value: the colours cannot be interpreted")
    plan.warnings.extend(geo_warnings)
    # Type 1 attributes whose absence changes what is shown: said, never assumed silently.
    if r0.get("PhotometricInterpretation") is None:
        plan.warnings.append("PhotometricInterpretation missing: shown as MONOCHROME2 (black = lowest value)")
    if not series.modality:
        plan.warnings.append("Modality missing: values are shown without units")
    elif not re.fullmatch(r"[A-Z0-9_ ]{1,16}", series.modality):
        plan.warnings.append(f"Modality {series.modality[:20]!r} is not a valid code: modality-specific "
                             "handling (units, pixel spacing rules) may not apply")
    elif series.modality.upper() == "CT":
        _check_ct_units(plan, slots)
    modality = series.modality.upper()
    geometric = all(s.ipp is not None and s.iop is not None for s in slots)
    multi_frame_no_pos = r0.frames > 1 and not geometric

    row_sp, col_sp = _plan_spacing(plan, modality, r0, slots[0])
    refused = False  # positions present but not usable as 3D geometry (said in a warning)

    if geometric and not multi_frame_no_pos:
        iop = slots[0].iop
        if any(np.max(np.abs(s.iop - iop)) > 1e-3 for s in slots):
            plan.warnings.append("image orientation differs between slices: shown in file order, "
                                 "no 3D geometry")
            geometric, refused = False, True
    if geometric and len(slots) > 1 and plan.spacing_source == "none":
        plan.warnings.append("without a pixel size the slices have no 3D geometry (no MPR)")
        geometric, refused = False, True
    if geometric and len(slots) > 2 and not multi_frame_no_pos:
        off, _ = _off_line(slots)
        tol = max(LINE_TOL_MM, 0.25 * min(col_sp, row_sp))
        if off > tol:
            # an affine (and MPR, exported SEG positions, reference lines) places every slice on
            # the line through the first and last: a slice beside it would be drawn off its place
            plan.slots = sorted(slots, key=lambda s: float(s.ipp @ _normal(s.iop)))
            plan.warnings.append(f"slice positions (ImagePositionPatient) do not lie on one line: one slice is "
                                 f"{off:.2f} mm beside the line through the others' ends; shown in position "
                                 "order without 3D geometry (no MPR)")
            geometric, refused = False, True
    if geometric and len(slots) >= 1 and not multi_frame_no_pos:
        _plan_geometry(plan, col_sp, row_sp, r0)
    else:
        plan.spacing = (col_sp, row_sp, 1.0)
        plan.has_geometry = False
        if r0.frames > 1 and all(s.rec == slots[0].rec for s in slots):
            # the frames of one file, whatever else the series holds (the index makes each
            # such loop a series part of its own: two loops were one stack of both loops' frames)
            plan.is_cine = True
            ft = _pos_float(r0.get("FrameTime"), 1e6)
            plan.frame_time_ms = ft
            if ft is None:
                plan.warnings.append("multi-frame image without a usable FrameTime: cine speed unknown")
            if modality not in CINE_MODALITIES and not refused:
                plan.warnings.append(f"{modality or 'image'} frames without ImagePositionPatient: shown in file "
                                     "order as a cine, without 3D geometry")
        elif len(slots) > 1 and not geo_warnings and not refused:
            plan.warnings.append("no patient-position information (ImagePositionPatient): images are "
                                 "shown in InstanceNumber order and have no 3D geometry")
        has_ipp = any(s.ipp is not None for s in slots)
        has_iop = any(s.iop is not None for s in slots)
        if (has_ipp or has_iop) and not geo_warnings:
            missing = [kw for kw, have in (("ImagePositionPatient", all(s.ipp is not None for s in slots)),
                                           ("ImageOrientationPatient", all(s.iop is not None for s in slots)))
                       if not have]
            if missing:
                plan.warnings.append(f"{' and '.join(missing)} missing in some or all images: "
                                     "shown without 3D geometry")
        if slots[0].iop is not None:
            iop = slots[0].iop
            plan.direction = np.column_stack([iop[:3], iop[3:], _normal(iop)])
        if slots[0].ipp is not None:
            plan.origin = tuple(float(x) for x in slots[0].ipp)
    _plan_dtype(plan, modality)
    return plan


def _check_ct_units(plan: StackPlan, slots: list[Slot]) -> None:
    """Hounsfield units only when every slice says how its stored values become HU; a series
    whose slices disagree is said, never shown as if it were one scale."""
    n = len(slots)
    kinds = defaultdict(int)
    for s in slots:
        kinds[s.transform] += 1
    bare = kinds["none"]
    if bare == n:
        plan.warnings.append(("CT image" if n == 1 else "CT images") + " without RescaleIntercept/RescaleSlope: "
                             "values are shown as stored, not as Hounsfield units")
        plan.units_hu = False
    elif bare:
        plan.warnings.append(f"RescaleIntercept/RescaleSlope missing in {bare} of {n} CT images/frames: those "
                             "are shown as stored values, the others in Hounsfield units (not one scale)")
        plan.units_hu = False
    if kinds["top-level"]:
        plan.warnings.append(f"{kinds['top-level']} frame(s) without a Pixel Value Transformation: the file's "
                             "top-level RescaleSlope/RescaleIntercept used")
    other = sorted({s.lut_type or "unnamed" for s in slots if s.transform == "lut" and s.lut_type != "HU"})
    if other:
        plan.warnings.append(f"CT Modality LUT of type {', '.join(other)}: values are not Hounsfield units")
        plan.units_hu = False


def _header(plan: StackPlan, ri: int):
    """The pydicom header (no pixels) of record ri, read once; None when unreadable."""
    if ri not in plan.datasets:
        try:
            plan.datasets[ri] = read_dataset(plan.records[ri], stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the pixel read reports an unreadable file
            plan.datasets[ri] = None
    return plan.datasets[ri]


def _plan_spacing(plan: StackPlan, modality: str, r0: InstanceRecord, slot0: Slot) -> tuple[float, float]:
    """(row spacing, column spacing) in mm and ``plan.spacing_source``; (1, 1) when unknown.

    PS3.3 10.7.1.3: on projection radiographs Imager Pixel Spacing is at the detector;
    divided by the Estimated Radiographic Magnification Factor it is at the patient.  A
    Pixel Spacing that differs from Imager Pixel Spacing (or comes with Pixel Spacing
    Calibration Type) has been calibrated.  Ultrasound: the physical deltas of the
    Sequence of Ultrasound Regions; when its regions differ (a spectral Doppler strip below
    the B-mode image) those in cm go to ``plan.calibrated_regions``, the image has none."""
    w = plan.warnings
    ps = slot0.pixel_spacing
    if ps is not None and not _spacing_ok(ps):
        w.append(f"PixelSpacing ({_fmt_vals(ps)}) is not a usable pixel size (must be "
                 f"{PIXEL_SPACING_RANGE_MM[0]:g}-{PIXEL_SPACING_RANGE_MM[1]:g} mm): ignored")
        ps = None
    ips = _vec(r0.get("ImagerPixelSpacing"), 2)
    if ips is not None and not _spacing_ok(ips):
        w.append(f"ImagerPixelSpacing ({_fmt_vals(ips)}) is not a usable pixel size: ignored")
        ips = None
    had = ps is not None or ips is not None

    def done(source, sp):
        plan.spacing_source = source
        return float(sp[0]), float(sp[1])

    if modality == "US":
        ds = _header(plan, slot0.rec)
        regions = list(ds.get("SequenceOfUltrasoundRegions") or []) if ds is not None else []
        deltas = set()
        cm = []  # the regions in cm on both axes: (x0, y0, x1, y1, dx mm, dy mm), inclusive pixel bounds
        others = 0  # regions in other units (a spectral Doppler strip: s and cm/s; M-mode: s and cm)
        for reg in regions:
            try:
                if int(reg.get("PhysicalUnitsXDirection", 0)) == 3 and int(reg.get("PhysicalUnitsYDirection", 0)) == 3:
                    dy, dx = round(float(reg.PhysicalDeltaY) * 10, 9), round(float(reg.PhysicalDeltaX) * 10, 9)
                    deltas.add((dy, dx))
                    box = [int(reg.get(k)) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                                     "RegionLocationMaxX1", "RegionLocationMaxY1")]
                    if box[0] <= box[2] and box[1] <= box[3] and _spacing_ok((dy, dx)):
                        cm.append((*box, dx, dy))
                else:
                    others += 1
            except (TypeError, ValueError, AttributeError):
                continue
        # PS3.3 C.8.5.5.1: a region's Physical Delta applies inside that region only.  One pixel size
        # for the whole image when the regions agree (none in other units) or one covers the image
        whole = [r for r in cm if r[0] <= 0 and r[1] <= 0 and r[2] >= plan.cols - 1 and r[3] >= plan.rows - 1]
        if len(deltas) == 1 and _spacing_ok(next(iter(deltas))) and (not others or whole):
            return done("calibrated", next(iter(deltas)))
        if cm:
            plan.calibrated_regions = cm
            why = "have different pixel sizes" if len(deltas) > 1 else "are not all in cm (e.g. spectral Doppler)"
            w.append(f"the ultrasound regions (SequenceOfUltrasoundRegions) {why}: distances and areas are "
                     f"in mm inside one region calibrated in cm ({len(cm)} region(s)), elsewhere in pixels")
            return done("none", (1.0, 1.0))
        if len(deltas) > 1 or (deltas and others):  # and no region calibrated in cm has usable bounds
            w.append("the ultrasound regions (SequenceOfUltrasoundRegions) have different pixel sizes or "
                     "units: distances and areas are in pixels")
            return done("none", (1.0, 1.0))
        if regions and not deltas:
            w.append("SequenceOfUltrasoundRegions gives no pixel size in cm: distances and areas are in pixels")
            return done("none", (1.0, 1.0))
    elif modality in PROJECTION_MODALITIES or (ps is None and ips is not None):
        ds = _header(plan, slot0.rec) if (ips is not None or ps is not None) else None
        cal = str(ds.get("PixelSpacingCalibrationType", "") or "").strip() if ds is not None else ""
        if ps is not None and (cal or (ips is not None and not np.allclose(ps, ips, rtol=1e-4))):
            return done("calibrated", ps)
        if ips is not None:
            ermf = _f(ds.get("EstimatedRadiographicMagnificationFactor")) if ds is not None else None
            if ermf is not None and np.isfinite(ermf) and 1.0 <= ermf <= MAX_ERMF:
                return done("ImagerPixelSpacing/ERMF", (ips[0] / ermf, ips[1] / ermf))
            if ermf is not None:
                w.append(f"EstimatedRadiographicMagnificationFactor {ermf:g} is not plausible "
                         f"(1-{MAX_ERMF:g}): ignored")
            w.append("pixel spacing is ImagerPixelSpacing, at the detector (no usable "
                     "EstimatedRadiographicMagnificationFactor): lengths are at the detector plane, "
                     "about 10-15 % too long for chest films")
            return done("ImagerPixelSpacing", ips)
    if ps is not None:
        return done("PixelSpacing", ps)
    if not had:
        w.append("no pixel spacing in the file (no PixelSpacing or ImagerPixelSpacing): distances and areas "
                 "are in pixels")
        ratio = _vec(r0.get("PixelAspectRatio"), 2)
        if ratio is not None and np.all(ratio > 0) and not np.isclose(ratio[0], ratio[1]):
            # PS3.3 C.7.6.3.1.7: vertical to horizontal size; the image is shown with square
            # pixels, so shapes, angles and pixel distances are distorted
            w.append(f"pixels are not square (PixelAspectRatio {ratio[0]:g}:{ratio[1]:g}, vertical:horizontal) "
                     "and are shown square: shapes, angles and distances in pixels are distorted")
    else:
        w.append("no usable pixel spacing (PixelSpacing): distances and areas are in pixels")
    return done("none", (1.0, 1.0))


def _plan_geometry(plan: StackPlan, col_sp: float, row_sp: float, r0: InstanceRecord) -> None:
    slots = plan.slots
    iop = slots[0].iop
    n = _normal(iop)
    d = np.array([float(s.ipp @ n) for s in slots])
    order = np.argsort(d, kind="stable")
    plan.slots = [slots[i] for i in order]
    d = d[order]
    plan.positions = d
    plan.has_geometry = True
    first, last = plan.slots[0].ipp, plan.slots[-1].ipp
    plan.origin = tuple(float(x) for x in first)
    slice_dir = n
    if len(d) > 1:
        gaps = np.diff(d)
        dup = int(np.sum(gaps <= POSITION_TOL_MM))
        if dup:
            plan.warnings.append(f"{dup} slice(s) share a position with another slice: the series "
                                 "mixes stacks that could not be told apart; geometry is unreliable")
        med = float(np.median(gaps))
        if float(gaps.max() - gaps.min()) > max(POSITION_TOL_MM, UNEVEN_REL_TOL * abs(med)):
            plan.warnings.append(
                f"uneven slice spacing (ImagePositionPatient): gaps from {gaps.min():.2f} to {gaps.max():.2f} mm "
                f"(median {med:.2f} mm); 3D views and volumes use the mean spacing "
                f"{(d[-1] - d[0]) / (len(d) - 1):.3f} mm and are approximate"
                + ("; slices may be missing" if gaps.max() > 1.5 * med else ""))
        step = (last - first) / (len(d) - 1)
        z_sp = float(np.linalg.norm(step))
        cosang = float(np.clip(abs(step @ n) / (z_sp or 1.0), -1, 1))
        tilt = float(np.degrees(np.arccos(cosang))) if z_sp > POSITION_TOL_MM else 0.0
        if z_sp <= POSITION_TOL_MM:
            z_sp = _pos_float(r0.get("SpacingBetweenSlices")) or _pos_float(r0.get("SliceThickness")) or 1.0
        if tilt > TILT_TOL_DEG:
            gt = r0.get("GantryDetectorTilt")
            plan.warnings.append(
                f"gantry tilt: slices are sheared by {tilt:.1f} degrees"
                + (f" (GantryDetectorTilt {gt})" if gt not in (None, "") else "")
                + "; the affine keeps the true slice positions, slice views are exact, "
                  "reformatted (MPR) views are shown in the sheared voxel grid (rulers there measure "
                  "between the acquired positions)")
            slice_dir = step / z_sp
        thickness = _pos_float(r0.get("SliceThickness")) or plan.slots[0].thickness
        if thickness and thickness < 0.95 * abs(med):
            plan.warnings.append(f"slices are {thickness:g} mm thick but {abs(med):.2f} mm apart: "
                                 "there are gaps between slices")
    else:
        z_sp = _pos_float(r0.get("SpacingBetweenSlices")) or _pos_float(r0.get("SliceThickness")) or 1.0
    plan.spacing = (float(col_sp), float(row_sp), float(z_sp))
    plan.direction = np.column_stack([iop[:3], iop[3:], slice_dir])


def _stored_range(rec: InstanceRecord) -> tuple[int, int]:
    bs = int(rec.get("BitsStored", rec.bits_allocated) or rec.bits_allocated)
    bs = min(max(bs, 1), max(rec.bits_allocated, 1), 64)  # the index refuses others; never a bad shift
    if int(rec.get("PixelRepresentation", 0) or 0) == 1:
        return -(1 << (bs - 1)), (1 << (bs - 1)) - 1
    return 0, (1 << bs) - 1


def _plan_dtype(plan: StackPlan, modality: str) -> None:
    # Every image of the stack counts: a series may mix bit depths or signedness (a stack
    # planned from its first image alone wrapped the others' values around).
    recs = [plan.records[ri] for ri in sorted({s.rec for s in plan.slots})]
    if plan.photometric in ("RGB", "PALETTE COLOR") or plan.photometric.startswith("YBR") or plan.samples == 3:
        eight = all(r.bits_allocated == 8 for r in recs)
        plan.dtype = np.dtype(np.uint8) if eight or plan.photometric == "PALETTE COLOR" else np.dtype(np.uint16)
        return
    if any("ModalityLUTSequence" in r.flags for r in recs) or not _integer_rescale(plan):
        plan.dtype = np.dtype(np.float32)
        return
    ranges = [_stored_range(r) for r in recs]
    icpts = [s.intercept for s in plan.slots]
    lo, hi = min(a for a, _ in ranges) + min(icpts), max(b for _, b in ranges) + max(icpts)
    eight_bit = all(r.bits_allocated == 8 for r in recs)
    for dt in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max and (dt != np.uint8 or eight_bit):
            plan.dtype = np.dtype(dt)
            return
    plan.dtype = np.dtype(np.float32)


def _integer_rescale(plan: StackPlan) -> bool:
    return all(s.slope == 1.0 and float(s.intercept).is_integer() for s in plan.slots)


# --------------------------------------------------------------------------- pixels
def _normalize_stored(arr: np.ndarray, rec: InstanceRecord) -> np.ndarray:
    """Keep only the BitsStored bits (sign-extending signed data), as PS3.5 8.1.1 says."""
    ba = arr.dtype.itemsize * 8
    bs = int(rec.get("BitsStored", ba) or ba)
    if bs >= ba or arr.dtype.kind not in "iu":
        return arr
    if int(rec.get("PixelRepresentation", 0) or 0) == 1:
        shift = ba - bs
        return (arr.astype(arr.dtype, copy=False) << shift) >> shift
    return arr & np.array((1 << bs) - 1, dtype=arr.dtype)


def _native_dtype(rec: InstanceRecord) -> np.dtype | None:
    ba = rec.bits_allocated
    signed = int(rec.get("PixelRepresentation", 0) or 0) == 1
    if ba not in (8, 16, 32):
        return None
    return np.dtype(("<i" if signed else "<u") + str(ba // 8))


def _fast_native(rec: InstanceRecord) -> bool:
    return (rec.fast and rec.member is None and not rec.encapsulated and rec.pixel_offset is not None
            and rec.transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE) and rec.samples == 1
            and _native_dtype(rec) is not None and "ModalityLUTSequence" not in rec.flags
            and str(rec.get("PhotometricInterpretation", "")).strip().upper() != "PALETTE COLOR"
            and "RedPaletteColorLookupTableData" not in rec.flags
            and "SegmentedRedPaletteColorLookupTableData" not in rec.flags)


def _read_native(rec: InstanceRecord, frames: list[int]) -> dict[int, np.ndarray]:
    dt = _native_dtype(rec)
    n = rec.rows * rec.columns
    fbytes = n * dt.itemsize
    out = {}
    try:
        # the pixel offset is the scanned file's: a file that changed since is refused (and a
        # pipe put in its place is not waited on)
        fh = open_regular(rec.path, rec.file_identity)
    except HeaderError as e:
        raise LoadError(f"{rec.display_path}: {e}") from None
    with fh:  # read-only
        for fr in frames:
            fh.seek(rec.pixel_offset + fr * fbytes)
            a = np.fromfile(fh, dtype=dt, count=n)
            if a.size != n:
                raise LoadError(f"{rec.display_path}: truncated pixel data in frame {fr}")
            out[fr] = _normalize_stored(a.reshape(rec.rows, rec.columns), rec)
    return out


def _read_pydicom(rec: InstanceRecord, photometric: str) -> dict[int, np.ndarray]:
    """Decode every frame of one file with pydicom; any decoder failure is a LoadError."""
    try:
        return _read_pydicom_unguarded(rec, photometric)
    except LoadError:
        raise
    except _FATAL:
        raise
    except BaseException as e:  # noqa: BLE001 - PanicException and friends become one line
        raise LoadError(f"{rec.display_path}: cannot read pixel data ({_one_line(e)})") from None


def _decode_frames(ds, rec: InstanceRecord) -> np.ndarray:
    """ds.pixel_array, with the failing frame named and the decoders' stderr held back."""
    ts = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "?")
    with _decoder_stderr_muted() as state:
        try:
            return ds.pixel_array
        except _FATAL:
            raise
        except BaseException as e:  # noqa: BLE001 - PanicException is a BaseException
            state["failed"] = True
            err = e
    frame = 1
    if rec.frames > 1:  # find the first frame that does not decode, to name it
        from pydicom.pixels.utils import get_decoder
        frame = None
        for i in range(rec.frames):
            with _decoder_stderr_muted() as state:
                try:
                    next(get_decoder(ds.file_meta.TransferSyntaxUID).iter_array(ds, indices=[i]))
                except _FATAL:
                    raise
                except BaseException:  # noqa: BLE001
                    state["failed"] = True
                    frame = i + 1
                    break
    where = f"frame {frame}" if frame else "pixel data"
    raise LoadError(f"{rec.display_path}: cannot decode {where} ({ts}): {_one_line(err)}")


def _palette_dataset(ds):
    """``ds``, or for Explicit VR Big Endian a stand-in holding its palette with the OW words
    of the (non-segmented) LUT Data in little-endian order: pydicom's ``apply_color_lut``
    reads them in the machine's byte order (byte-swapped colours).  ``ds`` is not changed."""
    if not display.big_endian(ds) or "RedPaletteColorLookupTableData" not in ds:
        return ds
    from pydicom.dataset import Dataset
    pal = Dataset()
    for kw in ("PixelPresentation", "RedPaletteColorLookupTableDescriptor",
               "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
               "AlphaPaletteColorLookupTableDescriptor"):
        if kw in ds:
            setattr(pal, kw, ds.get(kw))
    n = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 65536
    for c in ("Red", "Green", "Blue", "Alpha"):
        kw = f"{c}PaletteColorLookupTableData"
        data = ds.get(kw)
        if data is None:
            continue
        data = bytes(data)
        if len(data) >= 2 * n:  # 16-bit words (8-bit entries packed one to a byte need no swap)
            data = np.frombuffer(data[:2 * n], ">u2").astype("<u2").tobytes()
        pal.add_new(ds[kw].tag, "OW", data)
    return pal


def _palette_bits(ds) -> int | None:
    """Bits per LUT entry of the red palette descriptor (8 or 16), None when unreadable."""
    try:
        return int(ds.RedPaletteColorLookupTableDescriptor[2])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


def _apply_modality_lut(arr: np.ndarray, ds) -> np.ndarray:
    """PS3.3 C.11.1 Modality LUT by hand (float32): entry ``value - first`` clipped to the
    table.  The first mapped value is read as signed for signed data, also when written as
    US (64536 for -1000): pydicom's ``apply_modality_lut`` compares int16 pixels with 64536
    (OverflowError), as the VOI LUT path (display.attach_voi_lut) already knew."""
    item = ds.ModalityLUTSequence[0]
    desc = [int(x) for x in item.LUTDescriptor]
    n, bits = (desc[0] or 65536), desc[2]
    first = display.lut_first(desc[1], ds)
    if not (1 <= bits <= 16):
        raise ValueError(f"Modality LUT bits per entry {bits}")
    lut = display.lut_entries(item, ds, n, bits).astype(np.float32)
    out = np.empty(arr.shape, np.float32)
    for i in range(arr.shape[0]):  # frame by frame: the int64 index of one frame at a time
        out[i] = lut[np.clip(arr[i].astype(np.int64) - first, 0, n - 1)]
    return out


def _read_pydicom_unguarded(rec: InstanceRecord, photometric: str) -> dict[int, np.ndarray]:
    from pydicom.pixels import apply_color_lut
    try:
        ds = read_dataset(rec)
    except HeaderError as e:  # changed since the scan, not a regular file: says it in one line
        raise LoadError(f"{rec.display_path}: {e}") from None
    except Exception as e:
        raise LoadError(f"{rec.display_path}: unreadable file: {_one_line(e)}") from None
    if "PixelData" not in ds:
        raise LoadError(f"{rec.display_path}: no pixel data")
    if not ds.get("PixelData") and ds.get("PixelData") is not None and len(ds.PixelData) == 0:
        raise LoadError(f"{rec.display_path}: empty pixel data")
    if rec.transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE, "1.2.840.10008.1.2.2"):
        _check_native_length(rec, len(ds.PixelData))
    arr = _decode_frames(ds, rec)
    if rec.frames == 1 and arr.ndim == (3 if rec.samples > 1 else 2):
        arr = arr[None]
    if photometric == "PALETTE COLOR":
        missing = [f"{c}PaletteColorLookupTable{part}" for c in ("Red", "Green", "Blue")
                   for part in ("Descriptor", "Data") if f"{c}PaletteColorLookupTable{part}" not in ds]
        if missing and "SegmentedRedPaletteColorLookupTableData" not in ds:
            raise LoadError(f"{rec.display_path}: PALETTE COLOR image without its palette "
                            f"({', '.join(missing[:2])}{' …' if len(missing) > 2 else ''} missing)")
        # only the BitsStored bits index the palette: some codecs (JPEG-LS) keep bits above them
        arr = _normalize_stored(arr, rec)
        try:
            rgb = apply_color_lut(arr, _palette_dataset(ds))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise LoadError(f"{rec.display_path}: unusable palette colour lookup table ({e})") from None
        if rgb.shape != arr.shape + (3,):
            raise LoadError(f"{rec.display_path}: palette colour lookup table did not give RGB "
                            f"for every pixel")
        if rgb.dtype != np.uint8:
            # scale by the bit depth of the entries (the descriptor's third value, PS3.3
            # C.7.6.3.1.5), not by the largest entry (that would brighten a dark palette):
            # 16-bit entries span 0..65535; 8-bit entries stored one per 16-bit word (allowed
            # by its Note; pydicom then gives uint16 0..255) keep their low byte
            if _palette_bits(ds) == 8:
                rgb = (rgb & 0xFF).astype(np.uint8)
            else:
                rgb = (rgb.astype(np.float32) / 257.0 + 0.5).clip(0, 255).astype(np.uint8)
        return {i: rgb[i] for i in range(rgb.shape[0])}
    if rec.samples == 1:
        arr = _normalize_stored(arr, rec)
        if "ModalityLUTSequence" in rec.flags:
            arr = _apply_modality_lut(arr, ds)
    return {i: arr[i] for i in range(arr.shape[0])}


def _check_native_length(rec: InstanceRecord, have: int) -> str | None:
    """Native pixel data must hold Rows x Columns x NumberOfFrames x SamplesPerPixel values
    (PS3.5 8.1.1; two samples per pixel for YBR_FULL_422, C.7.6.3).  Too few bytes, or a
    whole image row or more in excess, means the size attributes are wrong: LoadError.  A few
    bytes of excess (padding) are ignored; the returned warning says so."""
    n = rec.rows * rec.columns * rec.samples
    if rec.bits_allocated == 1:
        frame = n / 8
    else:
        frame = n * (rec.bits_allocated // 8)
        if str(rec.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
            frame = frame // 3 * 2
    need = int(np.ceil(frame * rec.frames))
    attrs = (f"Rows x Columns x NumberOfFrames x SamplesPerPixel ({rec.rows} x {rec.columns} x "
             f"{rec.frames} x {rec.samples}, BitsAllocated {rec.bits_allocated}: {need} bytes)")
    if have < need:
        raise LoadError(f"{rec.display_path}: truncated pixel data: {have} bytes present, {need} expected "
                        f"from {attrs}")
    excess = have - need
    if excess > 1 and excess >= max(frame / max(rec.rows, 1), 2):  # a whole row or more: see index.check_record
        raise LoadError(f"{rec.display_path}: pixel data length {have} bytes does not match {attrs}")
    if excess > 1:
        return (f"{rec.display_path}: {excess} bytes after the pixel data described by Rows x Columns "
                "were ignored")
    return None


_POOL = None
_POOL_LOCK = threading.Lock()


def decode_pool(workers: int):
    """A process pool for decoding, started once and reused (forkserver: safe in a threaded GUI).

    A pool whose worker died (BrokenProcessPool) is replaced by a fresh one."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and getattr(_POOL, "_broken", False):
            _POOL.shutdown(wait=False, cancel_futures=True)
            _POOL = None
        if _POOL is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["numpy", "pydicom", "imaging_assist.dicom.loader"])
            _POOL = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx)
        return _POOL


def _discard_pool(pool) -> None:
    """Forget a broken pool so that the next load starts a fresh one."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is pool:
            _POOL = None
    try:
        pool.shutdown(wait=False, cancel_futures=True)
    except Exception:  # noqa: BLE001 - already broken
        pass


def _decode_in_worker(rec: InstanceRecord, photometric: str) -> dict[int, np.ndarray]:
    import warnings
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    return _read_pydicom(rec, photometric)


# --------------------------------------------------------------------------- loading
class SeriesLoader:
    """Load one stack of a series, middle slice first, the rest on a worker thread.

    ``on_first(volume, k)`` fires when slice k (the middle one) is ready,
    ``on_slice(k)`` for every slice, ``on_progress(done, total)`` as slices land and
    ``on_done(volume)`` / ``on_error(message)`` at the end.  Callbacks run on the worker
    thread; a GUI forwards them to its own thread.
    """

    def __init__(self, series: SeriesInfo, stack: int = 0, *, workers: int | None = None,
                 on_first: Callable | None = None, on_slice: Callable | None = None,
                 on_progress: Callable | None = None, on_done: Callable | None = None,
                 on_error: Callable | None = None):
        self.series = series
        self.plans = plan_series(series)
        if not 0 <= stack < len(self.plans):
            raise LoadError(f"stack {stack + 1} requested, the series has {len(self.plans)}")
        self.plan = self.plans[stack]
        self.workers = workers or min(4, os.cpu_count() or 2)
        self.on_first, self.on_slice, self.on_progress = on_first, on_slice, on_progress
        self.on_done, self.on_error = on_done, on_error
        self._cancel = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.first_slice_s: float | None = None
        self.start_k: int | None = None  # read this slice first (viewing.start_index); None: the middle
        self.volume = self._allocate()

    # ------------------------------------------------------------ set-up
    def _allocate(self) -> Volume:
        p = self.plan
        n = len(p.slots)
        colour = p.photometric in ("RGB", "PALETTE COLOR") or p.photometric.startswith("YBR") or p.samples == 3
        shape = (n, p.rows, p.cols, 3) if colour else (n, p.rows, p.cols)
        nbytes = int(np.prod(shape, dtype=np.int64)) * p.dtype.itemsize
        if nbytes > MAX_SERIES_BYTES:  # the index bounds each file; this bounds the whole stack
            raise LoadError(f"series {self.series.uid}: {n} slices of {p.rows}x{p.cols} would need "
                            f"{nbytes / 1024**3:.1f} GiB (limit {MAX_SERIES_BYTES / 1024**3:.0f} GiB)")
        # np.zeros maps fresh pages lazily: unloaded slices cost nothing and show black.
        arr = np.zeros(shape, dtype=p.dtype)
        r0 = p.records[p.slots[0].rec]
        modality = str(r0.get("Modality", "")).upper()
        rescale_type = str(r0.get("RescaleType", "") or "")
        units = "HU" if modality == "CT" and rescale_type in ("", "HU") and p.units_hu \
            else rescale_type if rescale_type not in ("US", "HU") else ""
        vol = Volume(array=arr, spacing=p.spacing, origin=p.origin, direction=p.direction,
                     modality=modality, units=units,
                     photometric="RGB" if colour else p.photometric,
                     has_geometry=p.has_geometry, is_cine=p.is_cine, frame_time_ms=p.frame_time_ms,
                     slice_positions=p.positions, warnings=list(self.series.warnings) + list(p.warnings),
                     series_uid=self.series.uid, description=self.series.description,
                     spacing_source=p.spacing_source, calibrated_regions=list(p.calibrated_regions),
                     headers=[p.records[s.rec] for s in p.slots],
                     source_paths=sorted({r.display_path for r in p.records}))
        vol.frames = [s.frame for s in p.slots]  # frame of each slice within its file
        # the widest BitsStored of the stack: 16-bit colour is shown scaled by 2^bits - 1
        vol.bits_stored = max(int(p.records[ri].get("BitsStored", p.records[ri].bits_allocated)
                                  or p.records[ri].bits_allocated) for ri in {s.rec for s in p.slots})
        # an enhanced object keeps SliceThickness per frame (Pixel Measures), not in its header
        vol.slice_thicknesses = ([s.thickness for s in p.slots]
                                 if any(s.thickness is not None for s in p.slots) else None)
        vol.loaded = np.zeros(n, dtype=bool)
        mid = len(p.slots) // 2
        vol.window_presets = display.presets_for(vol, p.slots[mid].window)
        # one file window per series, the middle image's: when the images carry different ones
        # (per-image windows, enhanced frames' Frame VOI LUT), the preset names its image
        kinds = {(tuple(map(str, s.window[0])), tuple(map(str, s.window[1]))) if s.window else None for s in p.slots}
        if len(kinds) > 1:
            for wp in vol.window_presets:
                if wp.source == "dicom" and wp.name.startswith("File window"):
                    wp.name += f" (image {mid + 1})"
            vol.warnings.append(f"the images carry {len(kinds)} different file windows (WindowCenter/Width): "
                                f"the File window preset is image {mid + 1}'s")
        rec0 = p.records[p.slots[0].rec]
        if rec0.fast and "VOILUTSequence" not in rec0.flags:
            # the header walk kept PresentationLUTShape: no pydicom header needed (native CT
            # folders never import pydicom)
            ds0, raw_shape = None, rec0.get("PresentationLUTShape", "")
        else:
            ds0 = _header(p, p.slots[0].rec)  # one header per stack: VOI LUT, Presentation LUT Shape
            raw_shape = None
        try:
            if ds0 is not None:
                raw_shape = ds0.get("PresentationLUTShape", "")
            shape = str(raw_shape or "").strip().upper()
        except Exception:  # noqa: BLE001 - a malformed value: say so, show the identity
            shape = ""
            vol.warnings.append("PresentationLUTShape unreadable: not applied")
        if shape in ("INVERSE", "IDENTITY"):
            vol.presentation_lut_shape = shape
        if ds0 is not None and "VOILUTSequence" in ds0 and not colour:
            display.attach_voi_lut(vol, ds0)
        return vol

    def _units(self) -> list[tuple[int, list[int]]]:
        """Work units (record index, slots), the middle slice's unit first, then outward."""
        p = self.plan
        n = len(p.slots)
        by_rec: dict[int, list[int]] = defaultdict(list)
        for k, s in enumerate(p.slots):
            by_rec[s.rec].append(k)
        units = []
        for ri, ks in by_rec.items():
            rec = p.records[ri]
            if _fast_native(rec):
                # small units (the first slice shows at once), but about NATIVE_UNIT_BYTES each: a
                # file of many tiny frames is not one thread-pool job per frame
                per = max(1, NATIVE_UNIT_BYTES // max(1, rec.rows * rec.columns * _native_dtype(rec).itemsize))
                units.extend((ri, ks[i:i + per]) for i in range(0, len(ks), per))
            else:
                units.append((ri, ks))
        mid = n // 2 if self.start_k is None else int(self.start_k)  # start_k: the slice shown first
        units.sort(key=lambda u: (0 if mid in u[1] else 1, min(abs(k - mid) for k in u[1]), min(u[1])))
        return units

    def _run_unit(self, unit, data: dict | None = None) -> None:
        ri, ks = unit
        p = self.plan
        rec = p.records[ri]
        frames = [p.slots[k].frame for k in ks]
        if data is None:
            data = _read_native(rec, frames) if _fast_native(rec) else _read_pydicom(rec, p.photometric)
        arr = self.volume.array
        for k in ks:
            s = p.slots[k]
            if s.frame not in data:
                raise LoadError(f"{rec.display_path}: frame {s.frame + 1} missing after decoding")
            a = data[s.frame]
            if a.shape[:2] != (p.rows, p.cols):
                raise LoadError(f"{rec.display_path}: decoded size {a.shape[:2]} != {(p.rows, p.cols)}")
            if s.slope != 1.0 or s.intercept != 0.0:
                if arr.dtype.kind == "f":
                    np.multiply(a, s.slope, out=arr[k], casting="unsafe")
                    arr[k] += s.intercept
                else:
                    arr[k] = a  # stored values fit the output type (checked in _plan_dtype)
                    arr[k] += arr.dtype.type(int(s.intercept))
            else:
                arr[k] = a
            with self.volume._lock:
                self.volume.loaded[k] = True

    # ------------------------------------------------------------ running
    def load_middle(self) -> int:
        """Read only the middle slice (and whatever shares its file); return its index.

        For thumbnails and previews: nothing else is read.
        """
        unit = self._units()[0]
        self._run_unit(unit)
        return int(len(self.plan.slots) // 2) if len(self.plan.slots) // 2 in unit[1] else unit[1][0]

    def run(self) -> Volume:
        """Load synchronously on the calling thread (with a pool for the decoding)."""
        t0 = time.perf_counter()
        units = self._units()
        total = len(self.plan.slots)
        done = 0
        errors: list[str] = []
        first, rest = units[:1], units[1:]

        def finish(unit, exc):
            nonlocal done
            if exc is not None:
                errors.append(str(exc))
            else:
                done += len(unit[1])
                for k in unit[1]:
                    if self.on_slice:
                        self.on_slice(k)
            if self.on_progress:
                self.on_progress(done, total)

        for u in first:
            try:
                self._run_unit(u)
                finish(u, None)
            except _FATAL:
                raise
            except BaseException as e:  # noqa: BLE001 - reported per slice
                finish(u, e if isinstance(e, LoadError) else
                       LoadError(f"{self.plan.records[u[0]].display_path}: {_one_line(e)}"))
        self.first_slice_s = time.perf_counter() - t0
        self._first.set()
        if self.on_first and self.volume.loaded.any():
            self.on_first(self.volume, int(np.argmax(self.volume.loaded)))
        if rest and not self._cancel.is_set():
            native = all(_fast_native(self.plan.records[u[0]]) for u in rest)
            if native or self.workers <= 1 or len(rest) < 4:
                # Native slices: file reads release the GIL, two threads overlap them.
                with ThreadPoolExecutor(2 if native else max(1, self.workers)) as ex:
                    futs = [(u, ex.submit(self._guarded, u)) for u in rest]
                    for u, fut in futs:
                        finish(u, fut.result())
                        if self._cancel.is_set():
                            ex.shutdown(wait=True, cancel_futures=True)
                            break
            else:
                # Compressed: the decoders (openjpeg, libjpeg) hold the GIL, so threads do
                # not help; decode in worker processes and place the frames here.
                ex = decode_pool(self.workers)
                try:
                    futs = [(u, ex.submit(_decode_in_worker, self.plan.records[u[0]], self.plan.photometric))
                            for u in rest]
                except BrokenProcessPool:  # broke between creation and use: one fresh try
                    _discard_pool(ex)
                    ex = decode_pool(self.workers)
                    futs = [(u, ex.submit(_decode_in_worker, self.plan.records[u[0]], self.plan.photometric))
                            for u in rest]
                for u, fut in futs:
                    if self._cancel.is_set():
                        fut.cancel()
                        continue
                    path = self.plan.records[u[0]].display_path
                    try:
                        self._run_unit(u, fut.result())
                        finish(u, None)
                    except BrokenProcessPool:
                        # A decoder crashed its worker process (e.g. a native fault on a corrupt
                        # frame): every pending job of that pool is lost; the next load gets a
                        # fresh pool.
                        _discard_pool(ex)
                        finish(u, LoadError(f"{path}: a decoder process stopped unexpectedly "
                                            "(corrupt compressed data?)"))
                    except _FATAL:
                        raise
                    except BaseException as e:  # noqa: BLE001 - reported per slice
                        finish(u, e if isinstance(e, LoadError) else LoadError(f"{path}: {_one_line(e)}"))
        if errors:
            errors = list(dict.fromkeys(errors))
            shown = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
            self.volume.warnings.append(f"{len(errors)} part(s) could not be read: {shown}")
        if not self.volume.loaded.any():
            raise LoadError(errors[0] if errors else "nothing could be loaded")
        if self._cancel.is_set():
            self.volume.warnings.append(f"loading cancelled: {int(self.volume.loaded.sum())} of {total} slices read")
        from ..privacy.audit import record_open  # the audit trail: who opened which study (never raises)
        record_open(self.series, self.volume, self.plans.index(self.plan))
        return self.volume

    def _guarded(self, unit):
        if self._cancel.is_set():
            return None
        try:
            self._run_unit(unit)
            return None
        except _FATAL:
            raise
        except BaseException as e:  # noqa: BLE001 - PanicException included
            return e if isinstance(e, LoadError) else \
                LoadError(f"{self.plan.records[unit[0]].display_path}: {_one_line(e)}")

    def start(self) -> Volume:
        """Load on a worker thread; returns the (still filling) volume at once."""
        def target():
            try:
                vol = self.run()
                if self.on_done:
                    self.on_done(vol)
            except BaseException as e:  # noqa: BLE001 - reported through on_error, never a hang
                self.error = str(e) if isinstance(e, UserError) else _one_line(e)
                self.error = self.error.splitlines()[0] if self.error.strip() else type(e).__name__
                if self.on_error:
                    try:
                        self.on_error(self.error)
                    except Exception:  # noqa: BLE001 - a failing callback must not hide the error
                        pass
            finally:
                self._first.set()  # waiters are always released
        self._thread = threading.Thread(target=target, name="series-loader", daemon=True)
        self._thread.start()
        return self.volume

    def wait_first(self, timeout: float | None = None) -> bool:
        return self._first.wait(timeout)

    def wait(self, timeout: float | None = None) -> Volume:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error:
            raise LoadError(self.error)
        return self.volume

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()


def load_series(series: SeriesInfo, stack: int = 0, progress: Callable | None = None) -> Volume:
    """Load a whole stack synchronously (CLI, analysis, tests)."""
    return SeriesLoader(series, stack, on_progress=progress).run()
