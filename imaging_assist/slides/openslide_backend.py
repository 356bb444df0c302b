"""OpenSlide backend: Aperio SVS and the other vendor formats (openslide-python + openslide-bin).

OpenSlide is C code that trusts a TIFF's directory, so TIFF-based files are checked with
tifffile first (:func:`.base.tiff_structure_problem`): a damaged byte count or image size is a
one-line error here instead of a multi-gigabyte allocation (or an abort) inside OpenSlide.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from .base import (SlideBackend, SlideError, SlideReadError, Slide, UnsupportedSlideError, is_tiff_head,
                   read_head, tiff_structure_problem, to_rgb)

#: OpenSlide's cache is per slide by default (32 MiB); a bigger shared one helps panning and
#: row-block tiling revisit decoded tiles.
_CACHE_BYTES = 256 << 20
_cache = None

#: OpenSlide's unit names for the TIFF ResolutionUnit it reports as ``tiff.ResolutionUnit``.
_UNIT_CODES = {"none": 1, "inch": 2, "centimeter": 3}


def _shared_cache():
    global _cache
    if _cache is None:
        import openslide
        try:
            _cache = openslide.OpenSlideCache(_CACHE_BYTES)
        except Exception:  # very old OpenSlide: no cache API
            _cache = False
    return _cache or None


def _parse_float(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@functools.lru_cache(maxsize=16)
def _detect(path: str, mtime_ns: int, size: int) -> str | None:
    try:
        import openslide
    except Exception:  # openslide-bin missing: other backends still work
        return None
    try:
        return openslide.OpenSlide.detect_format(path)
    except Exception:
        return None


def detect_format(path: str) -> str | None:
    """OpenSlide's vendor name for ``path`` (None if it cannot read it); cached per file version."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return _detect(os.path.abspath(path), st.st_mtime_ns, st.st_size)


class OpenSlideSlide(Slide):
    backend = "openslide"
    # OpenSlide handles are thread-safe and ctypes drops the GIL during read_region.
    concurrent_reads = True

    def __init__(self, path: str, vendor: str | None = None):
        super().__init__(path)
        import openslide
        if is_tiff_head(read_head(self.path)):
            problem = tiff_structure_problem(self.path)
            if problem:
                raise SlideReadError(f"{self.path}: {problem}")
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise UnsupportedSlideError(f"{self.path}: OpenSlide does not support this file") from None
        except Exception as e:
            raise SlideReadError(f"{self.path}: OpenSlide could not open it ({_one_line(e)})") from None
        try:
            self._setup(vendor)
        except SlideError:
            self._osr.close()
            raise
        except Exception as e:  # OpenSlideError: the file failed while its metadata was read
            self._osr.close()
            raise SlideReadError(f"{self.path}: OpenSlide could not read it ({_one_line(e)})") from None

    def _setup(self, vendor: str | None) -> None:
        cache = _shared_cache()
        if cache is not None:
            self._osr.set_cache(cache)
        props = dict(self._osr.properties)
        self.properties = props
        self.vendor = vendor or props.get("openslide.vendor")
        self.format = self.vendor or "openslide"
        self._finish_levels(self._osr.level_dimensions)
        # OpenSlide's own downsamples (it may round differently for vendor pyramids).
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self._mpp(props)
        self.objective_power = _parse_float(props.get("openslide.objective-power"))
        bg = props.get("openslide.background-color")
        if bg and len(bg) == 6:
            try:
                self.background = tuple(int(bg[i:i + 2], 16) for i in (0, 2, 4))
            except ValueError:
                pass
        self._associated_names = tuple(n for n in ("label", "macro", "thumbnail")
                                       if n in self._osr.associated_images)
        self._finish_mpp()

    def _mpp(self, props: dict) -> None:
        # OpenSlide's generic-tiff driver turns TIFF resolution tags into openslide.mpp-x: those
        # get the resolution-tag rule (microscope range only, always a warning), like tifffile.
        if self.vendor == "generic-tiff":
            xr, yr = props.get("tiff.XResolution"), props.get("tiff.YResolution")
            if xr is not None and yr is not None:
                unit = props.get("tiff.ResolutionUnit")
                code = _UNIT_CODES.get(unit.lower(), -1) if unit else None
                self._set_mpp_from_resolution(_parse_float(xr), _parse_float(yr), code)
            return
        mx, my = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
        if mx is not None or my is not None:
            self._set_mpp(mx, my, "openslide-property:openslide.mpp-x")
        elif props.get("aperio.MPP") is not None:
            # OpenSlide drops an Aperio MPP it cannot parse; say so instead of staying silent.
            self._set_mpp(props["aperio.MPP"], props["aperio.MPP"], "openslide-property:aperio.MPP")

    # Level-0 location straight to OpenSlide: identical results to calling it directly.
    def read_region(self, location, level, size):
        self._check_level(level)
        w, h = int(size[0]), int(size[1])
        self._check_size(w, h)
        try:
            img = self._osr.read_region((int(location[0]), int(location[1])), level, (w, h))
        except Exception as e:
            raise SlideReadError(f"{self.path}: read failed ({_one_line(e)})") from None
        return to_rgb(np.asarray(img), self.background)

    def _read_level(self, level, x, y, w, h):
        ds = self.level_downsamples[level]
        # OpenSlide converts level-0 -> level with one downsample per level; invert that.
        x0, y0 = int(round(x * ds)), int(round(y * ds))
        return self.read_region((x0, y0), level, (w, h))

    def clear_cache(self) -> None:
        import openslide
        try:
            self._osr.set_cache(openslide.OpenSlideCache(_CACHE_BYTES))
        except Exception:
            pass

    def _read_associated(self, name):
        try:
            return np.asarray(self._osr.associated_images[name])
        except Exception as e:
            raise SlideReadError(f"{self.path}: {name} image unreadable ({_one_line(e)})") from None

    def _close(self):
        self._osr.close()


def _wants_vendor_format(path: str, head: bytes) -> bool:
    return detect_format(path) not in (None, "generic-tiff", "dicom")


def _wants_generic_tiff(path: str, head: bytes) -> bool:
    return detect_format(path) == "generic-tiff"


#: Vendor formats (SVS, NDPI, MIRAX, ...): asked before tifffile.
BACKEND = SlideBackend("openslide", _wants_vendor_format, OpenSlideSlide, priority=80)
#: Generic TIFFs that tifffile declined (e.g. a codec imagecodecs lacks): asked after it.
GENERIC_TIFF_BACKEND = SlideBackend("openslide-generic-tiff", _wants_generic_tiff,
                                    lambda path: OpenSlideSlide(path, "generic-tiff"), priority=50)
