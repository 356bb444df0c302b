"""Geometry for reading several series side by side (no Qt): where a slice lies in patient
space, which slice of another series lies at the same position (linked scrolling by mm,
never by index), where the plane of one view cuts another (reference lines), and on which
image a series opens.

All positions are LPS millimetres, through ``Volume.affine`` (see :mod:`imaging_assist.volume`).
For the acquired (native) plane the distance along the slice normal comes from
``Volume.slice_positions`` (ImagePositionPatient · normal), so uneven spacing is exact.
Hand-written because it is a few lines of linear algebra on our own ``Volume`` and
``Plane`` conventions; ITK/SimpleITK would need the volume copied into an image first.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .layers import Plane
from .volume import Volume

# Normals closer than this angle count as parallel (linked scrolling, no reference line).
PARALLEL_DEG = 10.0
# Reference lines are not drawn between planes this close to parallel.
REFERENCE_MIN_DEG = 1.0


@dataclass
class SliceGeometry:
    """One displayed slice: display pixel (u, v) is at ``origin + u * right + v * down`` (LPS mm)."""

    origin: np.ndarray
    right: np.ndarray  # LPS mm per display pixel to the right
    down: np.ndarray   # LPS mm per display pixel down
    rows: int
    cols: int

    def __post_init__(self):
        n = np.cross(self.right, self.down)
        self.normal = n / (np.linalg.norm(n) or 1.0)
        self.center = self.origin + self.right * (self.cols - 1) / 2.0 + self.down * (self.rows - 1) / 2.0

    def point(self, u: float, v: float) -> np.ndarray:
        return self.origin + u * self.right + v * self.down


def frame_of_reference(vol: Volume) -> str:
    """FrameOfReferenceUID of the volume's first header ('' when unknown)."""
    for rec in (vol.headers or [])[:1]:
        get = getattr(rec, "get", None)
        if get is not None:
            return str(get("FrameOfReferenceUID") or "").strip()
    return ""


def _lps(vol: Volume, kji) -> np.ndarray:
    k, j, i = (float(x) for x in kji)
    return (vol.affine @ np.array([i, j, k, 1.0]))[:3]


def slice_geometry(vol: Volume, plane: Plane, index: int) -> SliceGeometry:
    """Where slice ``index`` of ``plane`` lies in patient space (memoised on the volume, keyed
    by everything the result depends on: linked scrolling and reference lines ask for the same
    slices on every repaint)."""
    sp = vol.slice_positions
    key = (tuple(vol.array.shape[:3]), tuple(map(float, vol.spacing)), tuple(map(float, vol.origin)),
           np.asarray(vol.direction, float).tobytes(), None if sp is None or not len(sp) else (id(sp), len(sp), float(sp[0]), float(sp[-1])), plane, int(index))
    cache = vol.__dict__.setdefault("_slice_geometry_cache", {})
    hit = cache.get(key)
    if hit is None:
        if len(cache) > 4096:
            cache.clear()
        hit = cache[key] = _slice_geometry(vol, plane, index)
    return hit


def _slice_geometry(vol: Volume, plane: Plane, index: int) -> SliceGeometry:
    shape3 = tuple(vol.array.shape[:3])
    p0 = _lps(vol, plane.to_voxel(0.0, 0.0, index, shape3))
    right = _lps(vol, plane.to_voxel(1.0, 0.0, index, shape3)) - p0
    down = _lps(vol, plane.to_voxel(0.0, 1.0, index, shape3)) - p0
    if plane.axis == 0 and vol.slice_positions is not None and 0 <= index < len(vol.slice_positions):
        # the affine uses the mean slice step: put the slice where it was acquired (along the
        # tilted step of a gantry-tilt stack, not only along the normal)
        p0 = vol.acquired_lps(*plane.to_voxel(0.0, 0.0, index, shape3))
    rows, cols = plane.shape2d(shape3)
    return SliceGeometry(p0, right, down, rows, cols)


