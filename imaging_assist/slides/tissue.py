"""Tissue detection on a slide thumbnail, so analysis can skip the glass.

Method (the usual one for H&E brightfield): HSV saturation of a thumbnail, lightly smoothed;
Otsu's threshold (scikit-image) clamped to a sensible band so an all-glass or all-tissue
view is not split in two; then scipy.ndimage / scikit-image morphology: a small closing,
holes filled (fat and lumina inside tissue are white but belong to the specimen), specks
smaller than ``min_object_um2`` removed.

The result is a boolean mask plus its level-0 downsample, ready to become an overlay layer
and to give each tile its tissue fraction (exact area overlap, see
:meth:`TissueMask.fraction_in_rects`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .reader import MISSING_MPP_MESSAGE, MissingMPPWarning, Slide


@dataclass
class TissueMask:
    """Boolean tissue mask on a coarse grid aligned with level 0.

    Mask pixel ``(row, col)`` covers level-0 pixels ``[col*dx, (col+1)*dx) x [row*dy, (row+1)*dy)``
    where ``(dx, dy) = downsample``.
    """

    mask: np.ndarray                     # bool (rows, cols)
    downsample: tuple[float, float]      # level-0 px per mask px (x, y)
    slide_dimensions: tuple[int, int]    # level-0 (width, height)
    mpp: tuple[float, float] | None      # level-0 µm/px of the slide (None if unknown)
    threshold: float                     # saturation threshold used (0..1)
    params: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # -- summary --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_px(self) -> float:
        """Tissue area in level-0 pixels²."""
        return float(self.mask.sum()) * self.downsample[0] * self.downsample[1]

    @property
    def area_mm2(self) -> float | None:
        """Tissue area in mm² (None without MPP)."""
        if self.mpp is None:
            return None
        return self.area_px * self.mpp[0] * self.mpp[1] * 1e-6

    # -- tile fractions -------------------------------------------------------------
    def _sat(self) -> np.ndarray:
        sat = getattr(self, "_sat_cache", None)
        if sat is None:
            m = self.mask.astype(np.float64)
            sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
            sat[1:, 1:] = m.cumsum(0).cumsum(1)
            self._sat_cache = sat
        return sat

    def _sat_at(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area (mask px²) of [0,u) x [0,v) for continuous mask coordinates.

        Bilinear interpolation of the summed-area table is exact here: inside one mask
        pixel the covered area grows linearly in u and v.
        """
        sat = self._sat()
        rows, cols = self.mask.shape
        u = np.clip(u, 0, cols)
        v = np.clip(v, 0, rows)
        i0 = np.minimum(np.floor(u).astype(np.int64), cols - 1)
        j0 = np.minimum(np.floor(v).astype(np.int64), rows - 1)
        fu, fv = u - i0, v - j0
        s00, s01 = sat[j0, i0], sat[j0, i0 + 1]
        s10, s11 = sat[j0 + 1, i0], sat[j0 + 1, i0 + 1]
        return (s00 * (1 - fu) * (1 - fv) + s01 * fu * (1 - fv) + s10 * (1 - fu) * fv + s11 * fu * fv)

    def fraction_in_rects(self, rects) -> np.ndarray:
        """Tissue fraction of each level-0 rectangle ``(x, y, w, h)`` (N, 4) -> (N,).

        Parts of a rectangle outside the slide count as glass.
        """
        r = np.asarray(rects, np.float64).reshape(-1, 4)
        if not self.mask.size:
            return np.zeros(len(r))
        dx, dy = self.downsample
        u0, v0 = r[:, 0] / dx, r[:, 1] / dy
        u1, v1 = (r[:, 0] + r[:, 2]) / dx, (r[:, 1] + r[:, 3]) / dy
        area = self._sat_at(u1, v1) - self._sat_at(u0, v1) - self._sat_at(u1, v0) + self._sat_at(u0, v0)
        full = np.maximum((u1 - u0) * (v1 - v0), 1e-12)
        return np.clip(area / full, 0.0, 1.0)

    def fraction_in(self, x: float, y: float, w: float, h: float) -> float:
        return float(self.fraction_in_rects([(x, y, w, h)])[0])

    # -- layers ---------------------------------------------------------------------
    def to_label_array(self) -> np.ndarray:
        """uint8 label map (1 = tissue) on the mask grid."""
        return self.mask.astype(np.uint8)

    def to_layer(self, name: str = "Tissue", opacity: float = 0.3, mode: str = "outline"):
        """An :class:`imaging_assist.layers.LabelLayer` on the mask grid.

        The layer's pixels are ``downsample`` level-0 pixels each; the viewer scales it.
        """
        from ..layers import LabelLayer
        layer = LabelLayer(name, self.to_label_array(), names={1: "tissue"}, opacity=opacity, mode=mode)
        object.__setattr__(layer, "downsample", (float(self.downsample[0]), float(self.downsample[1])))
        object.__setattr__(layer, "origin", (0.0, 0.0))
        return layer

    def to_dict(self) -> dict:
        return {"shape": list(self.mask.shape), "downsample": list(self.downsample),
                "fraction": round(self.fraction, 6), "area_px": self.area_px,
                "area_mm2": self.area_mm2, "threshold": round(self.threshold, 4),
                "params": self.params, "warnings": list(self.warnings)}


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in 0..1 of an (h, w, 3) uint8 image.

    Written out (max-min)/max instead of skimage.color.rgb2hsv: that computes hue and value
    too, in float64, about 5x slower on a 2k thumbnail, for the one channel needed.
    """
    a = np.asarray(rgb)
    mx = a.max(axis=2).astype(np.float32)
    mn = a.min(axis=2).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(mx > 0, (mx - mn) / mx, 0.0)
    return s.astype(np.float32)


def detect_tissue(source, *, mask_um: float = 8.0, max_size: int = 2048, min_size: int = 512,
                  downsample: float | tuple[float, float] | None = None,
                  min_threshold: float = 0.04, max_threshold: float = 0.20, smooth_sigma: float = 1.0,
                  closing_radius: int = 2, fill_holes: bool = True, min_object_um2: float = 20_000.0,
                  min_object_fraction: float = 2e-4, dark_cutoff: int = 25) -> TissueMask:
    """Tissue mask of a :class:`Slide` (from its thumbnail) or of an RGB array.

    ``source``: a Slide, or an (h, w, 3) uint8 RGB array (then ``downsample`` gives the
    level-0 pixels per array pixel; default 1).
    ``mask_um``: wanted mask pixel size in µm (with slide MPP); the thumbnail's longest side
    is then kept within ``min_size``..``max_size`` px (``max_size`` without MPP).
    ``min_threshold``/``max_threshold``: clamp for Otsu's saturation threshold.
    ``min_object_um2``: specks smaller than this are removed (needs MPP; without it
    ``min_object_fraction`` of the thumbnail area is used and a warning is added).
    ``dark_cutoff``: pixels darker than this in every channel (black pen, out-of-slide
    borders) are never tissue.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_objects

    warn: list[str] = []
    if isinstance(source, Slide):
        w0, h0 = source.dimensions
        side = max_size
        if source.mpp is not None and mask_um > 0:
            side = int(np.clip(max(w0 * source.mpp[0], h0 * source.mpp[1]) / mask_um, min_size, max_size))
        rgb = source.get_thumbnail(min(side, max(w0, h0)))
        ds = (w0 / rgb.shape[1], h0 / rgb.shape[0])
        mpp = source.mpp
        dims = (w0, h0)
    else:
        rgb = np.asarray(source)
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise ValueError("detect_tissue needs an (h, w, 3) RGB array or a Slide")
        rgb = rgb[:, :, :3]
        if downsample is None:
            ds = (1.0, 1.0)
        elif isinstance(downsample, (int, float)):
            ds = (float(downsample), float(downsample))
        else:
            ds = (float(downsample[0]), float(downsample[1]))
        mpp = None
        dims = (round(rgb.shape[1] * ds[0]), round(rgb.shape[0] * ds[1]))

    sat = saturation(rgb)
    if smooth_sigma > 0:
        sat = ndi.gaussian_filter(sat, smooth_sigma)
    dark = (rgb < dark_cutoff).all(axis=2)
    vals = sat[~dark]
    if vals.size and float(vals.max() - vals.min()) > 1e-6:
        otsu = float(threshold_otsu(vals))
    else:
        otsu = min_threshold
    thr = float(np.clip(otsu, min_threshold, max_threshold))
    mask = (sat > thr) & ~dark
    if closing_radius > 0:
        # Pad so the closing does not erode at the border (binary_closing treats outside as 0).
        r = closing_radius
        padded = np.pad(mask, r, mode="edge")
        mask = ndi.binary_closing(padded, structure=disk(r))[r:-r, r:-r]
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    if mpp is not None:
        px_um2 = mpp[0] * ds[0] * mpp[1] * ds[1]
        min_px = max(1, int(round(min_object_um2 / px_um2)))
    else:
        min_px = max(1, int(round(min_object_fraction * mask.size)))
        if isinstance(source, Slide):
            warn.append(MISSING_MPP_MESSAGE)
    if min_px > 1:
        mask = remove_small_objects(mask, max_size=min_px - 1) if _has_max_size() else \
            remove_small_objects(mask, min_size=min_px)
    tm = TissueMask(mask=mask.astype(bool), downsample=ds, slide_dimensions=dims, mpp=mpp,
                    threshold=thr, params={"otsu": round(otsu, 4), "max_size": max_size,
                                           "min_object_px": min_px, "closing_radius": closing_radius,
                                           "fill_holes": fill_holes},
                    warnings=warn)
    if warn and isinstance(source, Slide):
        warnings.warn(f"{source.path}: {MISSING_MPP_MESSAGE}", MissingMPPWarning, stacklevel=2)
    return tm


def _has_max_size() -> bool:
    """scikit-image >= 0.26 renamed remove_small_objects(min_size) to max_size (kept smaller = removed)."""
    import inspect

    from skimage.morphology import remove_small_objects
    return "max_size" in inspect.signature(remove_small_objects).parameters
