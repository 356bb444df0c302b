"""The regions of a structured report placed on the series they refer to, as shapes to draw.

No Qt here.  :func:`imaging_assist.dicom.result_objects.read_sr` keeps each measurement
group's usable region (SCOORD on an image, SCOORD3D in patient space); :func:`place_regions`
puts them on the shown volume's voxel grid as a :class:`imaging_assist.layers.ShapesLayer`,
labelled with the group's name and measurements, the way OHIF and Weasis show the ROIs of a
TID 1500 measurement report over the image.  Our own measurement SRs
(:mod:`imaging_assist.export.sr_measurements`) thus come back on the slice they were drawn
on.

Placement follows the DICOM definitions and never guesses:

* SCOORD (PS3.3 C.18.6): (column, row) on the image its IMAGE item names (else the images
  of its group), the first pixel's centre at (0.5, 0.5).  A region whose image is not a
  slice of this series is not drawn (the Results list says "refers to no image of this
  series").  CIRCLE is centre + a point on the circle, ELLIPSE the end points of its major
  then its minor axis, both in pixels; they are drawn as 64-point outlines.  A closed
  POLYLINE (last point = first) is drawn closed.
* SCOORD3D (C.18.9): LPS millimetres in the frame of reference it names; one in another
  frame of reference than the series' is not drawn.  Each point goes to the slice whose own
  plane (ImagePositionPatient: uneven gaps) it lies in, the in-plane position by the
  orientation and pixel spacing.  A region that lies in no plane of the volume (an
  oblique polygon) and an ELLIPSOID (a solid, not an outline) are not drawn, with a warning:
  a cut through them would be a different shape.
* A region whose points all lie outside the image is said, as is one of more than
  :data:`MAX_REGION_POINTS` points (drawn on every repaint).
"""

from __future__ import annotations

import math

import numpy as np

from ..layers import Shape, ShapesLayer
from .result_objects import StructuredReport, _Grid, other_patient

MAX_REGION_POINTS = 20_000  # a region drawn on every repaint; a freehand outline has hundreds
MAX_LABEL_LINES = 6  # the group's name and up to five measurements (an ROI: mean, SD, min, max, area)
ELLIPSE_POINTS = 64
SR_SHAPE_COLOR = (110, 225, 140)


_SHORT_NAMES = {"standard deviation": "SD", "minimum": "Min", "maximum": "Max", "comment": ""}


def _number(x: float) -> str:
    """A value as a label shows it: whole numbers whole, others with one decimal (three
    significant digits under 1); the Results list keeps the report's own digits."""
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def _label_line(item) -> str:
    name = _SHORT_NAMES.get(item.name.lower(), item.name)
    value = _number(item.number) if item.kind == "measurement" and item.number is not None else item.value
    sep = ": " if item.kind == "finding" else " "
    return f"{name}{sep}{value} {item.unit}".strip() if name else f"{value} {item.unit}".strip()


def _ellipse(centre, a, b, n: int = ELLIPSE_POINTS) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.asarray(centre)[None, :] + np.cos(t)[:, None] * a[None, :] + np.sin(t)[:, None] * b[None, :]


def outline_points(graphic_type: str, pts: np.ndarray) -> tuple[np.ndarray, bool, str]:
    """(points, closed, kind) to draw for a graphic type of an SR region or a presentation
    state's graphic object (2D or 3D points): POINT/MULTIPOINT as points, CIRCLE (centre, a
    point on it) and ELLIPSE (major then minor axis ends) as 64-point outlines, POLYGON and a
    POLYLINE/INTERPOLATED whose last point repeats the first closed, others open."""
    if graphic_type in ("POINT", "MULTIPOINT"):
        return pts, False, "points"
    if graphic_type == "CIRCLE":
        c = pts[0]
        r = float(np.linalg.norm(pts[1] - c))
        a = np.zeros_like(c)
        b = np.zeros_like(c)
        a[0], b[1] = r, r
        return _ellipse(c, a, b), True, "path"
    if graphic_type == "ELLIPSE":
        c = (pts[0] + pts[1]) / 2
        return _ellipse(c, (pts[1] - pts[0]) / 2, (pts[3] - pts[2]) / 2), True, "path"
    closed = graphic_type == "POLYGON"
    if len(pts) > 2 and np.allclose(pts[0], pts[-1]):
        pts, closed = pts[:-1], True  # a closed POLYLINE repeats its first point
    return pts, closed, "path"


def _lps_to_kji(grid: _Grid, volume, lps: np.ndarray) -> np.ndarray:
    """Array coordinates (k, j, i) of LPS points: k from each slice's own plane position
    (linear between neighbouring slices), (j, i) from the orientation and pixel spacing."""
    d = np.asarray(volume.direction, float)
    sx, sy = float(volume.spacing[0]), float(volume.spacing[1])
    n = np.asarray(volume.normal, float)
    levels = grid.ipp @ n  # each slice's level along the normal
    order = np.argsort(levels)
    out = np.empty((len(lps), 3))
    for m, p in enumerate(lps):
        lv = float(p @ n)
        k = float(np.interp(lv, levels[order], order.astype(float),
                            left=math.nan, right=math.nan)) if len(levels) > 1 else 0.0
        if not math.isfinite(k):  # beyond the first or last slice: extrapolate by the mean gap
            gap = (levels[order[-1]] - levels[order[0]]) / max(len(levels) - 1, 1) or float(volume.spacing[2])
            edge = order[0] if lv < levels[order[0]] else order[-1]
            k = float(edge) + (lv - levels[edge]) / gap * (1 if order[-1] > order[0] else -1)
        ref = grid.ipp[int(min(max(round(k), 0), len(grid.ipp) - 1))]
        rel = p - ref
        out[m] = (k, float(rel @ d[:, 1]) / sy, float(rel @ d[:, 0]) / sx)
    return out