def native_positions(vol: Volume) -> np.ndarray:
    """Position of every acquired slice along ``vol.normal`` (mm)."""
    if vol.slice_positions is not None and len(vol.slice_positions) == vol.n_slices:
        return np.asarray(vol.slice_positions, float)
    n = vol.normal
    return np.array([float(_lps(vol, (k, 0, 0)) @ n) for k in range(vol.n_slices)])


def index_at(vol: Volume, point_lps) -> tuple[int, float]:
    """The acquired slice nearest to a patient point, and the point's distance from that
    slice's plane in mm (large when the point lies outside the series)."""
    d = float(np.asarray(point_lps, float) @ vol.normal)
    pos = native_positions(vol)
    k = int(np.argmin(np.abs(pos - d)))
    return k, abs(float(pos[k]) - d)


def gap_note(vol: Volume, distance_mm: float) -> str:
    """What a linked viewport says when the followed position lies between or beyond ``vol``'s
    slices (``index_at``'s distance over half the usual slice step): it shows the nearest slice,
    which is not at that position, and says so rather than parking there silently."""
    pos = native_positions(vol)
    step = float(np.median(np.abs(np.diff(pos)))) if len(pos) > 1 else abs(float(vol.spacing[2]))
    if not (distance_mm > 0.5 * step + 0.05):  # NaN (no geometry) says nothing
        return ""
    return f"no slice at this position: the nearest shown, {distance_mm:.1f} mm away"


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two plane normals, 0-90 degrees."""
    c = abs(float(np.dot(a, b)) / ((np.linalg.norm(a) * np.linalg.norm(b)) or 1.0))
    return math.degrees(math.acos(min(1.0, c)))


def link_check(a: Volume, b: Volume, manual: bool = False) -> tuple[bool, str]:
    """Can slices of ``b`` follow ``a`` by position?  (ok, reason/warning in one line).

    Linked automatically only with the same FrameOfReferenceUID (same patient coordinate
    system); with different or unknown frames only when the user links by hand, and then
    with a warning, since equal mm do not mean the same anatomy."""
    if not (a.has_geometry and b.has_geometry) or a.is_cine or b.is_cine:
        return False, "no patient geometry (projection, cine or plain image): not linked"
    ang = angle_deg(a.normal, b.normal)
    if ang > PARALLEL_DEG:
        return False, f"slice planes differ by {ang:.0f} degrees: not linked"
    fa, fb = frame_of_reference(a), frame_of_reference(b)
    if fa and fa == fb:
        return True, ""
    why = "different frames of reference" if (fa and fb) else "frame of reference unknown"
    if manual:
        return True, f"linked by hand across {why}: the same mm need not be the same anatomy"
    return False, f"{why}: not linked (link by hand if the patient did not move)"


def same_space(a: Volume, b: Volume, manual: bool = False) -> bool:
    """Positions of ``a`` may be drawn on ``b`` (reference lines): both have patient geometry
    and share a FrameOfReferenceUID, or the user linked them by hand."""
    if not (a.has_geometry and b.has_geometry) or a.is_cine or b.is_cine:
        return False
    fa, fb = frame_of_reference(a), frame_of_reference(b)
    return bool(fa and fa == fb) or manual


def linked_index(src: Volume, src_index: int, dst: Volume, offset_mm: float = 0.0) -> tuple[int, float]:
    """The slice of ``dst`` at the position of ``src``'s acquired slice ``src_index`` (its centre),
    plus ``offset_mm`` along ``dst``'s normal; and the distance in mm from that slice."""
    c = slice_geometry(src, Plane.native(), src_index).center
    return index_at(dst, c + dst.normal * offset_mm)


def manual_linked_index(src: Volume, src_index: int, dst: Volume, src_offset_mm: float = 0.0,
                        dst_offset_mm: float = 0.0) -> tuple[int, float]:
    """The slice of ``dst`` for series linked by hand: each keeps its own distance (``*_offset_mm``,
    along its own normal) to the series linked to. The point is the source slice's centre moved
    back by the source's distance along the source's normal, then by the destination's along the
    destination's: a feet-first series' normal points the other way, and one number subtracted
    and applied along the destination's normal sent it to the mirrored position."""
    c = slice_geometry(src, Plane.native(), src_index).center
    return index_at(dst, c - src.normal * src_offset_mm + dst.normal * dst_offset_mm)


