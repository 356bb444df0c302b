"""One reader interface over whole-slide image formats.

:func:`open_slide` picks a backend from the file's content (not only its name):

==============================  ==========================  =========================
format                          backend                     module
==============================  ==========================  =========================
Aperio SVS, Hamamatsu NDPI/VMS,  OpenSlide (openslide-bin)   ``openslide_backend``
MIRAX, Leica SCN, Philips TIFF,
Sakura, Trestle, Ventana, Zeiss
OME-TIFF, generic tiled or       tifffile + imagecodecs      ``tiff_backend``
striped TIFF (pyramid or not)
DICOM VL Whole Slide Microscopy  wsidicom                    ``dicom_backend``
plain JPEG / PNG / BMP ...       Pillow (in-memory pyramid)  ``image_backend``
==============================  ==========================  =========================

Conventions (the same as OpenSlide):

* ``location`` in :meth:`Slide.read_region` is ``(x, y)`` in **level-0 pixels**; ``size`` is
  ``(width, height)`` in pixels **of the requested level**.
* Every read returns an ``(height, width, 3)`` ``uint8`` RGB array.  Areas outside the
  image (and transparent areas) come back as the slide's background colour (white
  unless the file says otherwise), so callers never see undefined pixels.
* ``level_downsamples[i]`` is the mean of the width and height ratios, like OpenSlide.
* ``mpp`` is ``(x, y)`` micrometres per level-0 pixel, or ``None`` when the file does not
  say.  It is **never guessed**; a missing MPP adds a line to :attr:`Slide.warnings`.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from ..errors import UserError

# --------------------------------------------------------------------------- errors


class SlideError(UserError):
    """A slide could not be opened or read (one-line message)."""


class UnsupportedSlideError(SlideError):
    """The file is not a slide/image format this program can read."""


class SlideReadError(SlideError):
    """The file was recognised but reading its pixels failed."""


class MissingMPPWarning(UserWarning):
    """The slide has no microns-per-pixel: physical sizes are unavailable."""


MISSING_MPP_MESSAGE = ("no microns-per-pixel (MPP) in the file: physical sizes (µm, mm²) are "
                       "unavailable and areas are given in pixels")

# Plausible range for a microscope pixel size derived from generic resolution tags (dpi,
# pixels/cm).  Anything outside is a writer's default (72/96/300 dpi) rather than a
# calibration, and is ignored with a warning instead of being used.
PLAUSIBLE_MPP_RANGE = (0.01, 100.0)


def plausible_mpp(value_um: float | None) -> bool:
    return value_um is not None and math.isfinite(value_um) and \
        PLAUSIBLE_MPP_RANGE[0] <= value_um <= PLAUSIBLE_MPP_RANGE[1]


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

    # -- finishing touches used by backends ---------------------------------------------
    def _finish_levels(self, dims: Sequence[tuple[int, int]]) -> None:
        """Set level dimensions/downsamples (sorted, largest first) like OpenSlide."""
        dims = [(int(w), int(h)) for w, h in dims]
        if not dims or any(w <= 0 or h <= 0 for w, h in dims):
            raise SlideReadError(f"{self.path}: no image levels")
        w0, h0 = dims[0]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)

    def _finish_mpp(self) -> None:
        if self.mpp is None:
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

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of a rectangle given in **level** pixels (may overhang the edges)."""
        self._check_level(level)
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w <= 0 or h <= 0:
            raise SlideError(f"{self.path}: region size must be positive, got {w}x{h}")
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._read_level(level, x, y, w, h)
        out = np.empty((h, w, 3), np.uint8)
        out[:] = self.background
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_level(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB; ``location`` in level-0 pixels, ``size`` in ``level`` pixels."""
        self._check_level(level)
        ds = self.level_downsamples[level]
        # Same mapping as OpenSlide: level coordinate = level-0 coordinate / downsample.
        lx = math.floor(location[0] / ds + 1e-9)
        ly = math.floor(location[1] / ds + 1e-9)
        return self.read_level(level, lx, ly, size[0], size[1])

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
        mpp = f"{self.mpp[0]:.4g}x{self.mpp[1]:.4g} µm/px" if self.mpp else "no MPP"
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


def _magic(path: str, n: int = 132) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise SlideError(f"{path}: cannot read ({e.strerror or e})") from None


def is_dicom_file(path: str) -> bool:
    head = _magic(path)
    return len(head) >= 132 and head[128:132] == b"DICM"


def _openslide_vendor(path: str) -> str | None:
    try:
        import openslide
    except Exception:  # openslide-bin missing: other backends still work
        return None
    try:
        return openslide.OpenSlide.detect_format(path)
    except Exception:
        return None


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a slide with the backend that fits its content; raises :class:`SlideError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SlideError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        from .dicom_backend import DicomSlide, find_wsi_dicom_files
        files = find_wsi_dicom_files(path)
        if not files:
            raise UnsupportedSlideError(f"{path}: folder holds no DICOM whole-slide images "
                                        "(VL Whole Slide Microscopy)")
        return DicomSlide(path, files)
    head = _magic(path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        from .dicom_backend import DicomSlide
        return DicomSlide(path)
    name = os.path.basename(path).lower()
    ext = os.path.splitext(name)[1]
    vendor = _openslide_vendor(path)
    is_tiff = head[:4] in _TIFF_MAGIC
    if vendor is not None and vendor not in ("generic-tiff", "dicom"):
        from .openslide_backend import OpenSlideSlide
        return OpenSlideSlide(path, vendor)
    if is_tiff:
        from .tiff_backend import TiffSlide, TiffUnsupported
        try:
            return TiffSlide(path)
        except TiffUnsupported as e:
            if vendor == "generic-tiff":
                from .openslide_backend import OpenSlideSlide
                return OpenSlideSlide(path, vendor)
            raise UnsupportedSlideError(f"{path}: {e}") from None
    if ext in OPENSLIDE_EXTENSIONS:
        raise UnsupportedSlideError(f"{path}: OpenSlide cannot read this {ext} file "
                                    "(damaged, or companion files missing)")
    from .image_backend import ImageSlide, is_plain_image
    if is_plain_image(path):
        return ImageSlide(path)
    raise UnsupportedSlideError(f"{path}: not a slide or image format this program can read")
