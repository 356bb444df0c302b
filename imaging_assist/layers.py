"""Overlay layers drawn over an image volume: label maps, heat maps, finding markers and
shapes (an SR's regions, a presentation state's annotations, a nodule's diameters).

No Qt here.  The viewer (``imaging_assist_ui``) draws what this module computes; the
model runtime produces layers; tests can composite without a GUI.

Arrays use the volume's voxel grid, indexed ``[k, j, i]`` (slice, row, column) exactly
like :attr:`imaging_assist.volume.Volume.array`.  A 2-D array ``[j, i]`` is accepted for
single images and treated as one slice.

Typical use::

    from imaging_assist.layers import (LayerStack, LabelLayer, HeatmapLayer, MarkerLayer,
                                       Marker, Plane)
    stack = LayerStack()
    stack.add(LabelLayer("Lungs", mask, names={1: "right lung", 2: "left lung"}))
    stack.add(HeatmapLayer("Grad-CAM", cam, threshold=0.2, method="Grad-CAM"))  # inferno, fading
    stack.add(MarkerLayer("Findings", [Marker((k, j, i), "nodule", score=0.91)]))
    stack.subscribe(lambda event, layer: print(event, layer.name))   # redraw hook
    stack.get("Lungs").mode = "outline"        # any attribute change notifies
    rgba = stack.composite(Plane.native(), k)  # (rows, cols, 4) uint8, straight alpha

Planes: :class:`Plane` says which array axis is held fixed and how the other two are laid
out on screen (see :func:`standard_planes` for the radiological conventions: patient
left on screen right, anterior up in axial views, superior up in coronal/sagittal views).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

# --------------------------------------------------------------------------- colours
# The colours live in imaging_assist.colormaps (one set for the viewer and the key images);
# re-exported here because the UI imports them from this module.
from .colormaps import (CONTOUR_LEVELS, COLORMAPS, DEFAULT_HEAT_COLORMAP, DEFAULT_HEAT_OPACITY,  # noqa: E402,F401
                        LABEL_PALETTE, colormap_rgb, fade_alpha, iso_lines, label_color)

HEAT_MODES = ("fill", "contour")


def argb32(r, g, b, a) -> np.ndarray:
    """Premultiplied 0xAARRGGBB words (QImage.Format_ARGB32_Premultiplied) from straight RGBA."""
    r, g, b, a = (np.asarray(v, np.uint32) for v in (r, g, b, a))
    pr, pg, pb = ((c * a + 127) // 255 for c in (r, g, b))
    return (a << 24) | (pr << 16) | (pg << 8) | pb


def argb32_to_rgba(words: np.ndarray) -> np.ndarray:
    """Premultiplied ARGB32 words -> straight RGBA uint8 (..., 4)."""
    w = np.asarray(words, np.uint32)
    a = (w >> 24) & 0xFF
    out = np.empty(w.shape + (4,), np.uint8)
    safe = np.maximum(a, 1)
    for c, shift in enumerate((16, 8, 0)):
        ch = (w >> shift) & 0xFF
        out[..., c] = np.where(a > 0, np.minimum(255, (ch * 255 + safe // 2) // safe), 0)
    out[..., 3] = a
    return out


# --------------------------------------------------------------------------- planes
_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))


@dataclass(frozen=True)
class Plane:
    """A 2-D view of a ``[k, j, i]`` array.

    ``axis`` is the array axis held fixed (0 = k, the acquired slices; 1 = j; 2 = i).
    The shown image has array axis ``h_axis`` running left to right and ``v_axis``
    running top to bottom, each reversed when ``flip_h`` / ``flip_v`` is set.
    Display coordinates ``(u, v)`` are continuous pixel coordinates of that image with
    pixel centres on integers.
    """

    axis: int = 0
    h_axis: int = 2
    v_axis: int = 1
    flip_h: bool = False
    flip_v: bool = False
    name: str = "native"

    @staticmethod
    def native() -> "Plane":
        """The acquired slices as stored (columns left to right, rows top to bottom)."""
        return Plane()

    # -- pixels ---------------------------------------------------------------
    def extract(self, arr: np.ndarray, index: int) -> np.ndarray:
        """The 2-D slice (a view when possible); a trailing colour axis is kept."""
        s = np.take(arr, int(index), axis=self.axis) if self.axis else arr[int(index)]
        if self.h_axis < self.v_axis:  # remaining axes come out as (min, max): need (v, h)
            s = np.swapaxes(s, 0, 1)
        if self.flip_v:
            s = s[::-1]
        if self.flip_h:
            s = s[:, ::-1]
        return s

    def n_slices(self, shape3: Sequence[int]) -> int:
        return int(shape3[self.axis])

    def shape2d(self, shape3: Sequence[int]) -> tuple[int, int]:
        """(rows, cols) of the shown image."""
        return int(shape3[self.v_axis]), int(shape3[self.h_axis])

    def spacing2d(self, spacing_xyz: Sequence[float]) -> tuple[float, float]:
        """(horizontal, vertical) pixel size in mm from a volume's (x, y, z) spacing."""
        sp = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])  # per array axis k, j, i
        return float(sp[self.h_axis]), float(sp[self.v_axis])

    def slice_spacing(self, spacing_xyz: Sequence[float]) -> float:
        return float((spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])[self.axis])

    # -- coordinates ----------------------------------------------------------
    def to_voxel(self, u: float, v: float, index: float, shape3: Sequence[int]) -> tuple[float, float, float]:
        """Display (u, v) on slice ``index`` -> array coordinates (k, j, i)."""
        out = [0.0, 0.0, 0.0]
        out[self.axis] = float(index)
        out[self.h_axis] = (shape3[self.h_axis] - 1 - u) if self.flip_h else u
        out[self.v_axis] = (shape3[self.v_axis] - 1 - v) if self.flip_v else v
        return out[0], out[1], out[2]

    def from_voxel(self, kji: Sequence[float], shape3: Sequence[int]) -> tuple[float, float, float]:
        """Array coordinates (k, j, i) -> (u, v, index) on this plane."""
        h, v = float(kji[self.h_axis]), float(kji[self.v_axis])
        if self.flip_h:
            h = shape3[self.h_axis] - 1 - h
        if self.flip_v:
            v = shape3[self.v_axis] - 1 - v
        return h, v, float(kji[self.axis])

    def screen_vectors(self, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LPS unit vectors pointing to screen right and screen down."""
        d = np.asarray(direction, float)
        per_axis = {0: d[:, 2], 1: d[:, 1], 2: d[:, 0]}
        right = per_axis[self.h_axis] * (-1 if self.flip_h else 1)
        down = per_axis[self.v_axis] * (-1 if self.flip_v else 1)
        return right, down

    def orientation_labels(self, direction: np.ndarray) -> dict[str, str]:
        """Letters for the left/right/top/bottom screen edges (A/P/R/L/S/I)."""
        from .volume import orientation_letters
        right, down = self.screen_vectors(direction)
        return {"right": orientation_letters(right), "left": orientation_letters(-right),
                "bottom": orientation_letters(down), "top": orientation_letters(-down)}


_KINDS = ("sagittal", "coronal", "axial")  # the plane perpendicular to L, P, S


def _axis_vectors(direction: np.ndarray) -> dict[int, np.ndarray]:
    """LPS direction of each array axis (0 = k, 1 = j, 2 = i)."""
    d = np.asarray(direction, float)
    return {0: d[:, 2], 1: d[:, 1], 2: d[:, 0]}


def plane_kinds(direction: np.ndarray) -> tuple[str, str, str]:
    """'axial', 'coronal' or 'sagittal' for the planes perpendicular to array axes 0, 1, 2.

    Each plane is named after the L, P or S axis its normal points most along.  When two
    normals would get the same name (a double-oblique acquisition), the names are given
    jointly: the one-to-one assignment of normals to L, P, S with the largest summed |cosine|.
    """
    cos = np.abs(np.stack(list(_axis_vectors(direction).values())))  # [array axis, lps axis]
    own = [int(np.argmax(row)) for row in cos]
    if len(set(own)) == 3:  # each normal has its own dominant axis: that is also the best assignment
        return tuple(_KINDS[x] for x in own)
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(cos[a, perm[a]] for a in range(3)))
    return tuple(_KINDS[x] for x in best)


def plane_kind(direction: np.ndarray, axis: int) -> str:
    """'axial', 'coronal' or 'sagittal': the anatomical plane perpendicular to ``axis``
    (see :func:`plane_kinds`; the three axes always get three different names)."""
    return plane_kinds(direction)[axis]


def standard_planes(direction: np.ndarray) -> list[Plane]:
    """Three orthogonal planes: the acquired one as stored, the two reformats by convention.

    Reformatted planes follow the radiological display convention: axial with patient
    left on screen right and anterior up, coronal with left on the right and superior
    up, sagittal with anterior on the left and superior up.  On oblique series these
    hold as nearly as the voxel grid allows (the orientation letters say what is shown).
    """
    per_axis = _axis_vectors(direction)
    kinds = plane_kinds(direction)
    # desired (lps axis, sign) for screen-right and screen-down, per anatomical plane
    want = {"axial": ((0, +1), (1, +1)), "coronal": ((0, +1), (2, -1)), "sagittal": ((1, +1), (2, -1))}
    planes = [Plane(0, 2, 1, False, False, kinds[0])]
    for axis in (1, 2):
        kind = kinds[axis]
        (h_lps, h_sign), (v_lps, v_sign) = want[kind]
        a, b = [x for x in (0, 1, 2) if x != axis]
        # the pairing of the remaining axes with screen right/down that fits both best
        # (on a double-oblique series the axis most along the horizontal direction can
        # be the one that should run vertically)
        h = a if (abs(per_axis[a][h_lps]) + abs(per_axis[b][v_lps])
                  >= abs(per_axis[b][h_lps]) + abs(per_axis[a][v_lps])) else b
        v = b if h == a else a
        flip_h = per_axis[h][h_lps] * h_sign < 0
        flip_v = per_axis[v][v_lps] * v_sign < 0
        planes.append(Plane(axis, h, v, bool(flip_h), bool(flip_v), kind))
    return planes


# --------------------------------------------------------------------------- layers
class _Notifying:
    """Attribute changes on public fields tell the owner (a layer stack) to redraw."""

    _owner = None

    def __setattr__(self, name, value):
        old = self.__dict__.get(name, _MISSING)
        object.__setattr__(self, name, value)
        if not name.startswith("_") and self._owner is not None:
            try:
                same = old is value or bool(old == value)
            except Exception:  # arrays: compare by identity only
                same = False
            if not same:
                self._changed()

    def _changed(self):
        if self._owner is not None:
            self._owner._changed()


_MISSING = object()


class LabelInfo(_Notifying):
    """One label of a label map: its value, name, colour and visibility."""

    def __init__(self, value: int, name: str = "", color: Sequence[int] | None = None,
                 visible: bool = True):
        self.value = int(value)
        self.name = name or f"label {int(value)}"
        self.color = tuple(int(c) for c in (color or label_color(value)))[:3]
        self.visible = bool(visible)

    def __repr__(self):
        return f"LabelInfo({self.value}, {self.name!r}, color={self.color}, visible={self.visible})"


class Layer(_Notifying):
    """Base class: a named, toggleable layer.  ``kind`` is 'label', 'heatmap', 'markers' or 'shapes'."""

    kind = "layer"
    # Placement on a whole-slide image (None for radiology layers, which share the volume
    # grid): level-0 pixels per layer pixel (dx, dy), and the level-0 (x, y) of pixel (0, 0).
    downsample: tuple[float, float] | None = None
    origin: tuple[float, float] | None = None

    def __init__(self, name: str, visible: bool = True, opacity: float = 0.5):
        self._version = 0
        self.name = name
        self.warnings: list[str] = []  # what the reader should know about how it was made (load_overlay)
        self.visible = bool(visible)
        self.opacity = float(opacity)

    def _changed(self):
        self._version += 1
        if self._owner is not None:
            self._owner._emit("changed", self)

    @property
    def is_raster(self) -> bool:
        return False

    def render_argb32(self, plane: Plane, index: int) -> np.ndarray | None:
        """Premultiplied ARGB32 words (rows, cols) for one slice, or None when nothing shows."""
        return None


def _as3d(arr) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"layer arrays are [k, j, i] (or [j, i]); got shape {a.shape}")
    return a


class _RasterLayer(Layer):
    """A layer backed by an ``array`` on the volume grid ``[k, j, i]``."""

    array: np.ndarray

    @property
    def is_raster(self) -> bool:
        return True

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)


class LabelLayer(_RasterLayer):
    """A segmentation label map: integer array, 0 = background.

    ``names`` maps label values to names (and fixes which labels exist); ``colors``
    maps values to RGB.  ``mode`` is ``"fill"`` or ``"outline"``.
    """

    kind = "label"

    def __init__(self, name: str, array, names: dict[int, str] | None = None,
                 colors: dict[int, Sequence[int]] | None = None, opacity: float = 0.5,
                 mode: str = "fill", visible: bool = True):
        a = _as3d(array)
        if a.dtype == np.bool_:
            a = a.view(np.uint8)
        elif a.dtype not in (np.uint8, np.uint16):
            if a.dtype.kind == "f" and a.size and not (np.all(np.isfinite(a)) and np.all(np.mod(a, 1) == 0)):
                raise ValueError("a label map must hold whole numbers")
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ValueError("label values must lie in 0..65535")
            a = a.astype(np.uint16 if a.size and a.max() > 255 else np.uint8)
        super().__init__(name, visible, opacity)
        self._lut_cache = None
        self._max = int(a.max()) if a.size else 0
        self.array = a
        if mode not in ("fill", "outline"):
            raise ValueError("mode is 'fill' or 'outline'")
        self.mode = mode
        values = sorted(names) if names else self._present_values()
        self.labels: dict[int, LabelInfo] = {}
        for v in values:
            if int(v) == 0:
                continue
            info = LabelInfo(v, (names or {}).get(v, ""), (colors or {}).get(v))
            info._owner = self
            self.labels[int(v)] = info

    def _present_values(self) -> list[int]:
        counts = np.bincount(self.array.ravel(), minlength=1)
        return [int(v) for v in np.nonzero(counts)[0] if v != 0]

    def label(self, value: int) -> LabelInfo:
        return self.labels[int(value)]

    def lut(self) -> np.ndarray:
        """ARGB32 word per label value (0 and hidden labels transparent)."""
        if self._lut_cache is not None and self._lut_cache[0] == self._version:
            return self._lut_cache[1]
        n = 256 if self.array.dtype == np.uint8 else max(256, max(self.labels, default=0) + 1,
                                                             self._max + 1)
        rgba = np.zeros((n, 4), np.uint32)
        a = int(round(np.clip(self.opacity, 0, 1) * 255))
        for v, info in self.labels.items():
            if info.visible and v < n:
                rgba[v] = (*info.color, a)
        lut = argb32(rgba[:, 0], rgba[:, 1], rgba[:, 2], rgba[:, 3]).astype(np.uint32)
        self._lut_cache = (self._version, lut)
        return lut

    def render_argb32(self, plane: Plane, index: int) -> np.ndarray | None:
        if not self.visible or self.opacity <= 0 or not 0 <= index < plane.n_slices(self.array.shape):
            return None
        s = plane.extract(self.array, index)
        if self.mode == "outline":
            s = outline(s)
        return self.lut()[s]

    def counts(self) -> dict[int, int]:
        """Voxels per label value (for volumes: multiply by the voxel volume for mm³)."""
        c = np.bincount(self.array.ravel())
        return {v: int(c[v]) if v < len(c) else 0 for v in self.labels}


def outline(labels2d: np.ndarray) -> np.ndarray:
    """Keep only the boundary pixels of each labelled region (4-neighbourhood)."""
    s = labels2d
    edge = np.zeros(s.shape, bool)
    d = s[:-1] != s[1:]
    edge[:-1] |= d
    edge[1:] |= d
    d = s[:, :-1] != s[:, 1:]
    edge[:, :-1] |= d
    edge[:, 1:] |= d
    edge[0, :] = edge[-1, :] = True  # regions touching the image edge stay closed
    edge[:, 0] = edge[:, -1] = True
    return np.where(edge, s, 0).astype(s.dtype, copy=False)


class HeatmapLayer(_RasterLayer):
    """A float map (saliency, probability, attribution) shown through a colormap.

    ``vmin``/``vmax`` set the colour range and the legend (default: the data's range).
    Values below ``threshold`` (and NaN) are transparent; with ``fade`` (the default) the
    opacity then rises linearly from 0 at the threshold to ``opacity`` at ``vmax``
    (:func:`imaging_assist.colormaps.fade_alpha`), so weak attribution fades into the image
    rather than tinting it.  ``mode`` is ``"fill"`` or ``"contour"`` (iso-lines at
    :data:`~imaging_assist.colormaps.CONTOUR_LEVELS` of the colour range, in their colours).

    ``method`` names how the map was made (e.g. "Grad-CAM"; the legend then reads "relative
    attribution"); ``units`` the values' units for maps that have them (parametric maps).
    ``flags`` are the reasons not to trust the map (:func:`imaging_assist.explain.flags.
    heatmap_flags`): a flagged layer starts hidden and the reason is shown with it.
    """

    kind = "heatmap"

    def __init__(self, name: str, array, colormap: str = DEFAULT_HEAT_COLORMAP,
                 opacity: float = DEFAULT_HEAT_OPACITY, threshold: float | None = None,
                 vmin: float | None = None, vmax: float | None = None, visible: bool = True,
                 units: str = "", method: str = "", fade: bool = True, mode: str = "fill"):
        a = _as3d(array)
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        colormap_rgb(colormap)  # validates the name
        if mode not in HEAT_MODES:
            raise ValueError(f"heat-map mode is one of {', '.join(HEAT_MODES)}, not {mode!r}")
        super().__init__(name, visible, opacity)
        self._lut_cache = None
        self.array = a
        with warnings.catch_warnings():  # all-NaN maps warn; handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = float(np.nanmin(a)) if a.size else 0.0
            hi = float(np.nanmax(a)) if a.size else 1.0
        if not np.isfinite(lo) or not np.isfinite(hi):
            fin = a[np.isfinite(a)]
            lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
        self.data_range = (lo, hi)
        self.vmin = lo if vmin is None else float(vmin)
        self.vmax = (hi if hi > lo else lo + 1.0) if vmax is None else float(vmax)
        self.threshold = self.vmin if threshold is None else float(threshold)
        self.colormap = colormap
        self.units = units
        self.method = method
        self.fade = bool(fade)
        self.mode = mode
        self.flags: list[str] = []
        self._top_cache = None

    # -- trust -------------------------------------------------------------------
    def set_flags(self, reasons) -> None:
        """Mark the map as not to be trusted (one reason per string) and hide it; the reader
        can still show it deliberately (``visible = True``)."""
        reasons = [str(r) for r in reasons if r]
        if reasons:
            self.flags = reasons
            self.visible = False

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    # -- what the map can show ------------------------------------------------------
    def constant_note(self) -> str:
        """"constant map (0.8): nothing to show" when every finite value is the same and that
        value is not drawn (its default colour range starts at the value, where the fade is
        transparent; contours of a flat map are empty), so the panel and the legend say why
        nothing shows instead of a made-up range ("0.8 … 1.8"); "" otherwise."""
        lo, hi = self.data_range
        if lo != hi:
            return ""
        idx = int(self.indices(np.array([lo], np.float32))[0])
        drawn = idx < 256 and self.mode == "fill"
        if drawn and self.fade:
            thr = float(self._fraction(self.threshold)) if np.isfinite(self.threshold) else 1.0
            drawn = float(fade_alpha(np.array([idx / 255.0]), max(thr, 0.0), 1.0)[0]) > 0
        return "" if drawn else f"constant map ({lo:.3g}): nothing to show"

    def top_percentile(self) -> float | None:
        """What the top of the colour range is when it ends below the data's maximum (Saliency,
        IG and occlusion end it at the 99.5th percentile of the positive values,
        ``ui/ai/model_support.py`` ``heat_display``): the percentage of the values above
        ``vmin`` that lie at or under ``vmax`` (measured on the data, not assumed; to 0.1, and
        below 100 as some values lie above); None when ``vmax`` reaches the maximum."""
        if not self.vmax < self.data_range[1]:
            return None
        key = (self.vmin, self.vmax)
        if self._top_cache is None or self._top_cache[0] != key:
            a = self.array.ravel()
            s = a[::max(1, a.size // 4_000_000)]  # a sample is plenty (as heat_display's)
            s = s[np.isfinite(s) & (s > self.vmin)]
            r = 100.0 * np.count_nonzero(s <= self.vmax) / s.size if s.size else 100.0
            self._top_cache = (key, min(round(r, 1), 99.9))
        return self._top_cache[1]

    # -- colours -----------------------------------------------------------------
    def _fraction(self, values: np.ndarray) -> np.ndarray:
        span = self.vmax - self.vmin
        return (np.asarray(values, np.float32) - self.vmin) / (span if span > 0 else 1.0)

    def lut(self) -> np.ndarray:
        """257 premultiplied ARGB32 words: colour index 0..255, and 256 = transparent."""
        if self._lut_cache is not None and self._lut_cache[0] == self._version:
            return self._lut_cache[1]
        rgb = colormap_rgb(self.colormap).astype(np.uint32)
        op = float(np.clip(self.opacity, 0, 1))
        if self.fade and self.mode == "fill":
            thr = float(self._fraction(self.threshold)) if np.isfinite(self.threshold) else 1.0
            a = np.round(fade_alpha(np.linspace(0.0, 1.0, 256), max(thr, 0.0), op) * 255).astype(np.uint32)
        else:
            a = np.full(256, int(round(op * 255)), np.uint32)
        lut = argb32(rgb[:, 0], rgb[:, 1], rgb[:, 2], a).astype(np.uint32)
        lut = np.concatenate([lut, np.zeros(1, np.uint32)])  # index 256: transparent
        self._lut_cache = (self._version, lut)
        return lut

    def indices(self, s: np.ndarray) -> np.ndarray:
        """Colormap index 0..255 per value, 256 where the value is hidden."""
        span = self.vmax - self.vmin
        scale = 255.0 / span if span > 0 else 0.0
        idx = np.empty(s.shape, np.float32)
        np.subtract(s, self.vmin, out=idx)
        np.multiply(idx, scale, out=idx)
        np.fmax(idx, 0, out=idx)  # fmax/fmin also turn NaN into a number (hidden below)
        np.fmin(idx, 255, out=idx)
        idx = (idx + 0.5).astype(np.uint16)
        hide = ~(s >= self.threshold)  # also hides NaN
        idx[hide] = 256
        return idx

    def contour_levels(self) -> list[float]:
        """The values of the iso-lines drawn in contour mode."""
        return [self.vmin + f * (self.vmax - self.vmin) for f in CONTOUR_LEVELS]

    def render_argb32(self, plane: Plane, index: int) -> np.ndarray | None:
        if not self.visible or self.opacity <= 0 or not 0 <= index < plane.n_slices(self.array.shape):
            return None
        s = plane.extract(self.array, index)
        if self.mode == "contour":
            band = iso_lines(s, self.contour_levels())
            idx = np.full(band.shape, 256, np.uint16)
            for b, f in enumerate(CONTOUR_LEVELS, start=1):
                idx[band == b] = int(round(f * 255))
            return self.lut()[idx]
        return self.lut()[self.indices(s)]

    def legend(self, n: int = 256) -> tuple[np.ndarray, float, float]:
        """(n, 3) colours from vmin to vmax, and the two end values, for a colour bar."""
        return colormap_rgb(self.colormap, n), self.vmin, self.vmax

    def legend_title(self) -> str:
        """What the legend's values mean: "relative attribution, Grad-CAM" for an explanation,
        the units for a parametric map."""
        if self.units:
            return self.units + (f", {self.method}" if self.method else "")
        if self.method:
            return f"relative attribution, {self.method}"
        return "value"


class Marker(_Notifying):
    """One finding: a position in array coordinates (k, j, i), a label and an optional score."""

    def __init__(self, position: Sequence[float], label: str = "", score: float | None = None,
                 color: Sequence[int] | None = None, radius_mm: float | None = None):
        if len(position) != 3:
            raise ValueError("marker position is (k, j, i)")
        self.position = tuple(float(p) for p in position)
        self.label = label
        self.score = None if score is None else float(score)
        self.color = tuple(int(c) for c in (color or (255, 210, 0)))[:3]
        self.radius_mm = radius_mm

    def text(self) -> str:
        return self.label + (f" {self.score:.2f}" if self.score is not None else "")

    def __repr__(self):
        return f"Marker({self.position}, {self.label!r}, score={self.score})"


class MarkerLayer(Layer):
    """Finding markers.  Markers with a score below ``min_score`` are hidden."""

    kind = "markers"

    def __init__(self, name: str, markers: Iterable[Marker] = (), visible: bool = True,
                 min_score: float | None = None, opacity: float = 1.0):
        super().__init__(name, visible, opacity)
        self.markers: list[Marker] = []
        self.min_score = min_score
        for m in markers:
            self.add(m)

    def add(self, marker: Marker) -> Marker:
        marker._owner = self
        self.markers.append(marker)
        self._changed()
        return marker

    def remove(self, marker: Marker) -> None:
        self.markers.remove(marker)
        marker._owner = None
        self._changed()

    def shown(self) -> list[Marker]:
        if not self.visible:
            return []
        return [m for m in self.markers
                if self.min_score is None or m.score is None or m.score >= self.min_score]

    def near(self, plane: Plane, index: int, shape3: Sequence[int], tolerance: float = 0.5
             ) -> list[tuple[Marker, float, float]]:
        """Markers within ``tolerance`` slices of ``index`` with their display (u, v)."""
        out = []
        for m in self.shown():
            u, v, w = plane.from_voxel(m.position, shape3)
            if abs(w - index) <= tolerance:
                out.append((m, u, v))
        return out


class Shape(_Notifying):
    """An outline, a line, points or a note in array coordinates ``(k, j, i)`` (fractional),
    with the lines of its label: a region of a structured report or a presentation state's
    annotation drawn on the slices it lies in, a nodule's diameters."""

    KINDS = ("path", "points", "text")  # text: its label at its one point, no mark
    STYLES = ("solid", "dashed")

    def __init__(self, points_kji, closed: bool = False, kind: str = "path",
                 label: Sequence[str] = (), color: Sequence[int] | None = None, visible: bool = True,
                 style: str = "solid", name: str = "", native_only: bool = False):
        pts = np.asarray(points_kji, float).reshape(-1, 3)
        if kind not in self.KINDS:
            raise ValueError(f"shape kind is one of {self.KINDS}, not {kind!r}")
        if not len(pts) or not np.all(np.isfinite(pts)):
            raise ValueError("a shape needs at least one finite (k, j, i) point")
        if style not in self.STYLES:
            raise ValueError(f"shape style is one of {self.STYLES}, not {style!r}")
        self.style = style
        self.name = name  # how a list names it (default: the first line of its label)
        # drawn on an acquired image (an SR's SCOORD, a presentation state): shown on that
        # image only, not where a reformatted plane passes through its points
        self.native_only = bool(native_only)
        self.points = pts
        self.closed = bool(closed)
        self.kind = kind
        self.label = [str(t) for t in label]
        self.color = tuple(int(c) for c in (color or (110, 225, 140)))[:3]
        self.visible = bool(visible)

    @property
    def position(self) -> tuple[float, float, float]:
        """The centre of its points (where "go to" lands)."""
        k, j, i = (float(v) for v in self.points.mean(axis=0))
        return (k, j, i)

    def text(self) -> str:
        return self.name or (self.label[0] if self.label else "")

    def in_plane(self, plane: "Plane", index: int, shape3: Sequence[int], tolerance: float = 0.5):
        """Display (u, v) of its points, an (N, 2) array, when all of them lie within
        ``tolerance`` slices of ``index`` on ``plane``; else None.  A planar outline shows
        on its own slice only: where it crosses another plane it is one or two points, which
        would read as a different shape."""
        if self.native_only and plane.axis != 0:
            return None
        w = self.points[:, plane.axis]
        if np.any(np.abs(w - index) > tolerance):
            return None
        u, v = self.points[:, plane.h_axis], self.points[:, plane.v_axis]  # Plane.from_voxel, all at once
        if plane.flip_h:
            u = shape3[plane.h_axis] - 1 - u
        if plane.flip_v:
            v = shape3[plane.v_axis] - 1 - v
        return np.column_stack([u, v])

    def __repr__(self):
        return f"Shape({self.kind}, {len(self.points)} points, {self.text()!r})"


class ShapesLayer(Layer):
    """Outlines, lines, points and notes drawn as vector graphics over the image (an SR's
    regions, a presentation state's annotations, a nodule's diameters)."""

    kind = "shapes"

    def __init__(self, name: str, shapes: Iterable[Shape] = (), visible: bool = True, opacity: float = 1.0):
        super().__init__(name, visible, opacity)
        self.shapes: list[Shape] = []
        for s in shapes:
            self.add(s)

    def add(self, shape: Shape) -> Shape:
        shape._owner = self
        self.shapes.append(shape)
        self._changed()
        return shape

    def near(self, plane: Plane, index: int, shape3: Sequence[int], tolerance: float = 0.5
             ) -> list[tuple[Shape, np.ndarray]]:
        """Visible shapes lying in slice ``index`` of ``plane``, with their display (u, v)."""
        if not self.visible:
            return []
        out = []
        for s in self.shapes:
            if s.visible:
                uv = s.in_plane(plane, index, shape3, tolerance)
                if uv is not None:
                    out.append((s, uv))
        return out


# --------------------------------------------------------------------------- stack
class LayerStack:
    """Ordered layers (first = bottom).  Subscribers get ``(event, layer)`` on every change:
    event is 'added', 'removed', 'changed', 'moved' or 'cleared'."""

    def __init__(self, layers: Iterable[Layer] = ()):
        self._layers: list[Layer] = []
        self._subs: list[Callable[[str, Layer | None], None]] = []
        self._names = itertools.count(1)
        for layer in layers:
            self.add(layer)

    # -- events -----------------------------------------------------------------
    def subscribe(self, fn: Callable[[str, Layer | None], None]) -> None:
        self._subs.append(fn)

    def unsubscribe(self, fn) -> None:
        if fn in self._subs:
            self._subs.remove(fn)

    def _emit(self, event: str, layer: Layer | None) -> None:
        for fn in list(self._subs):
            fn(event, layer)

    # -- container ----------------------------------------------------------------
    def __iter__(self):
        return iter(list(self._layers))

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, i) -> Layer:
        return self._layers[i]

    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def add(self, layer: Layer, index: int | None = None) -> Layer:
        if layer in self._layers:
            return layer
        names = {l.name for l in self._layers}
        if layer.name in names:  # keep names unique: they are how people refer to layers
            base = layer.name
            n = 2
            while f"{base} ({n})" in names:
                n += 1
            object.__setattr__(layer, "name", f"{base} ({n})")
        layer._owner = self
        if index is None and isinstance(layer, HeatmapLayer):
            # a heat map goes under the label maps (image, heat map, outlines, then markers and
            # measurements drawn on top by the viewer): an outline must stay readable over it
            labels = [n for n, l in enumerate(self._layers) if isinstance(l, LabelLayer)]
            index = labels[0] if labels else None
        if index is None:
            self._layers.append(layer)
        else:
            self._layers.insert(index, layer)
        self._emit("added", layer)
        return layer

    def get(self, name: str) -> Layer:
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def _resolve(self, layer: Layer | str) -> Layer:
        return self.get(layer) if isinstance(layer, str) else layer

    def remove(self, layer: Layer | str) -> None:
        layer = self._resolve(layer)
        self._layers.remove(layer)
        layer._owner = None
        self._emit("removed", layer)

    def clear(self) -> None:
        for layer in self._layers:
            layer._owner = None
        self._layers.clear()
        self._emit("cleared", None)

    def toggle(self, layer: Layer | str, visible: bool | None = None) -> bool:
        layer = self._resolve(layer)
        layer.visible = (not layer.visible) if visible is None else bool(visible)
        return layer.visible

    def move(self, layer: Layer | str, index: int) -> None:
        layer = self._resolve(layer)
        self._layers.remove(layer)
        index = max(0, min(index, len(self._layers)))
        self._layers.insert(index, layer)
        self._emit("moved", layer)

    def index_of(self, layer: Layer | str) -> int:
        return self._layers.index(self._resolve(layer))

    # -- rendering ------------------------------------------------------------------
    def check_shape(self, shape3: Sequence[int]) -> list[str]:
        """Names of raster layers whose array does not match a volume of this shape."""
        shape3 = tuple(int(s) for s in shape3[:3])
        return [l.name for l in self._layers if l.is_raster and tuple(l.array.shape) != shape3]

    def render_argb32(self, plane: Plane, index: int) -> list[np.ndarray]:
        """Per visible raster layer, bottom first: premultiplied ARGB32 words."""
        out = []
        for layer in self._layers:
            if layer.is_raster and layer.visible:
                img = layer.render_argb32(plane, index)
                if img is not None:
                    out.append(img)
        return out

    def composite(self, plane: Plane, index: int, shape2d: tuple[int, int] | None = None) -> np.ndarray:
        """All visible raster layers of one slice, 'over'-composited: (rows, cols, 4) uint8,
        straight (not premultiplied) alpha.  Transparent where no layer shows."""
        words = self.render_argb32(plane, index)
        if not words:
            if shape2d is None:
                rasters = [l for l in self._layers if l.is_raster]
                shape2d = plane.shape2d(rasters[0].array.shape) if rasters else (0, 0)
            return np.zeros(tuple(shape2d) + (4,), np.uint8)
        acc = None
        for w in words:
            src = np.stack([(w >> s) & 0xFF for s in (16, 8, 0, 24)], axis=-1).astype(np.uint32)
            if acc is None:
                acc = src
            else:
                inv = 255 - src[..., 3:4]
                acc = src + (acc * inv + 127) // 255
        a = acc[..., 3]
        safe = np.maximum(a, 1)[..., None]
        rgb = np.where(a[..., None] > 0, np.minimum(255, (acc[..., :3] * 255 + safe // 2) // safe), 0)
        return np.concatenate([rgb, a[..., None]], axis=-1).astype(np.uint8)

    def markers(self) -> list[MarkerLayer]:
        return [l for l in self._layers if isinstance(l, MarkerLayer) and l.visible]

    def heatmaps(self) -> list[HeatmapLayer]:
        return [l for l in self._layers if isinstance(l, HeatmapLayer) and l.visible]

    def shape_layers(self) -> list[ShapesLayer]:
        return [l for l in self._layers if isinstance(l, ShapesLayer) and l.visible]


# --------------------------------------------------------------------------- files
def load_overlay(path: str, volume, name: str | None = None) -> Layer:
    """A label map or heat map from ``.npy`` (already ``[k, j, i]``) or NIfTI, in the grid
    of ``volume``.

    NIfTI arrays are matched to the volume through both affines (NIfTI RAS, DICOM LPS);
    only axis permutations/flips of the same grid are accepted - no resampling.  A volume
    without patient geometry (a plain image) has no space to compare an affine in: its NIfTI
    must hold the volume's (columns, rows, slices) grid, whatever its affine (said in the
    layer's ``warnings``).  Integer data become a :class:`LabelLayer`, anything else a
    :class:`HeatmapLayer`.
    """
    import os
    base = os.path.basename(path)
    name = name or base.split(".")[0]
    shape = tuple(volume.array.shape[:3])
    if path.lower().endswith(".npy"):
        arr = _read_npy(path, shape)
    else:
        from . import nifti
        img = nifti.load(path)
        # the grid is checked on the header's shape; the voxels are read only once it matches
        # the image (a header cannot make this allocate more than the image's own size)
        dshape = tuple(int(n) for n in img.shape)
        while len(dshape) > 3 and dshape[-1] == 1:
            dshape = dshape[:-1]
        if len(dshape) == 2:
            dshape = dshape + (1,)
        if len(dshape) != 3:
            raise ValueError(f"{base}: expected a 3-D image, got shape {dshape}")
        if not getattr(volume, "has_geometry", True):
            # a plain image (or a projection without patient position) has no patient space for
            # the NIfTI's affine to be compared in (nibabel writes the identity, which the
            # LPS->RAS flip below turned into a mirrored grid): its (columns, rows, slices)
            # index grid is matched as it is, whatever the affine
            vol_ijk = (shape[2], shape[1], shape[0])
            if dshape != vol_ijk:
                raise ValueError(f"{base}: shape {dshape} does not match the image's (columns, rows, slices) "
                                 f"{vol_ijk}")
            data = nifti.read_data(path, img).reshape(dshape)
            layer = _overlay_layer(name, np.ascontiguousarray(np.transpose(data, (2, 1, 0))), base)
            layer.warnings.append(f"{base}: its affine was not used (the image has no patient geometry): "
                                  "its voxels are taken on the image's own (column, row) pixel grid")
            return layer
        ras_from_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
        aff = np.asarray(img.affine, float)
        if not np.all(np.isfinite(aff)) or abs(float(np.linalg.det(aff[:3, :3]))) < 1e-12:
            # NaN would pass every comparison below: the grid could not be checked at all
            raise ValueError(f"{base}: its affine is unusable (NaN or degenerate): cannot check its grid")
        m = np.linalg.inv(aff) @ ras_from_lps @ volume.affine  # volume (i,j,k) -> nifti index
        r = m[:3, :3]
        perm, flips = [], []
        vol_ijk = (shape[2], shape[1], shape[0])
        for a in range(3):
            b = int(np.argmax(np.abs(r[:, a])))
            s = float(r[b, a])
            if abs(abs(s) - 1) > 0.02 or np.sum(np.abs(r[:, a]) > 0.02) != 1:
                raise ValueError(f"{base}: its voxel grid differs from the image grid "
                                 "(different spacing or orientation; resampling is not supported)")
            want = 0.0 if s > 0 else vol_ijk[a] - 1
            if abs(m[b, 3] - want) > 0.5 or dshape[b] != vol_ijk[a]:
                raise ValueError(f"{base}: shape {dshape} / origin do not match the image grid")
            perm.append(b)
            flips.append(s < 0)
        if sorted(perm) != [0, 1, 2]:
            raise ValueError(f"{base}: its voxel grid differs from the image grid (axes do not match)")
        # every corner of the grid, not only its first voxel: a 2% spacing or ~1 degree
        # difference passed the checks above and drew the far edge about 10 pixels off
        worst = 0.0
        for c in np.array(np.meshgrid(*[(0, n - 1) for n in vol_ijk], indexing="ij")).reshape(3, -1).T:
            want = np.empty(3)
            for a in range(3):
                want[perm[a]] = vol_ijk[a] - 1 - c[a] if flips[a] else c[a]
            worst = max(worst, float(np.abs((m @ np.append(c, 1.0))[:3] - want).max()))
        if worst > 0.5:
            raise ValueError(f"{base}: its voxel grid drifts from the image grid by {worst:.1f} voxels at the far "
                             "corner (slightly different spacing or orientation; resampling is not supported)")
        data = nifti.read_data(path, img).reshape(dshape)
        arr = np.transpose(data, perm)
        for a, f in enumerate(flips):
            if f:
                arr = np.flip(arr, axis=a)
        arr = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))  # (i, j, k) -> (k, j, i)
    if tuple(arr.shape) != shape:
        raise ValueError(f"{base}: shape {tuple(arr.shape)} does not match the image {shape}")
    return _overlay_layer(name, arr, base)


def _overlay_layer(name: str, arr: np.ndarray, base: str) -> Layer:
    """Integer data as a :class:`LabelLayer`, floats as a :class:`HeatmapLayer`."""
    if arr.dtype.kind in "iub":
        return LabelLayer(name, arr)
    if arr.dtype.kind != "f":
        raise ValueError(f"{base}: values of type {arr.dtype} are neither labels nor a heat map")
    return HeatmapLayer(name, arr)


def _read_npy(path: str, shape: tuple) -> np.ndarray:
    """A ``.npy`` overlay: its header (numpy's own parser) is checked against the image's grid
    and the file's size before any voxel is read; every failure is one ValueError line."""
    import os
    base = os.path.basename(path)
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            dshape, _fortran, dtype = read_header(f)
            start = f.tell()
    except OSError as e:
        raise ValueError(f"{base}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises many types
        raise ValueError(f"{base}: not a readable .npy file ({type(e).__name__})") from None
    want = ((1,) + tuple(dshape)) if len(dshape) == 2 and shape[0] == 1 else tuple(dshape)
    if want != shape:
        raise ValueError(f"{base}: shape {tuple(dshape)} does not match the image {shape}")
    if dtype.hasobject or dtype.kind not in "iubf":
        raise ValueError(f"{base}: values of type {dtype} are neither labels nor a heat map")
    need = start + int(np.prod(dshape, dtype=object)) * dtype.itemsize
    size = os.path.getsize(path)
    if size != need:
        raise ValueError(f"{base}: the file holds {size:,} bytes where its header describes {need:,}: "
                         f"damaged")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{base}: not a readable .npy file ({type(e).__name__})") from None
    return arr[None] if arr.ndim == 2 else arr