def reference_line(src: Volume, src_plane: Plane, src_index: int,
                   dst: Volume, dst_plane: Plane, dst_index: int):
    """Where the plane of the source slice cuts the shown destination slice, as a segment
    ((u0, v0), (u1, v1)) in destination display pixels clipped to the image; None when the
    planes are (nearly) parallel or do not meet inside the image."""
    s = slice_geometry(src, src_plane, src_index)
    d = slice_geometry(dst, dst_plane, dst_index)
    m = s.normal
    if angle_deg(m, d.normal) < REFERENCE_MIN_DEG:
        return None
    # points X(u, v) = O + u R + v D on the destination with (X - S) . m = 0
    a, b, c = float(d.right @ m), float(d.down @ m), float((d.origin - s.center) @ m)
    u_lo, u_hi, v_lo, v_hi = -0.5, d.cols - 0.5, -0.5, d.rows - 0.5
    pts = []
    if abs(b) > 1e-12:
        for u in (u_lo, u_hi):
            v = -(a * u + c) / b
            if v_lo - 1e-9 <= v <= v_hi + 1e-9:
                pts.append((u, v))
    if abs(a) > 1e-12:
        for v in (v_lo, v_hi):
            u = -(b * v + c) / a
            if u_lo - 1e-9 <= u <= u_hi + 1e-9:
                pts.append((u, v))
    if len(pts) < 2:
        return None
    # the two farthest apart (corners can repeat)
    best, bd = None, -1.0
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            dd = math.dist(pts[i], pts[j])
            if dd > bd:
                best, bd = (pts[i], pts[j]), dd
    return best if bd > 1e-6 else None


def start_index(vol: Volume, remembered: bool = True) -> int:
    """The image a series opens on: where the reader left it (the viewer's active
    :class:`positions.PositionStore`, same number of images), else the first image.

    ``remembered=False`` gives the first image only:

    Convention (the same as Weasis and OHIF): the first image in the series order, i.e. the
    lowest InstanceNumber; for a CT that is where the scan began (often the most superior
    slice of a chest CT, the most inferior of a head CT scanned upwards).  Cine and
    multi-frame: frame 1.  Without InstanceNumbers: the first stored slice."""
    n = vol.n_slices
    if remembered:
        from . import positions
        store = positions.active()
        k = store.recall(vol) if store is not None else None
        if k is not None:
            return k
    if n <= 1 or vol.is_cine or not vol.headers:
        return 0
    nums = []
    for rec in vol.headers[:n]:
        try:
            nums.append(int(rec.get("InstanceNumber")))
        except (TypeError, ValueError, AttributeError):
            return 0
    if len(nums) != n or len(set(nums)) == 1:  # one multi-frame file: frame order
        return 0
    return int(np.argmin(nums))


# StudyDate as DA (YYYYMMDD), or the YYYY.MM.DD form PS3.5 asks readers to accept (ACR-NEMA):
# compared as text, "2020.12.01" sorted before "20200601" and a later study became the prior.
# ISO (YYYY-MM-DD) is how results.json writes a study date (nodules.growth reads those).
_DATE_FORMATS = ((re.compile(r"\d{8}"), "%Y%m%d"), (re.compile(r"\d{4}\.\d{2}\.\d{2}"), "%Y.%m.%d"),
                 (re.compile(r"\d{4}-\d{2}-\d{2}"), "%Y-%m-%d"))


def parse_date(text) -> _dt.date | None:
    """A StudyDate (DA ``YYYYMMDD`` or ``YYYY.MM.DD``; ISO ``YYYY-MM-DD``) as a date; None when
    it is not one (an unknown date, never compared as text)."""
    if isinstance(text, _dt.date):
        return text
    s = str(text or "").strip()
    for pattern, fmt in _DATE_FORMATS:
        if pattern.fullmatch(s):
            try:
                return _dt.datetime.strptime(s, fmt).date()
            except ValueError:
                return None
    return None


