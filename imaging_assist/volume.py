"""The in-memory image the whole app works on: pixels plus patient-space geometry.

Conventions (the same as DICOM and ITK/SimpleITK, so numbers can be compared directly):

* ``array`` is indexed ``[slice, row, column]`` (k, j, i) and holds values in modality
  units (rescale slope/intercept already applied: HU for CT).  Colour images have a
  trailing channel axis ``[slice, row, column, 3]`` (RGB, uint8).
* ``spacing`` is ``(column, row, slice)`` in mm, i.e. ``(x, y, z)`` like ITK.
* ``origin`` is the patient-space (LPS, mm) position of the centre of voxel (0, 0, 0).
* ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the column
  (i), row (j) and slice (k) axes in LPS.  For a gantry-tilted stack the slice axis is
  *not* orthogonal to the image plane; ``direction[:, 2]`` is then the true (sheared)
  slice step direction, so ``affine`` stays exact.
* ``slice_positions`` keeps the position of every slice along the normal so that
  uneven spacing is never hidden behind a single ``spacing[2]``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass
class WindowPreset:
    name: str
    center: float
    width: float
    source: str = "preset"  # "dicom" (from the file), "preset" (built-in), "auto" (from data),
    #                         "voilut", "presentation" (a softcopy presentation state's window)
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID (DICOM PS3.3 C.11.2.1.2)

    def to_dict(self) -> dict:
        return {"name": self.name, "center": self.center, "width": self.width,
                "source": self.source, "function": self.function}


# Where ``Volume.spacing[:2]`` comes from (PS3.3 10.7.1.3 for projection radiography):
SPACING_SOURCES = (
    "PixelSpacing",             # Pixel Spacing (0028,0030) of a cross-sectional image, or of a
                                # projection image that gives no Imager Pixel Spacing
    "ImagerPixelSpacing/ERMF",  # Imager Pixel Spacing / Estimated Radiographic Magnification Factor
    "ImagerPixelSpacing",       # at the detector, uncorrected: lengths ~10-15 % long on chest films
    "calibrated",               # PixelSpacingCalibrationType / calibrated Pixel Spacing, US regions
    "none",                     # unknown: lengths and areas are in pixels
)


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = ""
    units: str = ""  # "HU" for CT, "" when the values carry no physical unit
    photometric: str = "MONOCHROME2"  # after decoding: MONOCHROME1/2 or RGB
    has_geometry: bool = True  # False for plain images and projections without IPP/IOP
    is_cine: bool = False  # frames are time, not space (US/XA cine)
    frame_time_ms: float | None = None
    slice_positions: np.ndarray | None = None  # along the normal, mm, one per slice
    window_presets: list[WindowPreset] = field(default_factory=list)
    voi_lut: np.ndarray | None = None  # DICOM VOI LUT (first one), mapping values to display
    voi_lut_first: int = 0
    voi_lut_bits: int = 16  # bits per LUT entry (LUTDescriptor[2]): output is scaled by 2^bits - 1
    # BitsStored of the pixel data (0: unknown); integer colour data wider than 8 bits is shown
    # scaled by 2^bits_stored - 1
    bits_stored: int = 0
    presentation_lut_shape: str = ""  # "INVERSE" shows the grey values inverted (PS3.3 C.11.6)
    warnings: list[str] = field(default_factory=list)
    series_uid: str = ""
    description: str = ""
    # Per-slice header records (imaging_assist.dicom.InstanceRecord); the tag browser
    # reads the full header with imaging_assist.dicom.read_dataset(record).
    headers: list = field(default_factory=list, repr=False)
    source_paths: list[str] = field(default_factory=list, repr=False)
    frames: list[int] = field(default_factory=list, repr=False)  # frame of each slice in its file
    # Progressive loading: which slices hold real data yet.
    loaded: np.ndarray | None = None
    # One of SPACING_SOURCES; "" picks "PixelSpacing" for a volume with geometry, else "none".
    spacing_source: str = ""
    # An ultrasound image whose regions (SequenceOfUltrasoundRegions) are not all calibrated alike,
    # e.g. a B-mode image above a spectral Doppler strip (seconds x cm/s): spacing_source is "none"
    # and these are its regions calibrated in cm, each (x0, y0, x1, y1, dx_mm, dy_mm) with inclusive
    # pixel bounds (column x, row y).  A region's pixel size applies inside it only (PS3.3 C.8.5.5.1;
    # imaging_assist.measure.region_spacing).  Empty: ``spacing`` is the whole image's.
    calibrated_regions: list[tuple[int, int, int, int, float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        if not self.spacing_source:
            self.spacing_source = "PixelSpacing" if self.has_geometry else "none"
        if self.spacing_source not in SPACING_SOURCES:
            raise ValueError(f"spacing_source is one of {SPACING_SOURCES}, not {self.spacing_source!r}")

    def calibrate(self, row_mm: float, col_mm: float | None = None, how: str = "by the user") -> None:
        """Set the in-plane pixel size from a calibration (e.g. a ruler drawn over an object
        of known length): ``spacing_source`` becomes "calibrated" and a warning says so."""
        col_mm = row_mm if col_mm is None else col_mm
        for v in (row_mm, col_mm):
            if not (np.isfinite(v) and 1e-4 <= float(v) <= 100.0):
                raise ValueError(f"calibrated pixel size {v} mm is not plausible (1e-4 to 100 mm)")
        self.spacing = (float(col_mm), float(row_mm), float(self.spacing[2]))
        self.spacing_source = "calibrated"
        self.warnings.append(f"pixel size calibrated {how}: {float(row_mm):g} x {float(col_mm):g} mm "
                             "(row x column); lengths depend on that calibration")

    @property
    def spacing_known(self) -> bool:
        """True when ``spacing[:2]`` is a physical pixel size (mm); else lengths are in pixels."""
        return self.spacing_source != "none"

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def is_color(self) -> bool:
        return self.array.ndim == 4

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from (i, j, k, 1) voxel indices to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction, float) * np.asarray(self.spacing, float)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_lps(self, i: float, j: float, k: float) -> np.ndarray:
        return (self.affine @ np.array([i, j, k, 1.0]))[:3]

    def lps_to_index(self, points) -> np.ndarray:
        """(i, j, k) voxel indices of LPS points (one point, or N x 3): the inverse of
        :meth:`index_to_lps` (the affine; the same shape out as in)."""
        p = np.asarray(points, float)
        a = self.affine
        return np.linalg.solve(a[:3, :3], (p.reshape(-1, 3) - a[:3, 3]).T).T.reshape(p.shape)

    def slice_origins(self) -> np.ndarray:
        """(n, 3) LPS position of the first voxel of every slice where it was acquired.

        Even spacing: ``affine @ (0, 0, k)``.  With ``slice_positions`` (each slice's distance
        along the normal) the step direction ``direction[:, 2]`` is scaled so that its component
        along the normal equals the slice's own distance: exact for uneven gaps and for a gantry
        tilt (the loader refuses 3D geometry to slices that do not lie on one line)."""
        aff = self.affine
        n = self.n_slices
        pos = aff[:3, 3][None, :] + np.arange(n, dtype=float)[:, None] * aff[:3, 2][None, :]
        sp = self.slice_positions
        if sp is not None and len(sp) == n and n > 1 and np.all(np.isfinite(sp)):
            step = np.asarray(self.direction, float)[:, 2]
            along = float(step @ self.normal)
            if abs(along) > 1e-6:
                d = np.asarray(sp, float) - float(sp[0])
                pos = aff[:3, 3][None, :] + (d / along)[:, None] * step[None, :]
        return pos

    def acquired_lps(self, k: float, j: float, i: float) -> np.ndarray:
        """LPS millimetres of array coordinates (k, j, i) where they were acquired: a
        fractional k between its two slices' own origins (:meth:`slice_origins`), i and j
        along the rows and columns.  Equal to :meth:`index_to_lps` for an even stack."""
        org = self.slice_origins()
        a = self.affine
        if len(org) == 1:
            base = org[0] + float(k) * a[:3, 2]
        else:
            k0 = int(np.clip(np.floor(k), 0, len(org) - 2))
            base = org[k0] + (float(k) - k0) * (org[k0 + 1] - org[k0])  # linear beyond the ends
        return base + float(i) * a[:3, 0] + float(j) * a[:3, 1]

    def reformat_distortion(self) -> str | None:
        """Why the voxel grid of a reformatted (MPR) plane is not the patient's, or None:
        "gantry tilt" (the slices are sheared), "uneven slice spacing" (the grid's even step
        is not the gaps).  Lengths there must be measured between acquired positions."""
        if not self.has_geometry or self.n_slices < 2:
            return None
        step = np.asarray(self.direction, float)[:, 2]
        if float(abs(step @ self.normal)) < np.cos(np.radians(0.1)):
            return "gantry tilt"
        sp = self.slice_positions
        if sp is not None and len(sp) == self.n_slices:
            gaps = np.diff(np.asarray(sp, float))
            if float(gaps.max() - gaps.min()) > max(0.01, 0.01 * abs(float(np.median(gaps)))):
                return "uneven slice spacing"
        return None

    @property
    def normal(self) -> np.ndarray:
        d = np.asarray(self.direction, float)
        n = np.cross(d[:, 0], d[:, 1])
        return n / (np.linalg.norm(n) or 1.0)

    def orientation_labels(self) -> dict[str, str]:
        """Screen-edge letters for the native (axial-as-stored) view.

        Returns letters for the 'left', 'right', 'top' and 'bottom' edges of the image as
        displayed with columns running left→right and rows top→bottom.
        """
        d = np.asarray(self.direction, float)
        right = orientation_letters(d[:, 0])
        down = orientation_letters(d[:, 1])
        return {"right": right, "left": orientation_letters(-d[:, 0]),
                "bottom": down, "top": orientation_letters(-d[:, 1])}

    def value_range(self) -> tuple[float, float]:
        arr = self.array if self.loaded is None or self.loaded.all() else self.array[self.loaded]
        if arr.size == 0:
            return (0.0, 0.0)
        return (float(arr.min()), float(arr.max()))

    def geometry_dict(self) -> dict:
        lo, hi = self.value_range()
        return {
            "shape": list(self.shape),
            "spacing": [round(float(s), 6) for s in self.spacing],
            "origin": [round(float(s), 6) for s in self.origin],
            "direction": [[round(float(v), 6) for v in row] for row in np.asarray(self.direction)],
            "dtype": str(self.array.dtype),
            "value_range": [lo, hi],
            "units": self.units,
            "modality": self.modality,
            "photometric": self.photometric,
            "spacing_source": self.spacing_source,
            "spacing_known": self.spacing_known,
            "has_geometry": self.has_geometry,
            "is_cine": self.is_cine,
            "frame_time_ms": self.frame_time_ms,
            "window_presets": [w.to_dict() for w in self.window_presets],
            "warnings": list(self.warnings),
        }


def orientation_letters(v, threshold: float = 0.0001) -> str:
    """Letters for a direction in LPS, most dominant first (e.g. 'LA' or 'PFH' style).

    Same scheme as dcmtk/Weasis: up to three letters in order of the absolute component
    size, ignoring components below ``threshold``.
    """
    v = np.asarray(v, float)
    pos = ("L", "P", "S")
    neg = ("R", "A", "I")
    order = np.argsort(-np.abs(v))
    out = ""
    for ax in order:
        if abs(v[ax]) <= threshold:
            continue
        # Only keep minor letters when the axis is clearly oblique (> ~ 5 degrees).
        if out and abs(v[ax]) < 0.1:
            continue
        out += pos[ax] if v[ax] > 0 else neg[ax]
    return out
