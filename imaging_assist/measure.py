"""Measurements and annotations on one 2-D slice: distance, angle, ROI statistics
(ellipse, rectangle, polygon, freehand), arrows and text notes.

No Qt here.  Points are continuous pixel coordinates ``(u, v)`` of the shown slice
(u = column, v = row) with pixel centres on whole numbers, so a ruler from the centre
of pixel 100 to the centre of pixel 200 in a row spans 100 pixels.  ``spacing`` is
``(horizontal, vertical)`` pixel size in mm (see :meth:`imaging_assist.layers.Plane.spacing2d`;
for an acquired slice that is ``(PixelSpacing[1], PixelSpacing[0])`` = ``volume.spacing[:2]``).

ROI statistics are computed over the pixels whose centres lie inside the shape, on the
modality values (HU for CT) - never on the windowed display values.  Area is the area
of the drawn shape in mm²; ``n`` says how many pixels were counted.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

Point = tuple[float, float]
KINDS = ("ruler", "ellipse", "rectangle", "angle", "polygon", "freehand", "arrow", "text")
# points a finished item needs (polygon and freehand: at least 3, closed by the user)
N_POINTS = {"ruler": 2, "ellipse": 2, "rectangle": 2, "angle": 3, "polygon": 3, "freehand": 3,
            "arrow": 2, "text": 1}
ROI_KINDS = ("ellipse", "rectangle", "polygon", "freehand")  # measured on the pixel values
OPEN_KINDS = ("polygon", "freehand")  # any number of vertices; finished when closed
ANNOTATION_KINDS = ("arrow", "text")  # marks with a note, no number


def distance_mm(p0: Sequence[float], p1: Sequence[float], spacing: Sequence[float]) -> float:
    """Length of the segment p0-p1 in mm (anisotropic pixels allowed)."""
    dx = (float(p1[0]) - float(p0[0])) * float(spacing[0])
    dy = (float(p1[1]) - float(p0[1])) * float(spacing[1])
    return math.hypot(dx, dy)


def angle_deg(p0: Sequence[float], vertex: Sequence[float], p1: Sequence[float],
              spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Angle p0-vertex-p1 in degrees (0..180), measured in mm space."""
    sx, sy = float(spacing[0]), float(spacing[1])
    a = np.array([(p0[0] - vertex[0]) * sx, (p0[1] - vertex[1]) * sy], float)
    b = np.array([(p1[0] - vertex[0]) * sx, (p1[1] - vertex[1]) * sy], float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0))))


#: what a length or area in px says when its image's pixel size applies only inside calibrated
#: ultrasound regions (``Volume.calibrated_regions``) and the shape is not inside one of them
OUTSIDE_REGION_NOTE = "outside the calibrated ultrasound region"


def region_spacing(regions, points: Sequence[Sequence[float]], axis: int = 0) -> tuple[float, float] | None:
    """The (horizontal, vertical) pixel size in mm of the calibrated ultrasound region
    (``Volume.calibrated_regions``: x0, y0, x1, y1 inclusive pixel bounds, dx, dy mm) that holds
    all ``points`` of a native slice (axis 0), or None: a region's pixel size applies inside it
    only (PS3.3 C.8.5.5.1).  The regions are rectangles, so a ruler, a rectangle, an ellipse or a
    polygon whose points are all inside one lies inside it; of nested regions the smallest counts."""
    if axis != 0 or not points:
        return None
    best = None
    for x0, y0, x1, y1, dx, dy in regions or ():
        # a pixel's centre is its whole coordinate: the region reaches half a pixel beyond its bounds
        if all(x0 - 0.5 <= u <= x1 + 0.5 and y0 - 0.5 <= v <= y1 + 0.5 for u, v in points):
            size = (x1 - x0 + 1) * (y1 - y0 + 1)
            if best is None or size < best[0]:
                best = (size, (float(dx), float(dy)))
    return best[1] if best else None


