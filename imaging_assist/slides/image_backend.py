"""Plain images (JPEG, PNG, BMP, ...) as one-level slides, via Pillow.

The image is decoded once and held in memory; lower levels are built with Pillow's
``reduce(2)`` (a box average) until the smallest fits in 1024 px, so thumbnails, tissue
detection and zoomed-out views do not resample the full image each time.  Striped or
tiled TIFFs go to the tifffile backend instead (it reads them piecewise).
"""

from __future__ import annotations

import numpy as np

from .reader import Slide, SlideReadError, plausible_mpp, to_rgb

#: Above this many pixels a plain image is refused (it would need > ~3 GiB in memory).
MAX_PIXELS = 1_000_000_000
MIN_LEVEL_SIZE = 1024


def is_plain_image(path: str) -> bool:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - header only
        return True
    except Exception:
        return False


class ImageSlide(Slide):
    backend = "pillow"

    def __init__(self, path: str):
        super().__init__(path)
        from PIL import Image
        try:
            with Image.open(self.path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise SlideReadError(
                        f"{self.path}: plain {im.format} image of {w}x{h} px is too large to hold in memory; "
                        "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)")
                self.format = (im.format or "image").lower()
                info = dict(im.info)
                old = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None  # size checked above; lift Pillow's bomb guard
                try:
                    im.load()
                finally:
                    Image.MAX_IMAGE_PIXELS = old
                if im.mode not in ("RGB", "RGBA", "L", "LA"):
                    im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in info else "RGB")
                base = im.copy()
        except SlideReadError:
            raise
        except Exception as e:
            raise SlideReadError(f"{self.path}: cannot decode image ({e})") from None
        levels = [base]
        while max(levels[-1].size) > MIN_LEVEL_SIZE and min(levels[-1].size) >= 2:
            levels.append(levels[-1].reduce(2))
        self._levels = [to_rgb(np.asarray(L), self.background) for L in levels]
        self._finish_levels([L.size for L in levels])
        self._mpp_from_info(info)
        self.properties = {"image.format": self.format,
                           **{f"image.{k}": str(v) for k, v in info.items()
                              if isinstance(v, (int, float, str, tuple)) and len(str(v)) < 200}}
        self._finish_mpp()

    def _mpp_from_info(self, info: dict) -> None:
        dpi = info.get("dpi")
        if not dpi:
            return
        try:
            dx, dy = float(dpi[0]), float(dpi[1])
        except (TypeError, ValueError, IndexError):
            return
        if dx <= 0 or dy <= 0:
            return
        mx, my = 25400.0 / dx, 25400.0 / dy
        if plausible_mpp(mx) and plausible_mpp(my):
            self.mpp = (mx, my)
        else:
            self.warnings.append(f"ignored resolution {dx:.4g} dpi ({mx:.4g} µm/px is not a microscope "
                                 "pixel size; probably a writer's default)")

    def _read_level(self, level, x, y, w, h):
        return self._levels[level][y:y + h, x:x + w].copy()

    def _close(self):
        self._levels = []
