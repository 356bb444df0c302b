"""What every slide backend shares: the :class:`Slide` base class, the errors, MPP rules and
small helpers.  Backends import only this module (never ``reader``), and ``reader`` holds the
backend registry and :func:`~imaging_assist.slides.reader.open_slide`, so there is no import
cycle between the reader and its backends.

Conventions (the same as OpenSlide):

* ``location`` in :meth:`Slide.read_region` is ``(x, y)`` in **level-0 pixels**; ``size`` is
  ``(width, height)`` in pixels **of the requested level**.
* Every read returns an ``(height, width, 3)`` ``uint8`` RGB array.  Areas outside the
  image (and transparent areas) come back as the slide's background colour (white
  unless the file says otherwise), so callers never see undefined pixels.
* ``level_downsamples[i]`` is the mean of the width and height ratios, like OpenSlide.
* ``mpp`` is ``(x, y)`` micrometres per level-0 pixel, or ``None`` when the file does not
  say.  It is **never guessed**; ``mpp_source`` says where it came from, a missing MPP adds a
  line to :attr:`Slide.warnings`, and so does an MPP taken from generic resolution tags.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError

# tifffile logs every oddity of a damaged file as a WARNING on the "tifffile" logger; with no
# handler configured, Python's last-resort handler would print them to stderr beside our one-line
# error.  A NullHandler stops that; records still reach handlers the application configures.
logging.getLogger("tifffile").addHandler(logging.NullHandler())

# --------------------------------------------------------------------------- errors


class SlideError(UserError):
    """A slide could not be opened or read (one-line message)."""


class UnsupportedSlideError(SlideError):
    """The file is not a slide/image format this program can read."""


class SlideReadError(SlideError):
    """The file was recognised but reading its pixels failed."""


class BackendDeclined(UnsupportedSlideError):
    """Raised by a backend's opener when the file is not for it after all (e.g. a TIFF layout or
    codec it does not handle): :func:`open_slide` then tries the next registered backend.  It is
    an :class:`UnsupportedSlideError`, so a backend class used directly still fails cleanly."""


class MissingMPPWarning(UserWarning):
    """The slide has no microns-per-pixel: physical sizes are unavailable."""


MISSING_MPP_MESSAGE = ("no microns-per-pixel (MPP) in the file: physical sizes (µm, mm²) are "
                       "unavailable and areas are given in pixels")

# --------------------------------------------------------------------------- MPP rules

#: Range accepted for an MPP that a file states as a calibration (Aperio MPP, OME PhysicalSize,
#: DICOM Pixel Spacing, OpenSlide's vendor properties).  Outside it (NaN, 0, negative, 1e9) the
#: value is ignored with a warning.
PLAUSIBLE_MPP_RANGE = (0.01, 100.0)

#: Narrower range for an MPP derived from generic resolution tags (TIFF XResolution /
#: YResolution + ResolutionUnit, PNG pHYs, JPEG JFIF density).  Writers put their default
#: there (72/96/150/300/600/1200 dpi = 353/265/169/85/42/21 µm/px), so only values in a
#: microscope's range are taken, and always with a warning naming the source.
RESOLUTION_TAG_MPP_RANGE = (0.05, 20.0)

#: Where ``Slide.mpp`` came from (``Slide.mpp_source``).
MPP_SOURCES = ("openslide-property:openslide.mpp-x", "openslide-property:aperio.MPP", "aperio-description", "ome-xml", "dicom-pixel-spacing",
               "tiff-resolution-tags", "image-resolution-tags", "none")
#: Sources that are generic resolution tags rather than a microscope calibration.
RESOLUTION_TAG_SOURCES = ("tiff-resolution-tags", "image-resolution-tags")

#: TIFF ResolutionUnit -> µm per unit (1 = NONE has no physical unit; absent means inch, the
#: TIFF default).
TIFF_RESOLUTION_UNIT_UM = {2: 25400.0, 3: 10000.0}


def plausible_mpp(value_um: float | None, resolution_tags: bool = False) -> bool:
    """Is ``value_um`` a believable microscope pixel size?  (Stricter for resolution tags.)"""
    lo, hi = RESOLUTION_TAG_MPP_RANGE if resolution_tags else PLAUSIBLE_MPP_RANGE
    try:
        v = float(value_um)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and lo <= v <= hi


def mpp_from_resolution(x_res, y_res, unit) -> tuple[tuple[float, float] | None, str | None]:
    """MPP from TIFF-style resolution tags, ``((mpp_x, mpp_y) or None, warning or None)``.

    ``x_res``/``y_res``: pixels per unit (a number or a ``(numerator, denominator)`` rational);
    ``unit``: TIFF ResolutionUnit (1 NONE, 2 inch, 3 cm; None = absent = inch).  An accepted
    value comes with a warning too: resolution tags are not a microscope calibration.
    """
    if x_res is None or y_res is None:
        return None, None
    try:
        unit = 2 if unit is None else int(unit)
    except (TypeError, ValueError):
        unit = -1
    if unit == 1:
        return None, ("ignored resolution tags: ResolutionUnit NONE gives no physical pixel size")
    per_unit = TIFF_RESOLUTION_UNIT_UM.get(unit)
    if per_unit is None:
        return None, f"ignored resolution tags: unknown ResolutionUnit {unit}"

    def ppu(v) -> float:
        try:
            num, den = v if isinstance(v, (tuple, list)) else (v, 1)
            return float(num) / float(den) if float(den) else math.nan
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return math.nan

    px, py = ppu(x_res), ppu(y_res)
    unit_name = "inch" if unit == 2 else "cm"
    if not (math.isfinite(px) and math.isfinite(py) and px > 0 and py > 0):
        return None, f"ignored resolution tags ({px:g} x {py:g} pixels per {unit_name}): not a pixel size"
    mx, my = per_unit / px, per_unit / py
    dpi = f"{px:.4g} dpi" if unit == 2 else f"{px:.6g} pixels/cm = {px * 2.54:.4g} dpi"
    if plausible_mpp(mx, True) and plausible_mpp(my, True):
        return (mx, my), (f"MPP {mx:.4g} x {my:.4g} µm/px taken from generic resolution tags ({dpi}), "
                          "not from a microscope calibration: check it before trusting physical sizes")
    return None, (f"ignored resolution tags ({dpi} = {mx:.4g} µm/px): not a microscope pixel size "
                  f"(accepted from tags: {RESOLUTION_TAG_MPP_RANGE[0]:g}-{RESOLUTION_TAG_MPP_RANGE[1]:g} µm/px); "
                  "probably a scanner's, printer's or writer's default")


#: Largest region one read may return (pixels); a larger request is refused with a SlideError
#: instead of allocating it (128 Mpx = 384 MiB of RGB; thumbnails and tiles are far smaller).
MAX_REGION_PIXELS = 1 << 27
#: Longest side a level may have.  The largest slides are ~250,000 px a side; a TIFF/DICOM
#: header claiming more is damaged (2^24 also keeps level-0 coordinates exact in float32).
MAX_SIDE = 1 << 24
#: :meth:`Slide.get_thumbnail` reads the smallest level that is large enough; a level above
#: this many pixels (1 Gpx, ~3 GB to decode) has no place in an overview and is refused
#: (a huge single-level file needs a pyramid), so a thumbnail never turns into a hang.
MAX_THUMBNAIL_SOURCE_PIXELS = 1 << 30

# Names of the associated images we expose (OpenSlide's names).
ASSOCIATED_NAMES = ("label", "macro", "thumbnail")


def canonical_associated_name(name: str) -> str | None:
    """Map a vendor/series name to 'label', 'macro' or 'thumbnail' (None if none fits)."""
    n = name.strip().lower()
    if "label" in n or "barcode" in n:
        return "label"
    if "macro" in n or "overview" in n or "slide image" in n:
        return "macro"
    if "thumb" in n:
        return "thumbnail"
    return None


# --------------------------------------------------------------------------- base class


class Slide(ABC):
    """A multi-resolution slide.  Use :func:`open_slide` to get one.

    Backends fill in the attributes below in ``__init__`` and implement
    :meth:`_read_level` (a rectangle fully inside one level, in that level's pixels) and
    :meth:`_read_associated`.
    """

    #: short machine name of the backend ("openslide", "tifffile", "wsidicom", "pillow")
    backend: str = ""
    #: May :meth:`read_level` be called from several threads at once (and does the decoder
    #: release the GIL, so that it pays)?  Tiled inference then reads the row runs of a batch
    #: in parallel (:mod:`.tiling`).  Off unless a backend says it is safe.
    concurrent_reads: bool = False
    #: Does :meth:`_read_level_into` copy decoded stored tiles straight into a caller's
    #: buffer?  Tiled inference then reads tiles taken as stored one by one into their batch
    #: slots instead of one region per row run (which is better for the other backends).
    direct_reads: bool = False

    def __init__(self, path: str):
        self.path = os.fspath(path)
        #: file format as detected ("aperio", "generic-tiff", "ome-tiff", "dicom-wsi", "png", ...)
        self.format: str = ""
        #: scanner vendor if known
        self.vendor: str | None = None
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        #: (x, y) µm per level-0 pixel, or None when the file does not say
        self.mpp: tuple[float, float] | None = None
        #: where ``mpp`` came from: one of :data:`MPP_SOURCES` ("none" without MPP)
        self.mpp_source: str = "none"
        self.objective_power: float | None = None
        #: free-form metadata (string values), vendor keys kept as found
        self.properties: dict[str, str] = {}
        #: human-readable warnings (missing MPP, ignored resolution tags, ...)
        self.warnings: list[str] = []
        self.background: tuple[int, int, int] = (255, 255, 255)
        self._associated_names: tuple[str, ...] = ()
        self._closed = False

    # -- subclass hooks -----------------------------------------------------------------
    @abstractmethod
    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 of a rectangle that lies fully inside ``level``."""

    def _read_associated(self, name: str) -> np.ndarray:  # pragma: no cover - overridden
        raise SlideError(f"{self.path}: no associated image {name!r}")

    def _close(self) -> None:
        pass

    def clear_cache(self) -> None:
        """Drop decoded-tile caches (benchmarks; memory pressure)."""

    def prefetch_level(self, level: int, rects) -> None:
        """Hint: the level-pixel rectangles ``rects`` ``[(x, y, w, h), ...]`` are about to be
        read.  A backend with a decoded-tile cache decodes every stored tile they touch once,
        in parallel; the default does nothing.  Never changes what a read returns."""

    # -- finishing touches used by backends ---------------------------------------------
    def _finish_levels(self, dims: Sequence[tuple[int, int]]) -> None:
        """Set level dimensions/downsamples (sorted, largest first) like OpenSlide."""
        dims = [(int(w), int(h)) for w, h in dims]
        if not dims or any(w <= 0 or h <= 0 for w, h in dims):
            raise SlideReadError(f"{self.path}: no image levels" if not dims else
                                 f"{self.path}: level size {dims} has an empty side (damaged file?)")
        if any(w > MAX_SIDE or h > MAX_SIDE for w, h in dims):
            raise SlideReadError(f"{self.path}: level size {dims[0][0]}x{dims[0][1]} px is beyond any "
                                 f"slide (limit {MAX_SIDE} px a side; damaged file?)")
        w0, h0 = dims[0]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)

    def _set_mpp(self, mx, my, source: str) -> bool:
        """Take ``(mx, my)`` µm/px from ``source`` if plausible, else warn why not.

        Every backend goes through here, so NaN, 0, negative or absurd values are refused the
        same way everywhere; resolution tags get the stricter range and always a warning.
        """
        if self.mpp is not None:
            return False
        if source in RESOLUTION_TAG_SOURCES:
            raise ValueError("use _set_mpp_from_resolution for resolution tags")
        try:
            fx, fy = float(mx), float(my)
        except (TypeError, ValueError):
            fx = fy = math.nan
        if plausible_mpp(fx) and plausible_mpp(fy):
            self.mpp, self.mpp_source = (fx, fy), source
            return True
        self.warnings.append(f"ignored implausible MPP {mx} x {my} µm/px from {source} "
                             f"(accepted: {PLAUSIBLE_MPP_RANGE[0]:g}-{PLAUSIBLE_MPP_RANGE[1]:g} µm/px)")
        return False

    def _set_mpp_from_resolution(self, x_res, y_res, unit, source: str = "tiff-resolution-tags") -> bool:
        """MPP from resolution tags (see :func:`mpp_from_resolution`); warns either way."""
        if self.mpp is not None:
            return False
        mpp, warning = mpp_from_resolution(x_res, y_res, unit)
        if warning:
            self.warnings.append(warning)
        if mpp is None:
            return False
        self.mpp, self.mpp_source = mpp, source
        return True

    def _finish_mpp(self) -> None:
        if self.mpp is None:
            self.mpp_source = "none"
            self.warnings.append(MISSING_MPP_MESSAGE)

    # -- geometry -----------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def mpp_x(self) -> float | None:
        return None if self.mpp is None else self.mpp[0]

    @property
    def mpp_y(self) -> float | None:
        return None if self.mpp is None else self.mpp[1]

    @property
    def has_mpp(self) -> bool:
        return self.mpp is not None

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """(x, y) µm per pixel of ``level`` (None without MPP)."""
        if self.mpp is None:
            return None
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        return self.mpp[0] * w0 / w, self.mpp[1] * h0 / h

    def level_scale(self, level: int) -> tuple[float, float]:
        """Per-axis (x, y) level-0 pixels per pixel of ``level``."""
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        return w0 / w, h0 / h

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The lowest-resolution level whose downsample is <= ``downsample`` (OpenSlide's rule)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = i
        return best

    def level_for_mpp(self, mpp: float) -> int:
        """The level to read tiles of ``mpp`` µm/px from: the coarsest at or above that resolution."""
        if self.mpp is None:
            raise SlideError(f"{self.path}: {MISSING_MPP_MESSAGE}")
        return self.get_best_level_for_downsample(mpp / self.mpp_base)

    @property
    def mpp_base(self) -> float:
        """Isotropic level-0 MPP (mean of x and y); raises if the slide has none."""
        if self.mpp is None:
            raise SlideError(f"{self.path}: {MISSING_MPP_MESSAGE}")
        return (self.mpp[0] + self.mpp[1]) / 2.0

    # -- pixels -------------------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if self._closed:
            raise SlideError(f"{self.path}: slide is closed")
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")

    def _check_size(self, w: int, h: int) -> None:
        if w <= 0 or h <= 0:
            raise SlideError(f"{self.path}: region size must be positive, got {w}x{h}")
        if w * h > MAX_REGION_PIXELS:
            raise SlideError(f"{self.path}: region of {w}x{h} px is too large to read at once "
                             f"(limit {MAX_REGION_PIXELS // 1_000_000} Mpx); read it in tiles or from a lower level")

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of a rectangle given in **level** pixels (may overhang the edges)."""
        self._check_level(level)
        x, y, w, h = int(x), int(y), int(w), int(h)
        self._check_size(w, h)
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._read_level(level, x, y, w, h)
        out = np.empty((h, w, 3), np.uint8)
        out[:] = self.background
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_level(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def read_level_into(self, level: int, x: int, y: int, out: np.ndarray) -> None:
        """Write the level rectangle at ``(x, y)`` of ``out``'s size into ``out``, a
        preallocated ``(h, w, 3)`` uint8 array (e.g. a slot of a batch buffer): the pixels
        :meth:`read_level` returns.  Backends that can copy their decoded tiles straight into
        ``out`` override :meth:`_read_level_into` (no intermediate region)."""
        h, w = out.shape[:2]
        self._check_level(level)
        x, y = int(x), int(y)
        lw, lh = self.level_dimensions[level]
        if x >= 0 and y >= 0 and x + w <= lw and y + h <= lh and self._read_level_into(level, x, y, out):
            return
        out[...] = self.read_level(level, x, y, w, h)

    def _read_level_into(self, level: int, x: int, y: int, out: np.ndarray) -> bool:
        """Hook: fill ``out`` from a rectangle fully inside ``level``; False = not supported
        here (the caller then copies :meth:`read_level`'s result)."""
        return False

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB; ``location`` in level-0 pixels, ``size`` in ``level`` pixels."""
        self._check_level(level)
        # The level pixel that holds the location.  A level made with an integer factor f whose
        # size was rounded (2967 px / 2 -> 1483: downsample 2.0003) holds level-0 pixels
        # [f*k, f*k + f) in pixel k, as its writer made it; dividing by the rounded downsample
        # instead drifts up to a level pixel up-left across the level.  That is also the
        # stored pixel OpenSlide returns (or weights most) there.
        f = self._integer_factor(level)
        try:
            if f is not None:
                lx, ly = math.floor(location[0] / f), math.floor(location[1] / f)
            else:  # any other factor: level coordinate = level-0 coordinate / downsample
                ds = self.level_downsamples[level]
                lx = math.floor(location[0] / ds + 1e-9)
                ly = math.floor(location[1] / ds + 1e-9)
        except (ValueError, OverflowError, TypeError):
            raise SlideError(f"{self.path}: region location {location!r} is not a pixel position") from None
        return self.read_level(level, lx, ly, size[0], size[1])

    def _integer_factor(self, level: int) -> int | None:
        """The integer factor ``level`` was made with, when its size says so: the nearest integer
        to its downsample, with both sides the level-0 side divided by it and rounded down or up
        (None otherwise, e.g. a 2.5x level)."""
        f = round(self.level_downsamples[level])
        if f < 1:
            return None
        sides = zip(self.level_dimensions[0], self.level_dimensions[level])
        return f if all(n in (n0 // f, -(-n0 // f)) for n0, n in sides) else None

    # -- associated images --------------------------------------------------------------
    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Which of 'label', 'macro', 'thumbnail' the file holds."""
        return self._associated_names

    def associated_image(self, name: str) -> np.ndarray:
        """(h, w, 3) uint8 RGB of an associated image ('label', 'macro' or 'thumbnail')."""
        if name not in self._associated_names:
            have = ", ".join(self._associated_names) or "none"
            raise SlideError(f"{os.path.basename(self.path)} has no {name!r} image (has: {have})")
        return to_rgb(self._read_associated(name), self.background)

    # -- thumbnails ---------------------------------------------------------------------
    def get_thumbnail(self, max_size: int | tuple[int, int] = 1024) -> np.ndarray:
        """The whole slide, downscaled to fit ``max_size`` (aspect kept), from the pyramid.

        Reads the smallest level that is at least as large as the result, in row blocks so
        memory stays bounded even on single-level files.
        """
        from PIL import Image

        mw, mh = (max_size, max_size) if isinstance(max_size, int) else max_size
        w0, h0 = self.dimensions
        scale = min(mw / w0, mh / h0, 1.0)
        tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        level = self.get_best_level_for_downsample(max(w0 / tw, h0 / th))
        lw, lh = self.level_dimensions[level]
        if lw * lh > MAX_THUMBNAIL_SOURCE_PIXELS:
            raise SlideError(f"{self.path}: no overview: the smallest level that fits is {lw}x{lh} px "
                             f"(limit {MAX_THUMBNAIL_SOURCE_PIXELS >> 20} Mpx); the file needs a pyramid "
                             "(e.g. vips tiffsave --tile --pyramid)")
        if (lw, lh) == (tw, th):
            return self.read_level(level, 0, 0, lw, lh)
        # Row blocks sized to about 64 MiB of RGB, each resized with the box it maps to.
        block = max(1, min(lh, (64 << 20) // max(1, lw * 3)))
        if block >= lh:
            img = Image.fromarray(self.read_level(level, 0, 0, lw, lh))
            return np.asarray(img.resize((tw, th), Image.Resampling.BOX))
        out = np.empty((th, tw, 3), np.uint8)
        fy = lh / th
        r0 = 0
        while r0 < th:
            r1 = min(th, r0 + max(1, int(block / fy)))
            ya, yb = r0 * fy, r1 * fy
            ia, ib = int(math.floor(ya)), min(lh, int(math.ceil(yb)))
            strip = Image.fromarray(self.read_level(level, 0, ia, lw, ib - ia))
            out[r0:r1] = np.asarray(strip.resize((tw, r1 - r0), Image.Resampling.BOX,
                                                 box=(0, ya - ia, lw, yb - ia)))
            r0 = r1
        return out

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions if self.level_dimensions else (0, 0)
        mpp = f"{self.mpp[0]:.4g}x{self.mpp[1]:.4g} µm/px ({self.mpp_source})" if self.mpp else "no MPP"
        return (f"<{type(self).__name__} {os.path.basename(self.path)} {self.format} {w}x{h} "
                f"{self.level_count} levels {mpp}>")


# --------------------------------------------------------------------------- helpers


def to_rgb(arr: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    """Any 2-D grey / RGB / RGBA array -> (h, w, 3) uint8 (alpha composited on background)."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        # Fixed scalings (never from the data range) so every region of a slide maps alike:
        # wider integers by their type's maximum, floats as 0..1.
        if a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        elif a.dtype.kind == "u":
            a = (a.astype(np.float32) * (255.0 / np.iinfo(a.dtype).max) + 0.5).astype(np.uint8)
        elif a.dtype.kind == "i":
            a = np.clip(a, 0, None).astype(np.float32) * (255.0 / np.iinfo(a.dtype).max)
            a = (a + 0.5).astype(np.uint8)
        elif a.dtype.kind == "f":
            a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            raise SlideReadError(f"unsupported pixel type {a.dtype}")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3:
        raise SlideReadError(f"unexpected pixel array shape {a.shape}")
    if a.shape[2] == 3:
        return a
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 2:  # grey + alpha
        a = np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2)
    if a.shape[2] >= 4:
        alpha = a[:, :, 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(a[:, :, :3])
        bg = np.asarray(background, np.uint16)
        rgb = (a[:, :, :3].astype(np.uint16) * alpha + bg * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)
    raise SlideReadError(f"unexpected pixel array shape {a.shape}")


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
OPENSLIDE_EXTENSIONS = {".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".svslide", ".bif", ".czi"}
TIFF_EXTENSIONS = {".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8", ".tf2"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".jp2", ".j2k"}
WSM_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


#: How many bytes of a file ``sniff`` functions get (enough for the DICOM preamble + "DICM").
HEAD_BYTES = 132


HEATMAP_FORMAT_TAG = "imaging-assist-heatmap"  # heat-map files (heatmap_io), told from slides here


def heatmap_kind(path: str | os.PathLike, head: bytes | None = None) -> str | None:
    """"tif" or "npz" when ``path`` is a heat-map file written by ``heatmap_io.write_heatmaps``
    (decided on its first bytes and a TIFF's first description or an NPZ's member names), else
    None.  Never raises: ``open_slide`` uses it to tell a heat-map TIFF from a slide."""
    path = os.fspath(path)
    try:
        if head is None:
            with open(path, "rb") as f:
                head = f.read(8)
        if head[:4] in _TIFF_MAGIC:
            import tifffile
            with tifffile.TiffFile(path) as tif:
                desc = tif.pages.first.description
            return "tif" if isinstance(desc, str) and f'"format": "{HEATMAP_FORMAT_TAG}"' in desc[:200] else None
        if head[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as zf:
                return "npz" if {"heatmaps.npy", "metadata.npy"} <= set(zf.namelist()) else None
    except Exception:  # noqa: BLE001 - whatever is unreadable here is simply not a heat-map file
        return None
    return None


def read_head(path: str, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of a file (b"" for a folder); SlideError if unreadable."""
    if os.path.isdir(path):
        return b""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise SlideError(f"{path}: cannot read ({e.strerror or e})") from None


def is_tiff_head(head: bytes) -> bool:
    return head[:4] in _TIFF_MAGIC


def is_dicom_head(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


@dataclass(frozen=True)
class SlideBackend:
    """One entry of the backend registry in :mod:`imaging_assist.slides.reader`.

    ``sniff(path, head_bytes)`` says cheaply whether the backend wants the file (``head_bytes``
    is the first :data:`HEAD_BYTES` bytes, ``b""`` for a folder); ``open(path)`` returns a
    :class:`Slide` or raises :class:`SlideError` (:class:`BackendDeclined` to pass the file on
    to the next backend).  Higher ``priority`` is asked first.
    """

    name: str
    sniff: Callable[[str, bytes], bool]
    open: Callable[[str], "Slide"]
    priority: int = 0


def tiff_structure_problem(path: str) -> str | None:
    """Why a TIFF's structure cannot be what it claims, or None.

    C readers (libtiff inside OpenSlide) trust the directory: a byte count of 2 GiB makes
    OpenSlide allocate 2 GiB (and abort the process when that fails), an image width of 10^6 px
    over 130 tiles makes it walk tiles that do not exist.  tifffile parses the same directory
    in Python, so the checks below run before such a file reaches OpenSlide: every strip/tile
    lies inside the file, and each page has as many as its size needs.
    """
    import tifffile

    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if not pages:
                return "no image in the TIFF"
            for i, page in enumerate(pages):
                if not hasattr(page, "dataoffsets"):
                    continue
                w, h = int(page.imagewidth), int(page.imagelength)
                if w <= 0 or h <= 0 or w > MAX_SIDE or h > MAX_SIDE:
                    return f"page {i} claims {w}x{h} px"
                if page.is_tiled:
                    tw, th = int(page.tilewidth), int(page.tilelength)
                    if tw <= 0 or th <= 0:
                        return f"page {i} has tiles of {tw}x{th} px"
                    need = math.ceil(w / tw) * math.ceil(h / th)
                else:
                    rps = int(page.rowsperstrip or h) or h
                    need = math.ceil(h / min(rps, h))
                planes = int(page.samplesperpixel) if page.planarconfig == 2 else 1
                n = len(page.dataoffsets)
                if n not in (need, need * planes):
                    return f"page {i} ({w}x{h} px) needs {need * planes} strips/tiles but lists {n}"
                offs = np.asarray(page.dataoffsets, np.float64)  # float: no uint64 wrap-around
                cnts = np.asarray(page.databytecounts, np.float64)
                bad = np.flatnonzero((cnts > 0) & (offs + cnts > size))
                if bad.size:
                    k = int(bad[0])
                    return (f"page {i} has a strip/tile of {int(cnts[k])} bytes at offset {int(offs[k])}, "
                            f"beyond the end of the {size}-byte file (truncated or damaged)")
    except Exception as e:  # tifffile refuses the directory itself
        return f"unreadable TIFF directory ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None
