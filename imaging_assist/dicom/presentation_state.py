"""The annotations of a Softcopy Presentation State (GSPS and its colour kinds), drawn over the
series they refer to.

No Qt here.  A reading workstation (Weasis, RadiAnt, a PACS viewer) saves a reader's arrows,
outlines and notes as a Grayscale Softcopy Presentation State (PS3.3 A.33): graphic objects
and text objects on the images they name.  :func:`read_presentation_state` places them on the
shown volume as a :class:`imaging_assist.layers.ShapesLayer` (one shape per object, in its
graphic layer's recommended colour) and says in one line what it leaves out.

What is drawn, following PS3.3 C.10.5 (Graphic Annotation Module) and never guessing:

* Graphic objects with PIXEL units: (column, row) with the top left corner of the first pixel
  at (0, 0), so a pixel centre at (0.5, 0.5) as in SCOORD.  POINT, POLYLINE and INTERPOLATED
  (drawn through its points), CIRCLE (centre, a point on it) and ELLIPSE (major then minor
  axis end points) as outlines; a POLYLINE whose last point repeats the first is closed.
* Graphic objects and text with DISPLAY units (fractions of the displayed area) are placed
  through the image's Displayed Area Selection when the presentation state neither rotates
  nor flips the image; otherwise they are left out and said.
* Text objects: the text at its anchor point (a cross when the anchor is marked visible) or
  at its bounding box's top left corner.
* An annotation without its own image references applies to every image the presentation
  state references; an image that is not a slice of this series places nothing.

What the presentation state also specifies but is not applied here: its window (VOI LUT;
offered as a window preset, :attr:`PresentationState.windows`), presentation LUT, spatial
transformation, displayed area (zoom), shutters and overlay activation.  The viewer keeps its
own; a warning says so when any differs from the plain image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..layers import Shape, ShapesLayer
from .result_objects import (PR, ResultObjectError, _check_complete, _dataset, _Grid, _one_line, graphic_values,
                             other_patient, other_study)
from .sr_regions import outline_points

# SOP Class UID -> name (PS3.4 B.5; the index lists them as result kind PR); blending states
# place one series over another and are not read
PRESENTATION_STATE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.11.2": "Color Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.11.3": "Pseudo-Color Softcopy Presentation State",
}
MAX_OBJECTS = 10_000  # graphic and text objects in one presentation state
MAX_POINTS = 20_000  # points of one graphic object (drawn on every repaint)
DEFAULT_COLOR = (255, 214, 90)
_GRAPHIC_POINTS = {"POINT": (1, 1), "POLYLINE": (2, None), "INTERPOLATED": (2, None), "CIRCLE": (2, 2),
                   "ELLIPSE": (4, 4)}


def _lab_to_rgb(values) -> tuple[int, int, int] | None:
    """A DICOM CIELab triplet (each 0..65535, PS3.3 C.10.7.1.1) as sRGB, or None."""
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError):
        return None
    if len(v) != 3 or not all(math.isfinite(x) and 0 <= x <= 65535 for x in v):
        return None
    from skimage.color import lab2rgb

    lab = np.array([[[v[0] / 65535 * 100, v[1] / 65535 * 255 - 128, v[2] / 65535 * 255 - 128]]])
    rgb = lab2rgb(lab)[0, 0]
    return tuple(int(round(float(c) * 255)) for c in np.clip(rgb, 0, 1))


def _floats(data, what: str) -> np.ndarray:
    if isinstance(data, (int, float)):
        data = [data]
    try:
        a = np.array([float(x) for x in (data if data is not None else [])], float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} holds values that are not numbers") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} holds values that are not finite")
    return a


class _Places:
    """Image references -> slices, and DISPLAY units -> pixels per image."""

    def __init__(self, ds, volume):
        self.grid = _Grid(volume)
        self.all_refs: list[tuple[str, int | None]] = []
        for s in ds.get("ReferencedSeriesSequence") or []:
            self.all_refs += _image_refs(s.get("ReferencedImageSequence"))
        self.display: dict[str, tuple[float, float, float, float] | None] = {}
        for it in ds.get("DisplayedAreaSelectionSequence") or []:
            refs = _image_refs(it.get("ReferencedImageSequence")) or self.all_refs
            try:
                tl = [float(x) for x in it.DisplayedAreaTopLeftHandCorner]
                br = [float(x) for x in it.DisplayedAreaBottomRightHandCorner]
            except (AttributeError, TypeError, ValueError):
                continue
            if len(tl) == 2 and len(br) == 2 and all(math.isfinite(x) for x in tl + br):
                for uid, _ in refs:
                    self.display[uid] = (tl[0], tl[1], br[0], br[1])
        rot = str(ds.get("ImageRotation") or "0").strip()
        flip = str(ds.get("ImageHorizontalFlip") or "N").strip().upper()
        self.transformed = rot not in ("", "0") or flip == "Y"

    def slices(self, refs) -> list[tuple[int, str]]:
        """The slices of the referenced images: every frame of a multi-frame image referenced
        without frame numbers (the annotation applies to all of them, PS3.3 C.10.5.1.1)."""
        out = []
        for uid, fr in refs or self.all_refs:
            if fr is None:
                ks = sorted(k for (u, _), k in self.grid.by_ref.items() if u == uid)
            else:
                ks = [self.grid.slice_of_ref(uid, f) for f in (fr if isinstance(fr, list) else [fr])]
            for k in ks:
                if k is not None and all(k != x for x, _ in out):
                    out.append((k, uid))
        return out

    def to_pixels(self, pts: np.ndarray, units: str, uid: str) -> np.ndarray | None:
        """(column, row) with pixel centres at integers, or None when DISPLAY units cannot be placed."""
        if units == "PIXEL":
            return pts - 0.5
        area = self.display.get(uid)
        if units != "DISPLAY" or area is None or self.transformed:
            return None
        # the displayed area's corners are 1-based pixel positions (the first pixel is 1\1):
        # its top left corner edge at tl - 1, its bottom right edge at br
        x0, y0, x1, y1 = area[0] - 1, area[1] - 1, area[2], area[3]
        return np.column_stack([x0 + pts[:, 0] * (x1 - x0), y0 + pts[:, 1] * (y1 - y0)]) - 0.5


def _image_refs(seq) -> list[tuple[str, list | int | None]]:
    out = []
    for r in seq or []:
        fr = r.get("ReferencedFrameNumber")
        if fr is not None and not isinstance(fr, (int, str)):
            fr = [int(x) for x in fr] if len(fr) else None
        elif fr not in (None, ""):
            fr = int(fr)
        else:
            fr = None
        out.append((str(r.get("ReferencedSOPInstanceUID") or ""), fr))
    return out


@dataclass
class PresentationState:
    """What :func:`read_presentation_state` found: the annotations as a shapes layer (None when
    none lies on the volume) and one-line warnings."""

    label: str
    series_uid: str
    layer: ShapesLayer | None
    warnings: list[str] = field(default_factory=list)
    windows: list = field(default_factory=list)  # its own windows as WindowPresets (source "presentation")

    def to_dict(self) -> dict:
        shapes = self.layer.shapes if self.layer is not None else []
        return {"kind": PR, "label": self.label, "series_uid": self.series_uid,
                "annotations": [{"name": s.text(), "kind": s.kind, "closed": s.closed,
                                 "image": int(round(s.position[0])) + 1,
                                 "points_kji": [[round(float(v), 3) for v in p] for p in s.points]}
                                for s in shapes],
                "windows": [w.to_dict() for w in self.windows],
                "warnings": list(self.warnings)}


def read_presentation_state(source, volume, name: str = "") -> PresentationState:
    """The annotations of a presentation state placed on ``volume``;
    :class:`ResultObjectError` (one line) for a file that is not one or cannot be read."""
    ds = _dataset(source)
    try:
        label = str(ds.get("ContentLabel") or "") or "Presentation state"
        layer, warnings = _read(ds, volume, name or label)
        return PresentationState(label, str(ds.get("SeriesInstanceUID") or ""), layer, warnings,
                                 _windows(ds, label, _own_windows(volume)))
    except ResultObjectError:
        raise
    except Exception as e:
        raise ResultObjectError(f"the presentation state is malformed: {type(e).__name__}: {_one_line(e)}") from None


def _read(ds, volume, name: str):
    sop = str(ds.get("SOPClassUID") or "")
    if sop not in PRESENTATION_STATE_CLASSES:
        raise ResultObjectError(f"not a softcopy presentation state (SOP Class {sop or 'missing'})")
    _check_complete(ds)
    why = other_patient(ds.get("PatientID"), volume)
    if why:
        raise ResultObjectError(f"the presentation state {why}")
    places = _Places(ds, volume)
    colors = {}
    for layer in ds.get("GraphicLayerSequence") or []:
        rgb = _lab_to_rgb(layer.get("GraphicLayerRecommendedDisplayCIELabValue"))
        if rgb is None and layer.get("GraphicLayerRecommendedDisplayGrayscaleValue") is not None:
            g = int(min(max(int(layer.GraphicLayerRecommendedDisplayGrayscaleValue), 0), 65535) / 257)
            rgb = (g, g, g)
        colors[str(layer.get("GraphicLayer") or "")] = rgb or DEFAULT_COLOR
    shapes: list[Shape] = []
    warnings: list[str] = []
    study = other_study(ds.get("StudyInstanceUID"), volume)
    if study:
        warnings.append(study)
    skipped: dict[str, int] = {}
    n_objects = 0

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for ann in ds.get("GraphicAnnotationSequence") or []:
        color = colors.get(str(ann.get("GraphicLayer") or ""), DEFAULT_COLOR)
        targets = places.slices(_image_refs(ann.get("ReferencedImageSequence")))
        objects = list(ann.get("GraphicObjectSequence") or []) + list(ann.get("TextObjectSequence") or [])
        n_objects += len(objects)
        if n_objects > MAX_OBJECTS:
            raise ResultObjectError(f"the presentation state has more than {MAX_OBJECTS} annotation objects")
        if not targets:
            if objects:
                skip("on images that are not in this series")
            continue
        for obj in objects:
            for k, uid in targets:
                try:
                    shape = _shape(obj, k, uid, places, color)
                except ValueError as e:
                    skip(str(e))
                    continue
                if shape is None:
                    skip("in units the viewer cannot place (display units on a rotated or flipped "
                         "presentation or without a displayed area, or units other than pixel and display)")
                    continue
                shapes.append(shape)
                if len(shapes) > MAX_OBJECTS:  # objects times the images each applies to
                    raise ResultObjectError(f"the presentation state places more than {MAX_OBJECTS} "
                                            "annotations on this series")
    for why, n in skipped.items():
        warnings.append(f"{n} annotation{'s' if n > 1 else ''} not drawn: {why}")
    kept = _not_applied(ds, places)
    if kept:
        warnings.append(f"its {', '.join(kept)} {'is' if len(kept) == 1 else 'are'} not applied: only its "
                        "annotations are shown" + ("; its window is offered in Window presets" if "window" in kept
                                                   else ""))
    if not shapes:
        return None, warnings
    return ShapesLayer(f"{name}: annotations", shapes), warnings


def _pairs(centers, widths) -> list[tuple[float, float]]:
    """(centre, width) pairs of a window, rounded to 1e-3 (multi-valued or not; bad values skipped)."""
    def listed(v):
        return [] if v is None else list(v) if isinstance(v, (list, tuple)) or hasattr(v, "__iter__") \
            and not isinstance(v, str) else [v]
    out = []
    for c, w in zip(listed(centers), listed(widths)):
        try:
            out.append((round(float(c), 3), round(float(w), 3)))
        except (TypeError, ValueError):
            continue
    return out


def _own_windows(volume) -> set:
    """The series' own windows (its files' Window Center/Width): the viewer offers them already."""
    own = set()
    for rec in getattr(volume, "headers", None) or []:
        own |= set(_pairs(rec.get("WindowCenter"), rec.get("WindowWidth")))
    return own


def _windows(ds, label: str, own: set) -> list:
    """The state's windows (Softcopy VOI LUT) other than the images' own: offered as window
    presets, not applied."""
    from ..volume import WindowPreset

    out = []
    for it in ds.get("SoftcopyVOILUTSequence") or []:
        fn = str(it.get("VOILUTFunction") or "LINEAR").strip().upper()
        for c, w in _pairs(it.get("WindowCenter"), it.get("WindowWidth")):
            if w > 0 and (c, w) not in own and not any(p.center == c and p.width == w for p in out):
                out.append(WindowPreset(f"{label} window", c, w, source="presentation",
                                        function=fn if fn in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"))
    if len(out) > 1:
        for n, p in enumerate(out):
            p.name = f"{label} window {n + 1}"
    return out


def _not_applied(ds, places: _Places) -> list[str]:
    """What the presentation state asks of the display beyond the identity that the viewer
    does not do (it keeps its own window, zoom and orientation)."""
    out = []
    own = _own_windows(places.grid.volume)  # the viewer shows the file's window first
    for it in ds.get("SoftcopyVOILUTSequence") or []:
        if "VOILUTSequence" in it or any(p not in own for p in _pairs(it.get("WindowCenter"), it.get("WindowWidth"))):
            out.append("window")
            break
    # The viewer shows MONOCHROME1 inverted (its intended look), which is what INVERSE asks of a
    # MONOCHROME1 image (PS3.3 C.11.6: the GSPS pipeline's P-values are MONOCHROME2-like), and
    # IDENTITY of a MONOCHROME2 one; the other pairings (and a LUT) ask for what it does not show.
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    mono1 = str(getattr(places.grid.volume, "photometric", "") or "").upper() == "MONOCHROME1"
    if "PresentationLUTSequence" in ds or (shape in ("INVERSE", "IDENTITY") and (shape == "INVERSE") != mono1):
        out.append("presentation LUT")
    if places.transformed:
        out.append("rotation or flip")
    full = (1.0, 1.0, float(places.grid.cols), float(places.grid.rows))
    if any(a != full for a in places.display.values()):
        out.append("displayed area (zoom)")
    if "ShutterShape" in ds:
        out.append("shutters")
    return out


def _shape(obj, k: int, uid: str, places: _Places, color) -> Shape | None:
    rows, cols = places.grid.rows, places.grid.cols
    if "UnformattedTextValue" in obj:  # a text object
        text = " ".join(str(obj.UnformattedTextValue).split())[:200]
        if "AnchorPoint" in obj:
            units = str(obj.get("AnchorPointAnnotationUnits") or "").strip().upper()
            pts = _floats(obj.AnchorPoint, "an anchor point").reshape(-1, 2)[:1]
            visible = str(obj.get("AnchorPointVisibility") or "N").strip().upper() == "Y"
        elif "BoundingBoxTopLeftHandCorner" in obj:
            units = str(obj.get("BoundingBoxAnnotationUnits") or "").strip().upper()
            pts = _floats(obj.BoundingBoxTopLeftHandCorner, "a bounding box").reshape(-1, 2)[:1]
            visible = False
        else:
            raise ValueError("text without an anchor point or a bounding box")
        px = places.to_pixels(pts, units, uid)
        if px is None:
            return None
        kind = "points" if visible else "text"
        return Shape([(k, px[0, 1], px[0, 0])], kind=kind, label=[text], color=color, name=text,
                     native_only=True)
    gtype = str(obj.get("GraphicType") or "").strip().upper()
    if gtype not in _GRAPHIC_POINTS:
        raise ValueError(f"graphic type {gtype[:16] or 'missing'}")
    got = graphic_values(obj)  # UN bytes of a long outline decoded as FL, size checked first
    if isinstance(got, str):
        raise ValueError(got)
    data = _floats(got, "graphic data")
    if len(data) % 2 or not len(data):
        raise ValueError(f"{len(data)} graphic data values (not pairs)")
    pts = data.reshape(-1, 2)
    lo, hi = _GRAPHIC_POINTS[gtype]
    if len(pts) < lo or (hi is not None and len(pts) > hi) or len(pts) > MAX_POINTS:
        raise ValueError(f"{len(pts)} points for a {gtype}")
    units = str(obj.get("GraphicAnnotationUnits") or "").strip().upper()
    px = places.to_pixels(pts, units, uid)
    if px is None:
        return None
    uv, closed, kind = outline_points(gtype, px)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= cols - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= rows - 0.5)
    if not inside.any():
        raise ValueError("outside the image")
    return Shape(np.column_stack([np.full(len(uv), float(k)), uv[:, 1], uv[:, 0]]), closed=closed, kind=kind,
                 color=color, name=gtype.lower(), native_only=True)


__all__ = ["PR", "PRESENTATION_STATE_CLASSES", "PresentationState", "read_presentation_state"]
