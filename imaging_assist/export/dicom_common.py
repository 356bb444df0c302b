"""What every DICOM result object shares: the source datasets, per-slice geometry from the
engine's :class:`~imaging_assist.volume.Volume`, equipment and algorithm identification,
coded concepts for labels, and the one error type (no Qt; highdicom builds the objects).

Geometry rule: positions and orientation come from the Volume (``affine`` in LPS and its
``slice_positions`` along the normal), never re-derived from the headers, so an exported
object sits exactly where the viewer showed the result.  For a gantry-tilted stack the
Volume's slice axis is the sheared step, so each frame lands on its source slice; with
uneven spacing the per-slice position along the normal is used, not the mean spacing.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np

from ..errors import UserError

MANUFACTURER = "Imaging Assist (research software)"
MODEL_NAME = "imaging-assist"
SERIAL = "none"
NOT_CLINICAL = "NOT FOR CLINICAL USE"
#: Specific Character Set of every object highdicom builds (its ``specific_character_set=``):
#: otherwise highdicom copies the source's and refuses the standard Japanese / Korean
#: "\\ISO 2022 IR 87" (empty first value) and any unknown or misspelt term, so no SEG, SR or
#: map was written.  The values are Python strings (pydicom decoded them with the source's
#: set), and UTF-8 holds every one of them.
CHARSET = "ISO_IR 192"


class DicomExportError(UserError):
    """A DICOM result object cannot be written (one line, says why)."""


@contextmanager
def building(what: str):
    """highdicom's and pydicom's own checks on the values an object is made of (a ValueError or
    TypeError: "must not contain the backslash character", a value out of its VR's range) as
    one :class:`DicomExportError` line naming the object, instead of an internal error."""
    try:
        yield
    except (ValueError, TypeError) as e:
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise DicomExportError(f"{what} not written: {text}") from None
    except (AttributeError, KeyError, IndexError) as e:
        # a library's assumption about the source the source does not meet (highdicom reading
        # functional groups of a multi-frame image that has none): one line, not a traceback
        text = " ".join(str(e).split())[:160]
        raise DicomExportError(f"{what} not written: the source lacks what the writer needs "
                               f"({type(e).__name__}: {text})") from None


def dicom_text(text, limit: int = 1024, backslash: bool = True) -> str:
    """A reader's note as a DICOM text value (UT; ST with ``backslash=False``): control
    characters other than the line breaks the text VRs allow (CR, LF, FF) become spaces (a
    pasted NUL, BEL or TAB made the object fail dciodvfy), cut to ``limit`` characters.
    pydicom refuses a backslash in ST (the presentation state's text objects), so there it
    becomes "/"."""
    text = str(text) if backslash else str(text).replace("\\", "/")
    return "".join(ch if ch in "\n\r\f" or (ch >= " " and ch != "\x7f") else " " for ch in text)[:limit]


def software_version() -> str:
    from .. import tool_version

    return tool_version()


def equipment_kwargs() -> dict:
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": MODEL_NAME,
            "software_versions": software_version(), "device_serial_number": SERIAL}


_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def source_datasets(volume) -> list:
    """Header-only pydicom datasets of the Volume's source instances, one per slice, in
    slice order.  A multi-frame source gives one dataset (its frames are the slices).  Each
    is read anew (the caller's to change); the DA and TM values results copy, written in the
    ACR-NEMA forms, are given in the DICOM ones (:func:`dicom_date_value`)."""
    from ..dicom import read_dataset

    headers = list(getattr(volume, "headers", None) or [])
    if not headers:
        raise DicomExportError("the image has no DICOM source (plain PNG/JPEG/TIFF): DICOM result "
                               "objects cannot reference a source; only the PDF report is written")
    seen: dict = {}
    out = []
    for rec in headers:
        key = (rec.path, rec.member)
        if key in seen:
            continue
        try:
            ds = read_dataset(rec, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - unreadable source: one line
            raise DicomExportError(f"cannot re-read the source header {rec.path}: {e}") from None
        seen[key] = ds
        out.append(ds)
    for ds in out:
        for kw in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not str(getattr(ds, kw, "") or "").strip():
                raise DicomExportError(f"the source {getattr(ds, 'filename', '')} has no {kw}: a result "
                                       "object cannot reference it")
    for ds in out:  # Type 2 patient/study attributes a result copies: empty when the source lacks them
        for kw in _TYPE2_COPIED:
            if kw not in ds:
                setattr(ds, kw, "")
        _dicom_dates(ds)
    if len({str(ds.StudyInstanceUID) for ds in out}) > 1:
        raise DicomExportError("the source slices belong to more than one study")
    return out


_ACR_NEMA = {"DA": re.compile(r"(\d{4})\.(\d{2})\.(\d{2})"),
             "TM": re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?")}


def dicom_date_value(value, vr: str):
    """A DA written ``YYYY.MM.DD`` as ``YYYYMMDD`` and a TM written ``hh:mm:ss[.f]`` as
    ``hhmmss[.f]``: the ACR-NEMA forms PS3.5 asks readers to accept but a writer may not use
    (highdicom refused "08:10:00", so no SEG or SR was written, and the PDF failed dciodvfy).
    Any other value is returned as it is."""
    def one(v):
        m = _ACR_NEMA[vr].fullmatch(str(v).strip()) if vr in _ACR_NEMA else None
        return "".join(g or "" for g in m.groups()) if m else v

    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [one(v) for v in value]
    return one(value)


# the DA / TM attributes a result object copies from its source (highdicom's patient, study and
# series modules, the PDF's): only these are looked at (reading every element of every slice
# header doubled the time of source_datasets on a 140-slice CT)
_DATES_COPIED = ("StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "ContentDate", "ContentTime",
                 "AcquisitionDate", "AcquisitionTime", "PatientBirthDate", "PatientBirthTime",
                 "InstanceCreationDate", "InstanceCreationTime")


def _dicom_dates(ds) -> None:
    """The source header's DA and TM values that results copy, in the forms a result object may
    carry (:func:`dicom_date_value`); the elements are replaced, never changed in place."""
    from pydicom.dataelem import DataElement

    for kw in _DATES_COPIED:
        try:
            elem = ds.data_element(kw)
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert: left to the writers
            continue
        if elem is not None and elem.VR in _ACR_NEMA and elem.value:
            fixed = dicom_date_value(elem.value, elem.VR)
            if fixed != elem.value:
                ds[elem.tag] = DataElement(elem.tag, elem.VR, fixed)


def charset_warnings(volume) -> list[str]:
    """One warning line when the source's Patient Name was read in an undeclared or unknown
    character set, or holds bytes its declared set cannot decode (``dicom.header.charset_doubt``):
    the objects are UTF-8 and carry the name as it was read, which may be mojibake
    ("MÃ¼ller" for a UTF-8 "Müller" read as Latin-1); the export says so instead of passing
    it off as the name."""
    from ..dicom.header import charset_doubt

    for rec in getattr(volume, "headers", None) or []:
        note = charset_doubt(rec)
        if note:
            why = note.split(": ")[1]  # "PatientName, ...: <why>: text may be wrong"
            return [f"the source's patient name could not be decoded reliably: {why}; it is "
                    "written into the result objects as read and may be wrong"]
    return []


def is_multiframe_source(volume, datasets) -> bool:
    return len(datasets) == 1 and volume.n_slices > 1


def check_geometry(volume) -> None:
    """Refuse a Volume whose geometry cannot place an object in patient space."""
    aff = np.asarray(volume.affine, float)
    if not np.all(np.isfinite(aff)) or abs(float(np.linalg.det(aff[:3, :3]))) < 1e-12:
        raise DicomExportError("the series geometry is unusable (NaN, zero or degenerate spacing or "
                               "orientation): no DICOM object with patient positions is written")


def slice_positions_lps(volume) -> np.ndarray:  # noqa: D401
    """(n, 3) LPS position of the first voxel of every slice, from the Volume: where each
    slice was acquired (:meth:`imaging_assist.volume.Volume.slice_origins`: exact for uneven
    and for tilted stacks)."""
    check_geometry(volume)
    return volume.slice_origins()


def with_nominal_geometry(ds, volume):
    """A copy of a source header without patient geometry, given a NEW Frame of Reference
    UID and the Volume's nominal plane (identity orientation, origin 0), for the IODs that
    require one (Parametric Map).  Never used for an image that has geometry."""
    import copy

    out = copy.deepcopy(ds)
    out.FrameOfReferenceUID = new_uid()
    out.PositionReferenceIndicator = ""
    out.ImageOrientationPatient = orientation(volume)
    out.ImagePositionPatient = [float(v) for v in volume.origin]
    out.PixelSpacing = pixel_spacing(volume)
    if "SliceThickness" not in out:
        out.SliceThickness = float(abs(volume.spacing[2])) or 1.0
    return out


def projection_sources(volume, datasets) -> list:
    """Copies of the headers of an image without patient geometry whose Pixel Spacing is
    the engine's: the Volume's when it is known, removed when the loader found it unusable
    (absurd, NaN) - highdicom would otherwise copy the file's value into the result."""
    import copy

    out = []
    for ds in datasets:
        c = copy.copy(ds)
        if "PixelSpacing" in c:
            del c.PixelSpacing
        if getattr(volume, "spacing_known", False) and getattr(volume, "spacing_source", "") == "PixelSpacing":
            c.PixelSpacing = pixel_spacing(volume)
        out.append(c)
    return out


def _ds(v: float) -> str:
    """A float as a valid DS string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(v))


def shared_geometry_source(volume, datasets) -> list:
    """highdicom 0.28.2 reads a multi-frame source's orientation and pixel measures from its
    Shared Functional Groups only; an enhanced MR that gives them per frame (allowed by the
    standard) then fails.  A copy of the header gets shared items holding the Volume's
    orientation and spacing (what the object is written with anyway); single-frame sources
    pass through."""
    import copy

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if not is_multiframe_source(volume, datasets):
        return datasets
    ds = datasets[0]
    sfg = (getattr(ds, "SharedFunctionalGroupsSequence", None) or [Dataset()])[0]
    if "PixelMeasuresSequence" in sfg and "PlaneOrientationSequence" in sfg:
        return datasets
    out = copy.copy(ds)
    item = copy.deepcopy(sfg)
    if "PixelMeasuresSequence" not in item:
        pm = Dataset()
        pm.PixelSpacing = [_ds(v) for v in pixel_spacing(volume)]
        pm.SliceThickness = _ds(float(abs(volume.spacing[2])) or 1.0)
        item.PixelMeasuresSequence = Sequence([pm])
    if "PlaneOrientationSequence" not in item:
        po = Dataset()
        po.ImageOrientationPatient = [_ds(v) for v in orientation(volume)]
        item.PlaneOrientationSequence = Sequence([po])
    out.SharedFunctionalGroupsSequence = Sequence([item])
    return [out]


def orientation(volume) -> list[float]:
    d = np.asarray(volume.direction, float)
    return [float(v) for v in (*d[:, 0], *d[:, 1])]


def pixel_spacing(volume) -> list[float]:
    """DICOM order (row spacing, column spacing) = (spacing[1], spacing[0])."""
    return [float(volume.spacing[1]), float(volume.spacing[0])]


def slice_thickness(volume, datasets) -> float:
    t = getattr(datasets[0], "SliceThickness", None)
    if t is None and is_multiframe_source(volume, datasets):
        for grp in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            item = (getattr(datasets[0], grp, None) or [None])[0]
            if item is not None and "PixelMeasuresSequence" in item:
                t = item.PixelMeasuresSequence[0].get("SliceThickness")
                break
    try:
        v = float(t)
        if np.isfinite(v) and v > 0:
            return v
    except (TypeError, ValueError):
        pass
    return float(abs(volume.spacing[2])) or 1.0


def has_patient_geometry(volume, datasets) -> bool:
    """True when frames can carry Plane Position/Orientation: the Volume has geometry and
    every source has a frame of reference."""
    if not getattr(volume, "has_geometry", False):
        return False
    return all(str(getattr(ds, "FrameOfReferenceUID", "") or "").strip() for ds in datasets)


def algorithm_identification(model_id: str, model_version: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=str(model_id)[:64] or "unknown", family=codes.cid7162.ArtificialIntelligence,
        version=str(model_version or "unknown")[:64], source=MODEL_NAME)


# ----------------------------------------------------------------- coded label concepts
# (category, type) per label name; SNOMED CT.  Codes pydicom does not name are written here
# with their SNOMED CT ids (right/left lung).
_SCT = "SCT"
_ANAT = ("91723000", "Anatomical Structure")
_ABN = ("49755003", "Morphologically Abnormal Structure")
_LABEL_CODES = {
    "right lung": (_ANAT, ("3341006", "Right lung")),
    "left lung": (_ANAT, ("44029006", "Left lung")),
    "lung": (_ANAT, ("39607008", "Lung")),
    "lungs": (_ANAT, ("39607008", "Lung")),
    "heart": (_ANAT, ("80891009", "Heart")),
    "spleen": (_ANAT, ("78961009", "Spleen")),
    "liver": (_ANAT, ("10200004", "Liver")),
    "kidney": (_ANAT, ("64033007", "Kidney")),
    "brain": (_ANAT, ("12738006", "Brain")),
    "breast": (_ANAT, ("76752008", "Breast")),
    "nodule": (_ABN, ("27925004", "Nodule")),
    "mass": (_ABN, ("4147007", "Mass")),
    "lesion": (_ABN, ("52988006", "Lesion")),
    "tumor": (_ABN, ("108369006", "Neoplasm")),
    "tumour": (_ABN, ("108369006", "Neoplasm")),
    "neoplasm": (_ABN, ("108369006", "Neoplasm")),
}
LOCAL_SCHEME = "99IMGAST"  # private coding scheme for labels SNOMED CT has no code for here


def label_codes(label: str):
    """(category, type, is_standard) CodedConcepts for a label name.  A label without a
    known SNOMED CT code gets a local code (scheme 99IMGAST) and ``is_standard`` False, so
    the caller warns instead of pretending a standard meaning."""
    from highdicom.sr import CodedConcept

    key = " ".join(str(label).lower().replace("_", " ").split())
    if key in _LABEL_CODES:
        (cv, cm), (tv, tm) = _LABEL_CODES[key]
        return CodedConcept(cv, _SCT, cm), CodedConcept(tv, _SCT, tm), True
    value = ("L-" + "".join(c if c.isalnum() else "-" for c in key.upper()))[:16] or "L-UNKNOWN"
    return (CodedConcept("85756007", _SCT, "Tissue"),
            CodedConcept(value, LOCAL_SCHEME, str(label)[:64] or "unknown"), False)


def new_uid() -> str:
    from highdicom import UID

    return str(UID())


def series_number_after(datasets, offset: int) -> int:
    try:
        base = int(getattr(datasets[0], "SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        base = 0
    return max(1, min(2_147_483_647, base * 100 + 90 + offset if base < 20_000_000 else 9000 + offset))


def finalize(ds, datasets) -> None:
    """Repairs that keep a result valid when the source header is not (dciodvfy 0 errors):
    an empty Type 1C De-identification Method copied from the source, and Patient
    Orientation (Type 2C) on an object whose frames carry no plane orientation."""
    if "PatientIdentityRemoved" in ds and not str(getattr(ds, "DeidentificationMethod", "") or "").strip() \
            and "DeidentificationMethodCodeSequence" not in ds:
        ds.DeidentificationMethod = "source de-identified; method not stated in the source"
    for kw in ("ReferencedStudySequence", "ReferencedPatientSequence"):  # Type 3, 1-n items
        if kw in ds and len(ds[kw].value) == 0:
            delattr(ds, kw)
    has_plane = False
    sfg = getattr(ds, "SharedFunctionalGroupsSequence", None)
    if sfg and "PlaneOrientationSequence" in sfg[0]:
        has_plane = True
    pfg = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if pfg and "PlaneOrientationSequence" in pfg[0]:
        has_plane = True
    if "PixelData" in ds or "FloatPixelData" in ds:
        if not has_plane and "PatientOrientation" not in ds and "ImageOrientationPatient" not in ds:
            po = getattr(datasets[0], "PatientOrientation", None) if datasets else None
            ds.PatientOrientation = list(po) if po and len(po) == 2 else ""
    # the header the object copied its patient and study attributes from (a plain attribute,
    # never written): privacy.deid.deidentify_result_dates tells them from the object's own dates
    ds.source_header = datasets[0] if datasets else None
    if _has_non_ascii_text(ds):
        # PS3.5 6.1.2.2: characters beyond ASCII need a Specific Character Set that holds them
        # ("mm²" in a label, a note in any script, a name copied from a Latin-1 source); UTF-8
        # holds them all, and pydicom encodes every value with it on writing
        ds.SpecificCharacterSet = "ISO_IR 192"


def described(text: str, limit: int = 64) -> str:
    """A Series / Content Description (LO, 64 characters) that always ends with
    "(NOT FOR CLINICAL USE)": the text is shortened, never the warning."""
    tail = f" ({NOT_CLINICAL})"
    return str(text)[:max(0, limit - len(tail))].rstrip() + tail


def frame_number(volume, k: int) -> int:
    """The 1-based frame of a multi-frame source that slice ``k`` of the Volume shows: its
    ``frames`` (a stack of an enhanced object is not its first frames), else k + 1."""
    frames = getattr(volume, "frames", None)
    if frames is not None and 0 <= int(k) < len(frames):
        return int(frames[int(k)]) + 1
    return int(k) + 1


def n_frames(ds) -> int:
    """A source header's Number of Frames (1 when absent or unreadable)."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def slice_source(volume, datasets, k: int):
    """(dataset, frame numbers or None): the source instance that slice ``k`` of the Volume
    shows (its ``headers[k]``, by path and archive member, in the order of
    :func:`source_datasets`) and, when that instance is multi-frame, ``[its 1-based frame]``.
    A series of several multi-frame files (two XA runs) is not one dataset per slice: slice 50
    is frame 51 of the first file, not the second file."""
    headers = list(getattr(volume, "headers", None) or [])
    index: dict = {}
    for rec in headers:
        index.setdefault((rec.path, rec.member), len(index))
    k = int(k)
    if len(index) == len(datasets) and 0 <= k < len(headers):
        ds = datasets[index[(headers[k].path, headers[k].member)]]
    else:  # no headers to go by (datasets given without them): one dataset per slice
        ds = datasets[0] if is_multiframe_source(volume, datasets) else datasets[min(k, len(datasets) - 1)]
    multiframe = n_frames(ds) > 1 or is_multiframe_source(volume, datasets)
    return ds, ([frame_number(volume, k)] if multiframe else None)


def point_frames_at_the_stack(obj, volume, datasets) -> None:
    """highdicom finds the source frame of each derived frame by its position; in an enhanced
    object whose stacks share positions (magnitude and field map, echoes) that is the first
    stack's frame.  Each derived frame is pointed at the frame the Volume shows at its
    position (:func:`frame_number`), so a viewer draws the result over the image it came from."""
    from pydicom.sequence import Sequence

    if not is_multiframe_source(volume, datasets) or getattr(volume, "frames", None) is None:
        return
    pos = slice_positions_lps(volume)
    for item in getattr(obj, "PerFrameFunctionalGroupsSequence", None) or []:
        plane = item.get("PlanePositionSequence")
        if not plane or "ImagePositionPatient" not in plane[0]:
            continue
        k = int(np.argmin(np.linalg.norm(pos - np.array(plane[0].ImagePositionPatient, float), axis=1)))
        want = frame_number(volume, k)
        for der in item.get("DerivationImageSequence") or []:
            srcs = [s for s in der.get("SourceImageSequence") or [] if "ReferencedFrameNumber" in s]
            if not srcs:
                continue
            # highdicom lists every frame at that position (each stack's): only the shown one
            keep = next((s for s in srcs if int(s.ReferencedFrameNumber) == want), srcs[0])
            keep.ReferencedFrameNumber = want
            der.SourceImageSequence = Sequence([keep])


def thickness_per_frame(obj, volume, datasets) -> None:
    """Each frame's own Slice Thickness when the source slices differ (a series that changes
    from 4 to 7 mm slices): the shared Pixel Measures would state one nominal thickness for
    every frame (PS3.3 C.7.6.16.2.1), so they move to the frames."""
    import copy

    from pydicom.sequence import Sequence

    if is_multiframe_source(volume, datasets) or len(datasets) != volume.n_slices:
        return
    ts = []
    for ds in datasets:
        try:
            v = float(ds.SliceThickness)
        except (AttributeError, TypeError, ValueError):
            return
        if not (np.isfinite(v) and v > 0):
            return
        ts.append(v)
    shared = (getattr(obj, "SharedFunctionalGroupsSequence", None) or [None])[0]
    if max(ts) - min(ts) < 1e-6 or shared is None or "PixelMeasuresSequence" not in shared:
        return
    measures = shared.PixelMeasuresSequence[0]
    pos = slice_positions_lps(volume)
    frames = list(getattr(obj, "PerFrameFunctionalGroupsSequence", None) or [])
    if not all(f.get("PlanePositionSequence") for f in frames):
        return
    del shared.PixelMeasuresSequence
    for item in frames:
        k = int(np.argmin(np.linalg.norm(
            pos - np.array(item.PlanePositionSequence[0].ImagePositionPatient, float), axis=1)))
        m = copy.deepcopy(measures)
        m.SliceThickness = ts[k]
        item.PixelMeasuresSequence = Sequence([m])


def ellipse_axes(cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    """The four points of an axis-aligned ELLIPSE (GSPS PS3.3 C.10.5.1.2, SCOORD C.18.6.1.2):
    the major axis's end points first, then the minor axis's."""
    horizontal = np.array([[cu - ru, cv], [cu + ru, cv]], float)
    vertical = np.array([[cu, cv - rv], [cu, cv + rv]], float)
    return np.vstack([horizontal, vertical] if ru >= rv else [vertical, horizontal])


_TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "PN", "UC"}


def _has_non_ascii_text(ds) -> bool:
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and elem.value is not None:
            vals = elem.value if isinstance(elem.value, (list, tuple)) or type(elem.value).__name__ == "MultiValue" \
                else [elem.value]
            if any(not str(v).isascii() for v in vals):
                return True
    return False


def add_laterality(ds, datasets) -> None:
    """Laterality (Type 2C) for IODs where dciodvfy requires it (Parametric Map): the
    source's R/L, else empty (unknown)."""
    if "Laterality" not in ds and "ImageLaterality" not in ds:
        lat = getattr(datasets[0], "Laterality", None) if datasets else None
        ds.Laterality = lat if lat in ("R", "L") else ""


#: The most 2D points one GraphicData holds in what we write: 65,534 bytes of FL (the longest
#: Explicit VR value); longer, pydicom writes it as UN, which highdicom and other readers then
#: cannot parse (a 9,000-vertex freehand outline).
MAX_WRITTEN_POINTS = 8_000


def at_most_points(pts, closed: bool = False):
    """``pts`` (N, 2) thinned to at most :data:`MAX_WRITTEN_POINTS` evenly spaced vertices (the
    first and, for a closed outline, the repeated first point kept)."""
    import numpy as np

    pts = np.asarray(pts, float)
    limit = MAX_WRITTEN_POINTS - (1 if closed else 0)
    body = pts[:-1] if closed else pts
    if len(body) > limit:
        body = body[np.unique(np.linspace(0, len(body) - 1, limit).round().astype(int))]
    return np.vstack([body, body[:1]]) if closed else body

