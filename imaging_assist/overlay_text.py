"""What the corner text of a view says (no Qt): orientation letters of the four screen edges,
the patient's age and a labelled date of birth.

Orientation letters
  * cross-sectional images (ImageOrientationPatient): from the direction cosines through the
    shown plane (:meth:`imaging_assist.layers.Plane.orientation_labels`);
  * projection images (CR, DX, MG, US, XA... without IOP): from ``PatientOrientation``
    (PS3.3 C.7.6.1.1.1): its first value is the patient direction toward the right edge of
    the image (increasing columns), its second toward the bottom (increasing rows); left and
    top are the opposites.  Flipped or rotated display moves the letters with the pixels.
  * neither: no letters (never guessed); :func:`orientation` says why.

Hand-written: a few lines of letter arithmetic on the DICOM definition; no library we use
exposes it (pydicom reads the value, it does not interpret it).
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass

# the PatientAge pattern and DA parsing of the model population check (one definition)
from .models.matching import _AGE, _date

# biped letters and their opposites (PS3.3 C.7.6.1.1.1)
_OPPOSITE = {"A": "P", "P": "A", "R": "L", "L": "R", "H": "F", "F": "H"}
# LPS letters (layers.Plane.orientation_labels) use S/I for head/foot
_OPPOSITE_LPS = {"S": "I", "I": "S"}


def opposite(letters: str) -> str | None:
    """The opposite direction of a letter code ('LF' -> 'RH'); None for a code we do not know."""
    out = []
    for ch in str(letters).strip().upper():
        o = _OPPOSITE.get(ch) or _OPPOSITE_LPS.get(ch)
        if o is None:
            return None
        out.append(o)
    return "".join(out) or None


def parse_patient_orientation(value) -> tuple[str, str] | None:
    """PatientOrientation as (toward right, toward bottom), or None when absent or not two
    known biped codes (quadruped codes such as 'CR'/'CD' are not interpreted)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    else:
        parts = str(value).split("\\")
    parts = [p.strip().upper() for p in parts]
    if len(parts) != 2 or not all(parts):
        return None
    if any(opposite(p) is None or any(c not in _OPPOSITE for c in p) for p in parts):
        return None
    return parts[0], parts[1]


def transform_labels(labels: dict[str, str], flip_h: bool = False, flip_v: bool = False,
                     rotate: int = 0) -> dict[str, str]:
    """Edge letters after the display is flipped (left-right, then top-bottom) and rotated by
    ``rotate`` quarter turns clockwise: the letters travel with the pixels."""
    lab = dict(labels)
    if flip_h:
        lab["left"], lab["right"] = lab["right"], lab["left"]
    if flip_v:
        lab["top"], lab["bottom"] = lab["bottom"], lab["top"]
    for _ in range(int(rotate) % 4):  # clockwise: what was on the left is now on top
        lab = {"top": lab["left"], "right": lab["top"], "bottom": lab["right"], "left": lab["bottom"]}
    return lab


def projection_labels(patient_orientation, flip_h: bool = False, flip_v: bool = False,
                      rotate: int = 0) -> dict[str, str] | None:
    """Edge letters of a projection image from PatientOrientation, or None when unknown."""
    po = parse_patient_orientation(patient_orientation)
    if po is None:
        return None
    row, col = po
    lab = {"right": row, "left": opposite(row), "bottom": col, "top": opposite(col)}
    return transform_labels(lab, flip_h, flip_v, rotate)


@dataclass
class Orientation:
    labels: dict[str, str] | None  # 'left', 'right', 'top', 'bottom'
    source: str  # "direction cosines", "PatientOrientation" or "" (no letters)
    why_none: str = ""  # when labels is None: one line saying why


_PO_CACHE: dict[tuple, object] = {}
_PENDING: set = set()
NOT_READ_YET = "PatientOrientation not read yet"


def _po_key(rec):
    return (getattr(rec, "path", None), getattr(rec, "member", None))


def needs_file_read(rec) -> bool:
    """True when rec's PatientOrientation must still be read from its file."""
    if rec is None or not hasattr(rec, "get") or rec.get("PatientOrientation") not in (None, ""):
        return False
    key = _po_key(rec)
    return key[0] is not None and key not in _PO_CACHE