def remeasure_where_acquired(m: "Measurement", vol, plane) -> str | None:
    """A measurement on a reformatted plane whose voxel grid is not the patient's
    (:meth:`~imaging_assist.volume.Volume.reformat_distortion`: a gantry tilt shears it,
    uneven gaps stretch it): a ruler's length and an angle are measured again between the
    points where they were acquired (:meth:`~imaging_assist.volume.Volume.acquired_lps`);
    an area and the ROI statistics stay those of the grid and are said to be approximate.
    Updates ``m.result`` and returns the reason, or None when the grid is exact."""
    res = m.result
    reason = vol.reformat_distortion() if m.axis != 0 else None
    if not reason or res.get("length_unit") != "mm":
        return None
    shape3 = tuple(vol.array.shape[:3])
    pts = [vol.acquired_lps(*plane.to_voxel(u, v, m.index, shape3)) for u, v in m.points]
    text = list(res.get("text") or [])
    if m.kind == "ruler" and len(pts) >= 2:
        d = float(np.linalg.norm(pts[1] - pts[0]))
        res["length"], text[0] = d, f"{d:.1f} mm"
    elif m.kind == "angle" and len(pts) >= 3:
        a, b = pts[0] - pts[1], pts[2] - pts[1]
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        ang = float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0)))) if na and nb else 0.0
        res["angle"], text[0] = ang, f"{ang:.1f}°"
    elif m.kind in ROI_KINDS and text:
        text.append(f"Area approximate: reformatted grid ({reason})")
    res["text"], res["reformatted_grid"] = text, reason
    return reason