def latest_today() -> _dt.date:
    """The latest date anywhere on Earth now: the date at UTC+14 (the Line Islands).  A
    StudyDate is the site's local date, and a site ahead of the workstation's time zone is
    already on the workstation's tomorrow: compared with the workstation's date.today(), a study
    made there today was "dated in the future", listed last and given no priors."""
    return (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=14)).date()


def in_future(study, today: _dt.date | None = None) -> bool:
    """The study is dated after ``today`` (default :func:`latest_today`: no site's today is in
    the future), a typo: it is never the most recent study."""
    d = parse_date(getattr(study, "date", "")) if study is not None else None
    return d is not None and d > (today or latest_today())


def _when(study):
    """(date, time) to order studies by; None when the date is missing, not a date or in the
    future (the order of such a study is unknown)."""
    d = parse_date(getattr(study, "date", "")) if study is not None else None
    if d is None or in_future(study):
        return None
    return d, str(getattr(study, "time", "") or "").replace(":", "").strip()  # TM (HHMMSS) or HH:MM:SS


def date_note(study) -> str:
    """What is wrong with a study's date for ordering it ('' when nothing)."""
    raw = str(getattr(study, "date", "") or "").strip()
    if not raw:
        return "no study date"
    d = parse_date(raw)
    if d is None:
        return f"study date {raw[:20]!r} is not a date"
    if in_future(study):
        return f"dated in the future ({d.isoformat()}): check"
    return ""


class Identity(NamedTuple):
    """Who a study or series says it was made of."""

    id: str
    name: str
    birth_date: str
    issuer: str  # IssuerOfPatientID ('' when not given)


def _recorded(series_list, keyword: str) -> str:
    for s in series_list:
        first = getattr(s, "_first", None)
        v = str(first(keyword) or "").strip() if first is not None else ""
        if v:
            return v
    return ""


def identity_of(series_list, patient=None) -> Identity:
    """The patient of ``series_list`` (SeriesInfo) by their files' headers, the index's patient
    entry where the files do not say."""
    series_list = [s for s in series_list if s is not None]
    get = lambda kw, attr: _recorded(series_list, kw) or str(getattr(patient, attr, "") or "").strip()  # noqa: E731
    return Identity(get("PatientID", "id"), get("PatientName", "name"), get("PatientBirthDate", "birth_date"),
                    _recorded(series_list, "IssuerOfPatientID"))


def study_identity(index, study) -> Identity:
    """The patient a study of ``index`` was made of (:func:`identity_of`)."""
    pats = index.patients if index is not None else []
    pat = next((p for p in pats if any(st is study for st in p.studies)), None)
    return identity_of(getattr(study, "series", []), pat)


def other_issuer(a: Identity, b: Identity) -> bool:
    """The same Patient ID given by two issuers (IssuerOfPatientID both given and different):
    two patients, as nodule growth takes them."""
    return bool(a.issuer and b.issuer and a.issuer != b.issuer)


def _same_name(a: str, b: str) -> bool:
    from .dicom.index import name_key  # the index's rule: one patient entry is one name

    return name_key(a) == name_key(b)


def identity_note(other: Identity, here: Identity) -> str:
    """One line when a study of the same Patient ID names another patient name or birth date
    than the current one (a typo, or another patient): it is still matched, and said."""
    what = []
    if other.name and here.name and not _same_name(other.name, here.name):
        what.append(f"different name ({other.name} / {here.name})")
    if other.birth_date and here.birth_date and (parse_date(other.birth_date) or other.birth_date) != \
            (parse_date(here.birth_date) or here.birth_date):
        what.append(f"different birth date ({other.birth_date} / {here.birth_date})")
    return f"same patient ID, {' and '.join(what)}: check the patient" if what else ""


