"""OpenSlide backend: Aperio SVS and the other vendor formats (openslide-python + openslide-bin)."""

from __future__ import annotations

import numpy as np

from .reader import (SlideError, SlideReadError, Slide, UnsupportedSlideError, plausible_mpp,
                     to_rgb)

#: OpenSlide's cache is per slide by default (32 MiB); a bigger shared one helps panning and
#: row-block tiling revisit decoded tiles.
_CACHE_BYTES = 256 << 20
_cache = None


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


class OpenSlideSlide(Slide):
    backend = "openslide"

    def __init__(self, path: str, vendor: str | None = None):
        super().__init__(path)
        import openslide
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise UnsupportedSlideError(f"{self.path}: OpenSlide does not support this file") from None
        except openslide.OpenSlideError as e:
            raise SlideReadError(f"{self.path}: OpenSlide could not open it ({e})") from None
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
        mx = _parse_float(props.get("openslide.mpp-x"))
        my = _parse_float(props.get("openslide.mpp-y"))
        if mx is not None and my is not None and mx > 0 and my > 0:
            if plausible_mpp(mx) and plausible_mpp(my):
                self.mpp = (mx, my)
            else:
                self.warnings.append(f"ignored implausible MPP {mx:g} x {my:g} µm/px in the file")
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

    # Level-0 location straight to OpenSlide: identical results to calling it directly.
    def read_region(self, location, level, size):
        self._check_level(level)
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise SlideError(f"{self.path}: region size must be positive, got {w}x{h}")
        try:
            img = self._osr.read_region((int(location[0]), int(location[1])), level, (w, h))
        except Exception as e:
            raise SlideReadError(f"{self.path}: read failed ({e})") from None
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
        return np.asarray(self._osr.associated_images[name])

    def _close(self):
        self._osr.close()