def roi_mask(shape: Sequence[int], kind: str, p0: Sequence[float], p1: Sequence[float]
             ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Boolean mask of the pixels inside an ellipse/rectangle spanned by corners p0, p1.

    Returns ``(mask, (row0, row1, col0, col1))``: the mask covers only that bounding box
    of the image (half-open ranges), so large images stay cheap.
    """
    rows, cols = int(shape[0]), int(shape[1])
    u0, u1 = sorted((float(p0[0]), float(p1[0])))
    v0, v1 = sorted((float(p0[1]), float(p1[1])))
    c0, c1 = max(0, math.ceil(u0)), min(cols, math.floor(u1) + 1)
    r0, r1 = max(0, math.ceil(v0)), min(rows, math.floor(v1) + 1)
    if c1 <= c0 or r1 <= r0:
        return np.zeros((0, 0), bool), (r0, r0, c0, c0)
    if kind == "rectangle":
        return np.ones((r1 - r0, c1 - c0), bool), (r0, r1, c0, c1)
    if kind != "ellipse":
        raise ValueError(f"ROI kind is 'ellipse' or 'rectangle', not {kind!r}")
    cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
    a, b = (u1 - u0) / 2, (v1 - v0) / 2
    if a <= 0 or b <= 0:
        return np.zeros((r1 - r0, c1 - c0), bool), (r0, r1, c0, c1)
    uu = (np.arange(c0, c1) - cu) / a
    vv = (np.arange(r0, r1) - cv) / b
    return (vv[:, None] ** 2 + uu[None, :] ** 2) <= 1.0 + 1e-9, (r0, r1, c0, c1)


def polygon_mask(shape: Sequence[int], points: Sequence[Sequence[float]]
                 ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Boolean mask of the pixels whose centres lie inside a closed polygon (u, v) vertices or on
    its outline (as the rectangle and ellipse count theirs), over the polygon's bounding box as
    :func:`roi_mask` returns it.  Inside-ness is scikit-image's ``grid_points_in_poly`` (even-odd,
    with the points on an edge or a vertex labelled as such): matplotlib's ``contains_points``
    left centres on an edge undefined, so the count depended on the direction it was drawn
    (a 10-pixel square: 110 or 90 pixels, the rectangle 121)."""
    from skimage.measure import grid_points_in_poly

    rows, cols = int(shape[0]), int(shape[1])
    pts = np.asarray(points, float).reshape(-1, 2)
    c0, c1 = max(0, math.ceil(pts[:, 0].min())), min(cols, math.floor(pts[:, 0].max()) + 1)
    r0, r1 = max(0, math.ceil(pts[:, 1].min())), min(rows, math.floor(pts[:, 1].max()) + 1)
    if c1 <= c0 or r1 <= r0 or len(pts) < 3:
        return np.zeros((0, 0), bool), (r0, r0, c0, c0)
    verts = np.column_stack([pts[:, 1] - r0, pts[:, 0] - c0])  # (row, col) in the box
    labels = grid_points_in_poly((r1 - r0, c1 - c0), verts, binarize=False)  # 0 out, 1 in, 2 vertex, 3 edge
    return labels > 0, (r0, r1, c0, c1)


#: crossings of one outline that are measured (:func:`outline_area`); a 300-vertex star drawn with
#: every edge crossing most others has 44,000, measured in about a second.  Beyond: a UserError
MAX_CROSSINGS = 50_000
_PAIRS_PER_QUERY = 250_000  # candidate pairs one tree query may return (a few MB; the count stops early)
_MAX_PAIRS = 50_000_000  # candidate pairs looked at in all (edge boxes, then rays): bounded time


def outline_area(points: Sequence[Sequence[float]]) -> tuple[float, bool]:
    """(area, crosses itself) of a closed outline, in its coordinates' units squared.

    The area is that of the parts filled on screen and counted in the masks: the even-odd rule
    (Qt's default fill, :func:`polygon_mask`, the slide region filter).  A simple outline gets
    the shoelace formula; an outline that crosses itself (a freehand figure eight, a loop drawn
    twice) would get a wrong one from it (the lobes of a figure eight cancel), so it is noded at
    its crossings by GEOS (shapely; QuPath measures with JTS, GEOS's original) and the even-odd
    faces are added up (:func:`_even_odd_area`).  An outline crossing itself more than
    :data:`MAX_CROSSINGS` times is refused (UserError): its faces grow as the crossings."""
    pts = np.asarray(points, float).reshape(-1, 2)
    if len(pts) < 3:
        return 0.0, False
    x, y = pts[:, 0], pts[:, 1]
    shoelace = float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
    import shapely

    ring = shapely.Polygon(pts)
    if shapely.is_valid(ring):
        return shoelace, False
    return _even_odd_area(pts), True


def _even_odd_area(pts: np.ndarray) -> float:
    """Area of the even-odd filled parts of a ring that crosses itself: the ring's line is noded
    at its crossings (``unary_union``) and ``polygonize`` gives the faces; a face is filled when a
    horizontal ray from a point inside it (``point_on_surface``) crosses the ring an odd number of
    times.  That is what ``make_valid(method="linework")`` measured, without its work growing
    much faster than the faces (117 s for a 200-vertex star).  The crossings are counted first,
    with bounded memory, and the work refused beyond :data:`MAX_CROSSINGS`."""
    import shapely

    from .errors import UserError

    pts = pts[np.any(pts != np.roll(pts, 1, axis=0), axis=1)]  # repeated vertices: no edge between
    n = len(pts)
    if n < 3:
        return 0.0
    a, b = pts, np.roll(pts, -1, axis=0)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    segs = shapely.linestrings(np.stack([a, b], axis=1))
    tree = shapely.STRtree(segs)
    too_tangled = UserError(f"the outline crosses itself more than {MAX_CROSSINGS:,} times: too "
                            "tangled to measure (draw it again without crossing itself)")
    # how many edges' boxes can meet each edge's (its x and its y extent overlap theirs): an upper
    # bound of what the tree returns, so each query is sized to return at most _PAIRS_PER_QUERY
    room = np.min([np.searchsorted(np.sort(lo[:, d]), hi[:, d], "right")
                   - np.searchsorted(np.sort(hi[:, d]), lo[:, d], "left") for d in (0, 1)], axis=0)
    cum = np.concatenate([[0], np.cumsum(room)])
    crossings = boxes = start = 0
    while start < n:
        stop = max(start + 1, int(np.searchsorted(cum, cum[start] + _PAIRS_PER_QUERY, "right")) - 1)
        i, j = tree.query(segs[start:stop])
        boxes += len(i)
        i = i + start
        keep = (j > i + 1) & ~((i == 0) & (j == n - 1))  # each pair once, not an edge and its neighbour
        crossings += int(np.count_nonzero(shapely.intersects(segs[i[keep]], segs[j[keep]])))
        if crossings > MAX_CROSSINGS or boxes > _MAX_PAIRS:
            raise too_tangled
        start = stop
    faces = shapely.get_parts(shapely.polygonize([shapely.unary_union(shapely.LineString(np.vstack([a, a[:1]])))]))
    if not len(faces):
        return 0.0
    inner = shapely.get_coordinates(shapely.point_on_surface(faces))
    px, py = inner[:, 0], inner[:, 1]
    # one ray per face, across the whole outline: the edges it meets are those spanning its y
    meets = np.searchsorted(np.sort(lo[:, 1]), py, "right") - np.searchsorted(np.sort(hi[:, 1]), py, "left")
    if meets.sum() > _MAX_PAIRS:
        raise too_tangled
    cum = np.concatenate([[0], np.cumsum(meets)])
    x0, x1 = lo[:, 0].min() - 1.0, hi[:, 0].max() + 1.0
    odd = np.zeros(len(faces), bool)
    start = 0
    while start < len(faces):
        stop = max(start + 1, int(np.searchsorted(cum, cum[start] + _PAIRS_PER_QUERY, "right")) - 1)
        k = stop - start
        rays = shapely.linestrings(np.stack([np.c_[np.full(k, x0), py[start:stop]],
                                             np.c_[np.full(k, x1), py[start:stop]]], axis=1))
        r, e = tree.query(rays)
        r = r + start
        ya, yb, y = a[e, 1], b[e, 1], py[r]
        crosses = (ya > y) != (yb > y)  # half-open, as polygon_mask's even-odd rule
        r, e, ya, yb, y = r[crosses], e[crosses], ya[crosses], yb[crosses], y[crosses]
        xi = a[e, 0] + (y - ya) * (b[e, 0] - a[e, 0]) / (yb - ya)
        odd ^= np.bincount(r[px[r] < xi], minlength=len(faces)) % 2 == 1
        start = stop
    return float(shapely.area(faces[odd]).sum())


def polygon_area_mm2(points: Sequence[Sequence[float]], spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Area of the closed outline in mm² (:func:`outline_area` on mm coordinates)."""
    return outline_area(np.asarray(points, float).reshape(-1, 2) * np.asarray(spacing[:2], float))[0]


@dataclass
class RoiStats:
    mean: float
    sd: float  # sample standard deviation (n - 1)
    min: float
    max: float
    n: int  # pixels counted
    area_mm2: float  # area of the drawn shape
    width_mm: float
    height_mm: float
    crosses_itself: bool = False  # a polygon / freehand outline that crosses itself

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def roi_stats(image: np.ndarray, kind: str, p0: Sequence[float], p1: Sequence[float],
              spacing: Sequence[float] = (1.0, 1.0)) -> RoiStats:
    """Statistics of the modality values inside an ellipse/rectangle ROI.

    Colour images are measured on their luma (0.299 R + 0.587 G + 0.114 B).
    """
    if kind in OPEN_KINDS:
        raise ValueError("polygon/freehand statistics come from polygon_stats (all vertices)")
    img = _gray(image)
    mask, (r0, r1, c0, c1) = roi_mask(img.shape, kind, p0, p1)
    w = abs(float(p1[0]) - float(p0[0])) * float(spacing[0])
    h = abs(float(p1[1]) - float(p0[1])) * float(spacing[1])
    area = w * h if kind == "rectangle" else math.pi * w * h / 4.0
    return _stats(img, mask, (r0, r1, c0, c1), area, w, h)


def polygon_stats(image: np.ndarray, points: Sequence[Sequence[float]],
                  spacing: Sequence[float] = (1.0, 1.0)) -> RoiStats:
    """Statistics of the modality values inside a closed polygon / freehand outline; area is
    the outline's area in mm² (not n × pixel area), width/height its bounding box in mm."""
    img = _gray(image)
    pts = np.asarray(points, float).reshape(-1, 2)
    mask, box = polygon_mask(img.shape, pts)
    w = float(np.ptp(pts[:, 0])) * float(spacing[0]) if len(pts) else 0.0
    h = float(np.ptp(pts[:, 1])) * float(spacing[1]) if len(pts) else 0.0
    area, crosses = outline_area(pts * np.asarray(spacing[:2], float))
    st = _stats(img, mask, box, area, w, h)
    st.crosses_itself = crosses
    return st


def _gray(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return img


def _stats(img, mask, box, area, w, h) -> RoiStats:
    r0, r1, c0, c1 = box
    vals = img[r0:r1, c0:c1][mask].astype(np.float64) if mask.size else np.zeros(0)
    if vals.size == 0:
        nan = float("nan")
        return RoiStats(nan, nan, nan, nan, 0, area, w, h)
    sd = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return RoiStats(float(vals.mean()), sd, float(vals.min()), float(vals.max()), int(vals.size), area, w, h)


def _fmt(v: float, units: str) -> str:
    if not math.isfinite(v):
        return "-"
    s = f"{v:.1f}" if abs(v) < 1e4 else f"{v:.4g}"
    return f"{s} {units}".rstrip()


_ids = itertools.count(1)


@dataclass
class Measurement:
    """One measurement drawn on a slice of a plane.

    ``axis``/``index`` say which slice (the :class:`~imaging_assist.layers.Plane` axis and
    slice index); ``points`` are display (u, v) coordinates on that slice.
    """

    kind: str
    points: list[Point]
    axis: int = 0
    index: int = 0
    id: int = field(default_factory=lambda: next(_ids))
    result: dict = field(default_factory=dict)
    text: str = ""  # the note of an arrow / text annotation
    closed: bool = True  # polygon / freehand: False while it is being drawn

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"measurement kind is one of {KINDS}, not {self.kind!r}")
        self.points = [(float(p[0]), float(p[1])) for p in self.points]
        if not all(math.isfinite(c) for p in self.points for c in p):
            raise ValueError("measurement points must be finite numbers")
        self.text = str(self.text or "")

    @property
    def complete(self) -> bool:
        if self.kind in OPEN_KINDS:
            return self.closed and len(self.points) >= N_POINTS[self.kind]
        return len(self.points) >= N_POINTS[self.kind]

    def compute_on(self, vol, image: np.ndarray | None = None,
                   spacing: Sequence[float] | None = None) -> dict:
        """:meth:`compute` with the units, spacing and spacing source of a Volume.

        ``image``/``spacing`` default to the native slice ``self.index`` and
        ``vol.spacing[:2]``; pass them for a reformatted plane.  Without a known spacing
        (``vol.spacing_known`` False) every length and area is in pixels, except inside one of
        the image's calibrated ultrasound regions (:func:`region_spacing`): in mm there, and
        outside them in px with a note (:data:`OUTSIDE_REGION_NOTE`)."""
        known = bool(getattr(vol, "spacing_known", True))
        if image is None and self.kind in ROI_KINDS:
            image = vol.array[self.index]
        regions = getattr(vol, "calibrated_regions", None)
        if regions and not known:  # (a pixel size calibrated by the user applies to the whole image)
            sp = region_spacing(regions, self.points, self.axis)
            if sp is not None:
                return self.compute(image, sp, getattr(vol, "units", ""), "mm", spacing_source="calibrated")
            res = self.compute(image, (1.0, 1.0), getattr(vol, "units", ""), "px", spacing_source="none")
            if self.kind == "ruler" or self.kind in ROI_KINDS:
                res["spacing_note"] = OUTSIDE_REGION_NOTE
                if res.get("text"):
                    res["text"].append(f"In px: {OUTSIDE_REGION_NOTE}")
            return res
        sp = (spacing if spacing is not None else vol.spacing[:2]) if known else (1.0, 1.0)
        return self.compute(image, sp, getattr(vol, "units", ""), "mm" if known else "px",
                            spacing_source=getattr(vol, "spacing_source", "none") if known else "none")

    def compute(self, image: np.ndarray | None, spacing: Sequence[float], units: str = "",
                length_unit: str = "mm", spacing_source: str | None = None) -> dict:
        """Fill and return ``result`` (numbers plus a ``text`` list of display lines).

        ``units`` are the image's value units ("HU"); ``length_unit`` is "mm", or "px"
        when the file gives no pixel spacing (pass spacing (1, 1) then).
        ``spacing_source`` is the volume's :attr:`~imaging_assist.volume.Volume.spacing_source`
        ("none" forces pixels); it is kept in the result and named in :meth:`summary`.
        """
        if spacing_source == "none":
            length_unit, spacing = "px", (1.0, 1.0)
        elif spacing_source is None and length_unit == "px":
            spacing_source = "none"
        p = self.points
        res: dict = {"kind": self.kind}
        if self.kind == "ruler" and len(p) >= 2:
            d = distance_mm(p[0], p[1], spacing)
            res.update(length=d, text=[f"{d:.1f} {length_unit}" if length_unit == "mm" else f"{d:.1f} px"])
        elif self.kind == "angle" and len(p) >= 3:
            a = angle_deg(p[0], p[1], p[2], spacing)
            res.update(angle=a, text=[f"{a:.1f}°"])
        elif self.kind in ROI_KINDS and len(p) >= N_POINTS[self.kind] and image is not None:
            st = (polygon_stats(image, p, spacing) if self.kind in OPEN_KINDS
                  else roi_stats(image, self.kind, p[0], p[1], spacing))
            area_unit = "mm²" if length_unit == "mm" else "px²"
            res.update(st.to_dict())
            res["text"] = [f"Mean {_fmt(st.mean, units)}  SD {_fmt(st.sd, '')}",
                           f"Min {_fmt(st.min, '')}  Max {_fmt(st.max, '')}",
                           f"Area {st.area_mm2:.1f} {area_unit}  (n={st.n})"]
            if st.crosses_itself:  # the area is the even-odd fill drawn; the reader should know
                res["text"].append("Outline crosses itself: filled parts only")
        elif self.kind in ANNOTATION_KINDS:
            res["text"] = [self.text] if self.text else []
        else:
            res["text"] = []
        res["units"] = units
        res["length_unit"] = length_unit
        if spacing_source is not None:
            res["spacing_source"] = spacing_source
        self.result = res
        return res

    def _source_note(self) -> str:
        src = self.result.get("spacing_source")
        if src is None:
            return ""
        if self.result.get("spacing_note"):
            return f" ({self.result['spacing_note']})"
        return " (no spacing)" if src == "none" else f" ({src})"

    def summary(self) -> str:
        """One line for a list: the main numbers, and where the pixel size came from
        (e.g. "42.1 mm (ImagerPixelSpacing/ERMF)", "310.0 px (no spacing)")."""
        r = self.result
        if self.kind == "ruler" and "length" in r:
            return r["text"][0] + self._source_note()
        if self.kind == "angle" and "angle" in r:
            return r["text"][0]
        if self.kind in ANNOTATION_KINDS:
            return f"“{self.text}”" if self.text else ""
        if "mean" in r:
            u = r.get("units", "")
            au = "mm²" if r.get("length_unit", "mm") == "mm" else "px²"
            return (f"{_fmt(r['mean'], '')} ± {_fmt(r['sd'], '')} {u}, {r['area_mm2']:.0f} {au}".replace("  ", " ")
                    + self._source_note())
        return ""

    def to_dict(self) -> dict:
        out = {"id": self.id, "kind": self.kind, "axis": self.axis, "index": self.index,
               "points": [list(p) for p in self.points]}
        if self.text:
            out["text"] = self.text
        out.update({k: v for k, v in self.result.items() if k not in ("text", "display_text")})
        return out

    def state(self) -> dict:
        """What an edit can change (for undo): the points and the note."""
        return {"points": list(self.points), "text": self.text}

    def set_state(self, state: dict) -> None:
        self.points = [(float(p[0]), float(p[1])) for p in state["points"]]
        self.text = str(state.get("text", ""))

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        """The inverse of :meth:`to_dict` (numbers are recomputed, never trusted from the file).
        Raises ValueError / TypeError / KeyError on a malformed item."""
        kind = d["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        pts = d["points"]
        if not isinstance(pts, list) or not (N_POINTS[kind] <= len(pts) <= 100_000):
            raise ValueError(f"{kind}: {len(pts) if isinstance(pts, list) else 'no'} points")
        text = d.get("text", "")
        if not isinstance(text, str):
            raise TypeError("text must be a string")
        m = cls(kind, [(float(p[0]), float(p[1])) for p in pts], int(d.get("axis", 0)), int(d.get("index", 0)),
                text=text[:10_000])
        if m.axis not in (0, 1, 2) or m.index < 0:
            raise ValueError(f"slice {m.axis}/{m.index} does not exist")
        return m
