"""Thick-slab projections of a plane: MIP, MinIP and average (no Qt).

A reader looking for lung nodules scrolls a 5-10 mm maximum-intensity slab (a round nodule
stays a dot, a vessel becomes a branching line), looks for emphysema and airways on a
minimum-intensity slab, and smooths noise with an average slab: every reading workstation
(RadiAnt, Weasis, OHIF, 3D Slicer) offers the three on any plane.  Here the slab of a view is
the set of slices of its plane whose centres lie within +-thickness/2 of the shown slice,
measured along the plane's normal: the acquired slices' own positions for the native plane
(uneven gaps and gantry tilt included), the voxel spacing for the reformatted planes.

Written here rather than taken from a library: the projection is one numpy reduction, but which
slices belong to the slab, what a click on a projection points at and which slices are not
loaded yet are this viewer's geometry (``Plane``, ``Volume.loaded``), which no library knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import Plane
from .viewing import native_positions
from .volume import Volume

#: mode -> name shown to the reader
MODES = {"mip": "MIP", "minip": "MinIP", "avg": "Average"}
MAX_THICKNESS_MM = 200.0


@dataclass(frozen=True)
class Slab:
    """A projection over ``thickness_mm`` of a plane: ``mode`` is one of :data:`MODES`."""

    mode: str
    thickness_mm: float

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"slab mode is one of {', '.join(MODES)}, not {self.mode!r}")
        t = float(self.thickness_mm)
        if not (np.isfinite(t) and 0.0 < t <= MAX_THICKNESS_MM):
            raise ValueError(f"slab thickness {self.thickness_mm!r} mm is not in (0, {MAX_THICKNESS_MM:g}] mm")

    @property
    def name(self) -> str:
        return MODES[self.mode]

    @staticmethod
    def parse(text: str) -> "Slab":
        """``MODE:MM`` as the command line writes it, e.g. ``mip:10`` (modes: mip, minip, avg)."""
        mode, sep, mm = str(text).strip().lower().partition(":")
        if not sep:
            raise ValueError(f"slab {text!r}: write MODE:MM, e.g. mip:10 (modes: {', '.join(MODES)})")
        try:
            t = float(mm)
        except ValueError:
            raise ValueError(f"slab {text!r}: the thickness {mm!r} is not a number of mm") from None
        return Slab(mode, t)


@dataclass(frozen=True)
class SlabImage:
    """A projected slice: ``array`` (rows, cols) in the volume's values and dtype, the slab's
    slice ``indices`` along the plane's axis (centre first when it is loaded), their signed
    distances ``offsets_mm`` from the centre slice, and ``missing``: slab slices not loaded yet."""

    array: np.ndarray
    indices: np.ndarray
    offsets_mm: np.ndarray
    missing: int
    slab: Slab

    def describe(self) -> str:
        """One line for the view's corner, e.g. ``MIP 10 mm: 5 slices -5.0 to +5.0 mm``."""
        lo, hi = float(self.offsets_mm.min()), float(self.offsets_mm.max())
        n = len(self.indices)
        s = (f"{self.slab.name} {self.slab.thickness_mm:g} mm: {n} slice{'s' if n != 1 else ''} "
             f"{lo:+.1f} to {hi:+.1f} mm")
        if self.missing:
            s += f" ({self.missing} not loaded yet)"
        return s


def refusal(vol: Volume | None, plane: Plane) -> str | None:
    """Why no slab can be shown on this plane of this volume, or None."""
    if vol is None:
        return "no image"
    if vol.is_color:
        return "a colour image has no intensity to project"
    if vol.is_cine:
        return "its frames are time, not slices in space"
    if not vol.has_geometry:
        return "its slices have no positions in mm"
    if vol.array.shape[plane.axis] < 2:
        return "this plane has a single slice"
    return None


def _positions(vol: Volume, plane: Plane) -> np.ndarray:
    if plane.axis == 0:
        return native_positions(vol)
    return np.arange(vol.array.shape[plane.axis], dtype=float) * plane.slice_spacing(vol.spacing)