def read_later(rec, done) -> None:
    """Read rec's PatientOrientation on a daemon thread, then call ``done()`` (from that
    thread): a viewer never waits on a header read (the first pydicom import is ~0.5 s)."""
    key = _po_key(rec)
    if not needs_file_read(rec) or key in _PENDING:
        return
    _PENDING.add(key)

    def work():
        try:
            patient_orientation_of(rec)
        finally:
            _PENDING.discard(key)
            try:
                done()
            except Exception:  # noqa: BLE001 - e.g. the view was closed meanwhile
                pass
    threading.Thread(target=work, name="patient-orientation", daemon=True).start()


def patient_orientation_of(rec, read_file: bool = True):
    """PatientOrientation of one instance record: from the record when the index kept it,
    else read once from the file's header (pydicom, no pixels) and cached per file
    (``read_file=False``: only what is known without reading)."""
    if rec is None:
        return None
    v = rec.get("PatientOrientation") if hasattr(rec, "get") else None
    if v not in (None, ""):
        return v
    key = _po_key(rec)
    if key[0] is None:
        return None
    if key not in _PO_CACHE:
        if not read_file:
            return None
        try:
            from .dicom.header import read_dataset
            ds = read_dataset(rec, stop_before_pixels=True)
            val = ds.get("PatientOrientation")
            _PO_CACHE[key] = val if val is None or isinstance(val, str) else [str(x) for x in val]
        except Exception:  # noqa: BLE001 - an unreadable header only means no letters
            _PO_CACHE[key] = None
        if len(_PO_CACHE) > 4096:
            _PO_CACHE.pop(next(iter(_PO_CACHE)))
    return _PO_CACHE[key]


def orientation(vol, plane, rec=None, rotate: int = 0, read_file: bool = True,
                flip_h: bool = False) -> Orientation:
    """Edge letters of ``plane`` of ``vol`` (flips of the plane included), from the direction
    cosines when the volume has 3D geometry, else from ``rec``'s PatientOrientation
    (``read_file=False``: no header read; ``why_none`` is NOT_READ_YET when one is needed).
    ``flip_h`` then ``rotate``: the view's own mirror and clockwise quarter turns."""
    if vol is None:
        return Orientation(None, "", "no image")
    if vol.has_geometry:
        return Orientation(transform_labels(plane.orientation_labels(vol.direction), flip_h=flip_h, rotate=rotate),
                           "direction cosines")
    if plane.axis != 0:
        return Orientation(None, "", "no 3D geometry")
    if not read_file and needs_file_read(rec):
        return Orientation(None, "", NOT_READ_YET)
    po = patient_orientation_of(rec)
    lab = projection_labels(po, plane.flip_h, plane.flip_v)
    if lab is not None:
        return Orientation(transform_labels(lab, flip_h=flip_h, rotate=rotate), "PatientOrientation")
    if rec is None:
        return Orientation(None, "", "plain image, no DICOM header")
    if po in (None, "", []):
        return Orientation(None, "", "no PatientOrientation in the file")
    return Orientation(None, "", f"PatientOrientation {po!r} not understood")


# ------------------------------------------------------------------ age and birth date
_UNIT = {"D": "d", "W": "w", "M": "mo", "Y": "y"}


def format_date(d) -> str:
    """DICOM DA 'YYYYMMDD' as 'YYYY-MM-DD' (anything else as given)."""
    d = str(d or "").strip()
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


def _age_between(born: _dt.date, when: _dt.date) -> str:
    """Completed age in the unit a radiologist reads: years from 2, months from 1, else days."""
    months = (when.year - born.year) * 12 + (when.month - born.month) - (when.day < born.day)
    if months >= 24:
        return f"{months // 12} y"
    if months >= 1:
        return f"{months} mo"
    return f"{(when - born).days} d"


def age_text(patient_age=None, birth_date=None, study_date=None) -> str:
    """'Age 47 y' from PatientAge; else 'Age 47 y (from DOB)' computed from the birth date at
    the study date; '' when neither is usable (an impossible value is never shown)."""
    m = _AGE.match(str(patient_age or ""))
    if m:
        n, unit = int(m.group(1)), m.group(2).upper()
        if not (unit == "Y" and n > 130):  # "999Y" and the like: unknown
            return f"Age {n} {_UNIT[unit]}"
    born, when = _date(birth_date), _date(study_date)
    if born and when and when >= born and (when - born).days <= 130 * 366:
        return f"Age {_age_between(born, when)} (from DOB)"
    return ""


def dob_text(birth_date) -> str:
    d = format_date(birth_date)
    return f"DOB {d}" if d else ""