def _in_some_plane(kji: np.ndarray, tolerance: float = 0.5) -> bool:
    return any(float(np.ptp(kji[:, a])) <= 2 * tolerance for a in range(3))


def place_regions(report: StructuredReport, volume, name: str = "") -> tuple[ShapesLayer | None, list[str]]:
    """The report's regions that lie on ``volume`` as one shapes layer (None when none
    does), and one-line warnings about regions that cannot be drawn."""
    why = other_patient(report.patient_id, volume)
    if why:  # another patient's findings are never drawn on this one
        return None, [f"the structured report {why}"]
    grid = _Grid(volume)
    headers = getattr(volume, "headers", None) or []
    vol_for = str(headers[0].get("FrameOfReferenceUID") or "") if headers else ""
    groups: dict[int, tuple] = {}  # region key -> (region, its items)
    for it in report.items:
        for r in it.regions:
            groups.setdefault(r.key, (r, []))[1].append(it)
    shapes, warnings = [], []
    rows, cols = grid.rows, grid.cols
    for r, items in groups.values():
        title = items[0].group or items[0].name or "region"
        label = [title] + [_label_line(i) for i in items][:MAX_LABEL_LINES - 1]
        if len(r.points) > MAX_REGION_POINTS:
            warnings.append(f"{title}: region has {len(r.points)} points (over {MAX_REGION_POINTS}): "
                            "not drawn; its measurements are listed")
            continue
        pts = np.asarray(r.points, float)
        if r.dims == 2:
            k = None
            for uid, fr in (r.references or items[0].references):
                k = grid.slice_of_ref(uid, fr)
                if k is not None:
                    break
            if k is None:
                continue  # on an image of another series: the list says so
            uv, closed, kind = outline_points(r.graphic_type, pts - 0.5)
            kji = np.column_stack([np.full(len(uv), float(k)), uv[:, 1], uv[:, 0]])
        else:
            if r.frame_of_reference and vol_for and r.frame_of_reference != vol_for:
                continue  # a position in another frame of reference is no position here
            if not grid.geometric:
                warnings.append(f"{title}: region in patient coordinates, and this series has no "
                                "position and orientation: not drawn")
                continue
            if r.graphic_type == "ELLIPSOID":
                warnings.append(f"{title}: an ellipsoid region is not drawn (a cut through it is "
                                "not its outline); its measurements are listed")
                continue
            xyz, closed, kind = outline_points(r.graphic_type, pts)
            kji = _lps_to_kji(grid, volume, xyz)
            if kind == "path" and not _in_some_plane(kji):
                warnings.append(f"{title}: region does not lie in a plane of this series "
                                "(oblique to its slices): not drawn; its measurements are listed")
                continue
        inside = ((kji[:, 1] >= -0.5) & (kji[:, 1] <= rows - 0.5) & (kji[:, 2] >= -0.5)
                  & (kji[:, 2] <= cols - 0.5) & (kji[:, 0] >= -0.5) & (kji[:, 0] <= grid.n - 0.5))
        if not inside.any():
            warnings.append(f"{title}: region lies outside the image it refers to: not drawn")
            continue
        shapes.append(Shape(kji, closed=closed, kind=kind, label=label, color=SR_SHAPE_COLOR, style="dashed",
                            native_only=r.dims == 2))
    if not shapes:
        return None, warnings
    layer = ShapesLayer(f"{name or report.title}: regions", shapes)
    return layer, warnings


#: how our own export names a reader's item (export/sr.py ``_viewer_groups``: "viewer KIND ID")
OWN_PREFIX = "viewer "


def own_measurement_regions(layer: ShapesLayer | None, measurements, tolerance_px: float = 0.05) -> list[int]:
    """Indices of ``layer``'s regions that are one of the reader's own current measurements,
    exported earlier into this SR (File > Export measurements, saved into the study folder):
    the group's tracking identifier is ours ("viewer KIND ID"), the measurement is of that kind,
    on the same acquired slice, and both have the same extent (bounding box within
    ``tolerance_px``).  The ID is not compared: a measurement gets a new one in each session.
    A measurement moved or edited since the export no longer matches, so the exported version
    is drawn beside it."""
    if layer is None:
        return []
    own = {}
    for m in measurements or []:
        pts = np.asarray(getattr(m, "points", ()), float).reshape(-1, 2)
        if getattr(m, "axis", 0) == 0 and len(pts):
            box = np.concatenate([pts.min(0), pts.max(0)])  # (u0, v0, u1, v1): column, row
            own.setdefault((m.kind, int(m.index)), []).append(box)
    out = []
    for n, sh in enumerate(layer.shapes):
        title = sh.label[0] if sh.label else ""
        parts = title.split()
        if not (sh.native_only and title.startswith(OWN_PREFIX) and len(parts) == 3):
            continue
        k = np.unique(np.round(sh.points[:, 0], 3))
        if len(k) != 1 or abs(k[0] - round(k[0])) > 1e-3:
            continue
        uv = sh.points[:, [2, 1]]  # (column, row) like the viewer's points
        box = np.concatenate([uv.min(0), uv.max(0)])
        if any(np.all(np.abs(box - b) <= tolerance_px) for b in own.get((parts[1], int(round(k[0]))), ())):
            out.append(n)
    return out


__all__ = ["place_regions", "outline_points", "own_measurement_regions", "MAX_LABEL_LINES", "MAX_REGION_POINTS"]