def other_studies(index, series) -> list:
    """The other studies of ``series``' patient in a StudyIndex (same PatientID; studies
    holding images only), most recent first, later ones included (:func:`is_later` tells
    them), studies of unknown or future date last.  Patients without an ID are never matched;
    the same ID from another issuer (IssuerOfPatientID both given and different) is another
    patient.  A study under another name or birth date is matched: :func:`patient_note` says it."""
    if index is None or series is None:
        return []
    pat = index.patient_of(series)
    here = index.study_of(series)
    if pat is None or not str(pat.id or "").strip():
        return []
    pid = str(pat.id).strip()
    me = identity_of(here.series if here is not None else [series], pat)
    out = [st for p in index.patients if str(p.id or "").strip() == pid for st in p.studies
           if st is not here and any(s.is_image for s in st.series)
           and not other_issuer(study_identity(index, st), me)]
    # Python's sort is stable with reverse=True: studies of unknown date keep their order, last
    return sorted(out, key=lambda st: (1, *_when(st)) if _when(st) else (0,), reverse=True)


def patient_note(index, series, study) -> str:
    """The note for ``study`` shown as a study of ``series``' patient ('' when nothing)."""
    here = index.study_of(series) if index is not None and series is not None else None
    me = identity_of(here.series if here is not None else [series], index.patient_of(series) if index else None)
    return identity_note(study_identity(index, study), me)


def is_later(study, here) -> bool:
    """True when ``study`` was made after ``here`` (StudyDate, then StudyTime); False when
    either date is unknown, not a date or in the future (never guessed later)."""
    a, b = _when(study), _when(here)
    return a is not None and b is not None and a > b


def prior_studies(index, series) -> list:
    """The studies of ``series``' patient made before it (a later study is not its prior:
    opening the older of two studies hung the newer one as "prior"), most recent first;
    studies without a date come last, as they cannot be placed.  None when the current study's
    date is unknown or in the future: which study is older cannot be told (the others are
    still listed by :func:`other_studies`); a study dated in the future is never a prior."""
    here = index.study_of(series) if (index is not None and series is not None) else None
    if _when(here) is None:
        return []
    return [st for st in other_studies(index, series) if not is_later(st, here) and not in_future(st)]


def matching_series(study, like=None):
    """The series of ``study`` to compare with ``like``: same modality first, then the same
    body part, then the same series description, then the most images; None when the study
    has no images."""
    cands = [s for s in study.series if s.is_image]
    if not cands:
        return None
    mod = like.modality if like is not None else ""
    bp = body_part(like)
    desc = (like.description or "").strip().lower() if like is not None else ""
    return max(cands, key=lambda s: (s.modality == mod, bool(bp) and body_part(s) == bp,
                                     bool(desc) and s.description.strip().lower() == desc, s.n_frames))


def body_part(series) -> str:
    """BodyPartExamined of a series, upper case ('' when not recorded)."""
    return str(getattr(series, "body_part", "") or "").strip().upper() if series is not None else ""


DEFAULT_CINE_FPS = 15.0


def cine_rate(vol: Volume) -> tuple[float, str]:
    """Frames per second a cine plays at, and where that came from: FrameTime (kept by the
    header walk), else RecommendedDisplayFrameRate or CineRate read from the first file's
    header (pydicom, header only), else ``DEFAULT_CINE_FPS``.  Clamped to 1-120 fps."""
    def ok(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return f if math.isfinite(f) and f > 0 else None

    if vol.frame_time_ms and ok(vol.frame_time_ms):
        return min(120.0, max(1.0, 1000.0 / float(vol.frame_time_ms))), "FrameTime"
    rec = (vol.headers or [None])[0]
    if rec is not None and getattr(rec, "path", None):
        for kw in ("RecommendedDisplayFrameRate", "CineRate"):
            v = ok(rec.get(kw)) if hasattr(rec, "get") else None
            if v:
                return min(120.0, max(1.0, v)), kw
        try:
            from .dicom.header import read_dataset
            ds = read_dataset(rec, stop_before_pixels=True)
            for kw in ("RecommendedDisplayFrameRate", "CineRate"):
                v = ok(ds.get(kw))
                if v:
                    return min(120.0, max(1.0, v)), kw
        except Exception:  # noqa: BLE001 - an unreadable header means: no rate in the file
            pass
    return DEFAULT_CINE_FPS, "default"
