"""Measurements of a nodule mask on a loaded Volume's ``[k, j, i]`` grid (no Qt, no torch).

* **Volume** (mm³): the voxel count times each voxel's volume.  The voxel volume is the in-plane
  pixel area (``|col_dir * sx x row_dir * sy|``) times the slice's own thickness along the
  normal: half the distance to each neighbouring slice (``Volume.slice_positions``), so a
  gantry-tilted stack (sheared slice axis) and uneven slice spacing are measured exactly; for
  an even, untilted stack this equals ``prod(spacing)``.
* **Long / short axis** (mm), the Fleischner Society (MacMahon et al., Radiology 2017;
  Bankier et al., Radiology 2017, "Recommendations for measuring pulmonary nodules at CT") and
  Lung-RADS convention: on the slice of largest nodule area, the longest in-plane diameter,
  then the longest diameter perpendicular to it.  The outline is the 0.5 iso-contour of the
  binary slice (``skimage.measure.find_contours``: half way between inside and outside pixel
  centres, so a sampled disc of radius r measures 2r, not 2r - 1 pixel).  Long axis = largest
  distance between outline vertices (exact for a polygon); short axis = longest chord of the
  outline perpendicular to it that stays inside the outline (even-odd crossings, so a concave
  nodule is not measured across a gap).  Measured on the volume's own slices: when those are
  not axial a warning says so.  The Fleischner paper recommends reporting the *average* of
  long and short axis for nodules < 10 mm, rounded to whole mm; we give both and round nothing.
* **Mean HU** over the mask's voxels.
* **Density impression** (solid / part-solid / ground-glass): the terms are the Fleischner
  Society glossary's (Hansell et al., Radiology 2008), which defines them visually.  We
  approximate them with the cut-off often used for quantitative CT of subsolid nodules: a
  voxel above -300 HU is "solid component", below it ground-glass (or air).  The solid share
  is taken inside the mask eroded by one pixel in-plane (the rim is partial volume with the
  surrounding lung and reads as ground-glass on every solid nodule) when that leaves >= 10
  voxels.  share >= 0.5: solid; <= 0.1: ground-glass; between: part-solid.  The two cut-offs
  were chosen on the LIDC crops' majority ``texture`` rating (5 solid ... 1 non-solid) and
  their agreement is printed by ``scripts/check_nodule_density.py``; it is an impression from
  density, not a reader's call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SOLID_HU = -300.0
SOLID_SHARE = 0.5
GGO_SHARE = 0.1


@dataclass
class Measurements:
    volume_mm3: float
    n_voxels: int
    long_axis_mm: float
    short_axis_mm: float
    long_axis_ends_lps: list  # two LPS points (mm) of the long axis
    short_axis_ends_lps: list
    largest_slice: int  # k of the slice of largest area
    largest_area_mm2: float
    mean_hu: float
    solid_share: float
    density: str  # "solid", "part-solid", "ground-glass" or "" (no HU)
    center_lps: list
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        r = lambda x: round(float(x), 3)  # noqa: E731
        return {"volume_mm3": r(self.volume_mm3), "n_voxels": int(self.n_voxels),
                "long_axis_mm": r(self.long_axis_mm), "short_axis_mm": r(self.short_axis_mm),
                "long_axis_ends_lps": [[r(v) for v in p] for p in self.long_axis_ends_lps],
                "short_axis_ends_lps": [[r(v) for v in p] for p in self.short_axis_ends_lps],
                "largest_slice": int(self.largest_slice), "largest_area_mm2": r(self.largest_area_mm2),
                "mean_hu": r(self.mean_hu) if np.isfinite(self.mean_hu) else None,
                "solid_share": r(self.solid_share) if np.isfinite(self.solid_share) else None,
                "density": self.density, "center_lps": [r(v) for v in self.center_lps],
                "warnings": list(self.warnings)}


def slice_thickness(volume) -> np.ndarray:
    """Each slice's thickness along the normal (mm): half the gap to each neighbour."""
    n = volume.n_slices
    pos = volume.slice_positions
    if pos is None or len(pos) != n or n < 2:
        d = np.asarray(volume.direction, float)[:, 2] * float(volume.spacing[2])
        return np.full(n, abs(float(d @ volume.normal)) or float(abs(volume.spacing[2])))
    pos = np.asarray(pos, float)
    gaps = np.abs(np.diff(pos))
    t = np.empty(n)
    t[0], t[-1] = gaps[0], gaps[-1]
    t[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    return t


def pixel_area(volume) -> float:
    d = np.asarray(volume.direction, float)
    sx, sy = float(volume.spacing[0]), float(volume.spacing[1])
    return float(np.linalg.norm(np.cross(d[:, 0] * sx, d[:, 1] * sy)))


def _outline(sl: np.ndarray) -> list[np.ndarray]:
    """0.5 iso-contours of a binary slice in (row, col) pixel units (closed polygons)."""
    from skimage.measure import find_contours

    pad = np.pad(sl.astype(np.float32), 1)
    return [c - 1.0 for c in find_contours(pad, 0.5)]


MAX_CHORDS = 2000


def chord_positions(lo: float, hi: float) -> np.ndarray:
    """Where the short-axis chords cross the long axis (mm from its start): every 0.05 mm (at
    least 50 chords), and at most :data:`MAX_CHORDS` (a 100-mm long axis at 0.05 mm): an absurd
    pixel size (a 1e6-mm pixel once meant 400 million chords, minutes) cannot stall a click."""
    step = max(min(0.05, (hi - lo) / 50), (hi - lo) / MAX_CHORDS) or 0.05
    return np.arange(lo + step / 2, hi, step)


def axes_on_slice(sl: np.ndarray, sx: float, sy: float):
    """(long mm, short mm, long ends, short ends) on one binary slice; ends in (col, row) pixels.

    ``sx``/``sy``: column / row pixel size (mm)."""
    polys = _outline(sl)
    if not polys:
        return 0.0, 0.0, None, None
    pts = np.concatenate(polys)  # (row, col)
    mm = np.stack([pts[:, 1] * sx, pts[:, 0] * sy], axis=1)  # x (col), y (row) in mm
    # long axis: farthest pair of outline vertices (hull first keeps it cheap)
    try:
        from scipy.spatial import ConvexHull

        hv = mm[ConvexHull(mm).vertices] if len(mm) >= 4 else mm
    except Exception:  # noqa: BLE001 - collinear outline: every point is a hull point
        hv = mm
    dd = np.linalg.norm(hv[:, None, :] - hv[None, :, :], axis=2)
    a, b = np.unravel_index(int(np.argmax(dd)), dd.shape)
    p, q = hv[a], hv[b]
    long_mm = float(dd[a, b])
    if long_mm == 0:
        return 0.0, 0.0, None, None
    u = (q - p) / long_mm
    w = np.array([-u[1], u[0]])
    # short axis: chords perpendicular to u, every 0.05 mm along it; edges of all polygons
    edges = []
    for poly in polys:
        e = np.stack([poly[:, 1] * sx, poly[:, 0] * sy], axis=1)
        edges.append(np.stack([e[:-1], e[1:]], axis=1))
    E = np.concatenate(edges)  # (M, 2, 2)
    tu = E @ u  # (M, 2) coordinate along the long axis
    tw = E @ w
    lo, hi = float((mm @ u).min()), float((mm @ u).max())
    best, best_t, best_w = 0.0, None, None
    for t in chord_positions(lo, hi):
        a0, a1 = tu[:, 0] - t, tu[:, 1] - t
        cross = (a0 * a1) < 0
        if cross.sum() < 2:
            continue
        f = a0[cross] / (a0[cross] - a1[cross])
        ws = np.sort(tw[cross, 0] + f * (tw[cross, 1] - tw[cross, 0]))
        if len(ws) % 2:
            ws = ws[:-1]
        segs = ws[1::2] - ws[0::2]  # inside segments (even-odd rule)
        i = int(np.argmax(segs))
        if segs[i] > best:
            best, best_t, best_w = float(segs[i]), t, (ws[2 * i], ws[2 * i + 1])
    to_px = lambda v: (float(v[0] / sx), float(v[1] / sy))  # noqa: E731 - mm -> (col, row)
    long_ends = [to_px(p), to_px(q)]
    short_ends = None
    if best_t is not None:
        short_ends = [to_px(best_t * u + best_w[0] * w), to_px(best_t * u + best_w[1] * w)]
    return long_mm, best, long_ends, short_ends


AXIS_ENDS = {"long": "long_axis_ends_lps", "short": "short_axis_ends_lps"}


def axis_ends_ijk(measurements: dict, volume, k: int) -> dict:
    """{"long" | "short": (2, 3) (i, j, k) voxel indices} of a nodule's axis end points
    (LPS, as ``Measurements.to_dict`` and results.json hold them) that lie on slice ``k`` of
    ``volume``; an axis whose ends are not there is left out (no line rather than a wrong one)."""
    out = {}
    for name, key in AXIS_ENDS.items():
        ends = (measurements or {}).get(key) or []
        if len(ends) != 2:
            continue
        ijk = volume.lps_to_index(ends)
        if np.all(np.isfinite(ijk)) and np.all(np.abs(ijk[:, 2] - k) <= 1e-3):
            out[name] = ijk
    return out


def core_mask(mask: np.ndarray) -> np.ndarray:
    """The mask eroded by one pixel in-plane ([k, j, i] grid), or the mask when < 10 voxels remain."""
    from scipy.ndimage import binary_erosion

    core = binary_erosion(mask, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    return core if core.sum() >= 10 else np.asarray(mask, bool)


def density_impression(hu_values: np.ndarray) -> tuple[float, str]:
    """(solid share, "solid" | "part-solid" | "ground-glass") of a nodule core's HU values."""
    share = float(np.mean(np.asarray(hu_values) > SOLID_HU))
    return share, ("solid" if share >= SOLID_SHARE else
                   "ground-glass" if share <= GGO_SHARE else "part-solid")


def measure(mask: np.ndarray, volume) -> Measurements:
    """Measure a bool mask on ``volume``'s grid (see the module doc for each rule)."""
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(volume.shape[:3]):
        raise ValueError(f"mask shape {mask.shape} is not the volume's {tuple(volume.shape[:3])}")
    warnings: list[str] = []
    n_vox = int(mask.sum())
    if n_vox == 0:
        raise ValueError("empty mask")
    per_slice = mask.reshape(mask.shape[0], -1).sum(axis=1)
    thick = slice_thickness(volume)
    area_px = pixel_area(volume)
    vol_mm3 = float(np.sum(per_slice * thick) * area_px)
    k = int(np.argmax(per_slice))
    # everything below works on the mask's bounding box (a nodule in a whole scan is tiny)
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    ks = np.flatnonzero(per_slice)
    box = (slice(ks[0], ks[-1] + 1), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub = mask[box]
    off = np.array([box[0].start, box[1].start, box[2].start], float)
    sx, sy = float(volume.spacing[0]), float(volume.spacing[1])
    long_mm, short_mm, le, se = axes_on_slice(sub[k - box[0].start], sx, sy)
    ends = lambda e: [] if e is None else [volume.index_to_lps(c + off[2], r + off[1], k).tolist()  # noqa: E731
                                           for c, r in e]
    n = volume.normal
    if abs(float(n[2])) < 0.9:  # more than ~25 degrees from axial
        warnings.append("diameters measured on the series' own (not axial) slices: Fleischner and "
                        "Lung-RADS measure on axial images")
    if per_slice[0] or per_slice[-1]:
        warnings.append("the nodule reaches the first or last slice of the series: it may extend "
                        "beyond it, so its volume may be underestimated")
    if rows[0] == 0 or cols[0] == 0 or rows[-1] == mask.shape[1] - 1 or cols[-1] == mask.shape[2] - 1:
        warnings.append("the nodule reaches the edge of the image: it may extend beyond it, so its "
                        "volume and diameters may be underestimated")
    c = np.argwhere(sub).mean(axis=0) + off
    center = volume.index_to_lps(c[2], c[1], c[0]).tolist()
    mean_hu, share, density = float("nan"), float("nan"), ""
    if str(getattr(volume, "units", "")).upper() == "HU" and volume.array.ndim == 3:
        arr = np.asarray(volume.array[box])
        vals = arr[sub].astype(np.float64)
        vals = vals[np.isfinite(vals)]  # NaN voxels of a NIfTI volume (said when it was read)
        if vals.size:
            mean_hu = float(vals.mean())
            core = arr[core_mask(sub)].astype(np.float64)
            share, density = density_impression(core[np.isfinite(core)] if np.isfinite(core).any() else vals)
    else:
        warnings.append("no Hounsfield units: mean HU and density impression not given")
    return Measurements(vol_mm3, n_vox, long_mm, short_mm, ends(le), ends(se), k,
                        float(per_slice[k] * area_px), mean_hu, share, density, center, warnings)