def slab_indices(vol: Volume, plane: Plane, index: int, slab: Slab) -> tuple[np.ndarray, np.ndarray]:
    """The slices of the slab around ``index`` and their signed distances (mm) from it:
    the slices whose centres lie within +-thickness/2 (a hundredth of a slice gap of slack, so
    10 mm over 2.5 mm slices takes 5 slices, -5 to +5 mm), nearest first."""
    pos = _positions(vol, plane)
    d = pos - pos[int(index)]
    if plane.axis == 0 and len(pos) > 1:
        # the slice order runs against the normal in some series: offsets keep the
        # display's direction (next slice = positive) so the corner text reads naturally
        step = np.nanmedian(np.diff(pos)) if np.isfinite(pos).sum() > 1 else 1.0
        d = d if not step < 0 else -d
    gaps = np.abs(np.diff(pos))
    gaps = gaps[np.isfinite(gaps)]
    slack = 0.01 * float(np.median(gaps)) if len(gaps) else 0.0
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(d) & (np.abs(d) <= slab.thickness_mm / 2.0 + slack)
    inside[int(index)], d[int(index)] = True, 0.0  # the shown slice, even where positions are broken
    take = np.flatnonzero(inside)
    order = np.lexsort((take != int(index), np.abs(d[take])))  # nearest first, the shown slice first of all
    take = take[order]
    return take, d[take]


def _reduce(stack: np.ndarray, mode: str, dtype) -> np.ndarray:
    """Reduce axis 0; NaN (a float volume's missing values) is ignored unless all are NaN."""
    if mode == "mip":
        return np.fmax.reduce(stack, axis=0)
    if mode == "minip":
        return np.fmin.reduce(stack, axis=0)
    if np.issubdtype(dtype, np.integer):  # no NaN to leave out; the lookup tables index integers
        info = np.iinfo(dtype)
        mean = stack.sum(axis=0, dtype=np.int64) / len(stack)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    a = stack.astype(np.float64)
    ok = np.isfinite(a)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(ok, a, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
    return mean.astype(dtype)


def project(vol: Volume, plane: Plane, index: int, slab: Slab) -> SlabImage:
    """The plane's slice ``index`` projected over the slab, oriented like ``plane.extract``.

    Raises ValueError (one line) when :func:`refusal` says no.  Slices not loaded yet are left
    out (a slice of zeros would be the minimum of a lung MinIP); ``missing`` counts them."""
    why = refusal(vol, plane)
    if why:
        raise ValueError(f"no {slab.name} slab: {why}")
    idx, off = slab_indices(vol, plane, index, slab)
    missing = 0
    if plane.axis == 0 and vol.loaded is not None:
        keep = np.asarray(vol.loaded, bool)[idx]
        missing = int((~keep).sum())
        if keep.any():
            idx, off = idx[keep], off[keep]
        else:  # nothing of the slab loaded: the centre (blank until it arrives)
            idx, off = idx[:1], off[:1]
    stack = np.stack([plane.extract(vol.array, int(k)) for k in idx])
    return SlabImage(_reduce(stack, slab.mode, vol.array.dtype), idx, off, missing, slab)


def depth_index(vol: Volume, plane: Plane, index: int, slab: Slab, u: float, v: float) -> int:
    """The slice along the plane's axis that a click at display pixel (u, v) of the projection
    points at: where the maximum (MIP) or minimum (MinIP) of that pixel's ray lies, the nearest
    to the centre among equal values; the centre slice for an average (it has no depth)."""
    if slab.mode == "avg" or refusal(vol, plane):
        return int(index)
    shape3 = vol.array.shape[:3]
    kji = [int(round(x)) for x in plane.to_voxel(round(u), round(v), index, shape3)]
    if not all(0 <= x < n for x, n in zip(kji, shape3)):
        return int(index)
    idx, _ = slab_indices(vol, plane, index, slab)
    if plane.axis == 0 and vol.loaded is not None:
        idx = idx[np.asarray(vol.loaded, bool)[idx]]
        if not len(idx):
            return int(index)
    ray = []
    for k in idx:
        kji[plane.axis] = int(k)
        ray.append(vol.array[tuple(kji)])
    ray = np.asarray(ray, dtype=np.float64)
    ray = np.where(np.isfinite(ray), ray, -np.inf if slab.mode == "mip" else np.inf)
    best = int(np.argmax(ray) if slab.mode == "mip" else np.argmin(ray))  # first = nearest the centre
    return int(idx[best])
