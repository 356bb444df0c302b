"""Plain images (JPEG, PNG, BMP, ...) as one-level slides, via Pillow.

The image is decoded once and held in memory; lower levels are built with Pillow's
``reduce(2)`` (a box average) until the smallest fits in 1024 px, so thumbnails, tissue
detection and zoomed-out views do not resample the full image each time.  Striped or
tiled TIFFs go to the tifffile backend instead (it reads them piecewise).

Size limits, checked from the header before anything is decoded: Pillow's own
decompression-bomb limit (about 179 Mpx; above it the image is refused), and the pixels a
file of its size can hold at all (:data:`MAX_COMPRESSION_RATIO`), so a damaged header that
claims 30,000² px in a 40 kB file is an error, not a 2.7 GB allocation.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .base import Slide, SlideBackend, SlideReadError, is_tiff_head, to_rgb

MIN_LEVEL_SIZE = 1024
#: Stored bytes per file byte no PNG (deflate: at most 1032:1) or JPEG (at least ~1 bit per
#: 8x8 block and component, about 1024:1) can exceed; headers claiming more are damaged.
#: "Stored" counts the fewest bits per pixel the format allows (1 for PNG grey/palette).
MAX_COMPRESSION_RATIO = 1100


def is_plain_image(path: str) -> bool:
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.size  # noqa: B018 - header only
        return True
    except Image.DecompressionBombError:
        return True  # an image, too large: ImageSlide says so
    except Exception:
        return False


def _min_stored_bits(im) -> int:
    """Fewest bits per pixel the file format may store this image's pixels in: PNG, GIF and BMP
    allow 1-bit grey and palette images, JPEG stores at least 8 bits per sample."""
    if im.mode in ("1", "P", "L", "PA", "LA") and im.format != "JPEG":
        return 1
    return 8 * max(1, len(im.getbands()))


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class ImageSlide(Slide):
    backend = "pillow"

    def __init__(self, path: str):
        super().__init__(path)
        from PIL import Image
        try:
            with warnings.catch_warnings():
                # Pillow warns between 89 and 179 Mpx; the checks below decide.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(self.path)
        except Image.DecompressionBombError as e:
            raise SlideReadError(f"{self.path}: plain image too large to hold in memory ({_one_line(e)}); "
                                 "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)") from None
        except Exception as e:
            raise SlideReadError(f"{self.path}: cannot decode image ({_one_line(e)})") from None
        from contextlib import nullcontext

        from ..native_stderr import Captured, by_libtiff, captured

        cap = Captured()
        try:
            with im, (captured() if by_libtiff(im) else nullcontext(cap)) as cap:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise SlideReadError(f"{self.path}: image of {w}x{h} px (damaged header)")
                size = os.path.getsize(self.path)
                if w * h * _min_stored_bits(im) / 8 > size * MAX_COMPRESSION_RATIO:
                    raise SlideReadError(f"{self.path}: header claims {w}x{h} px, more than a {size}-byte "
                                         f"{im.format} file can hold (damaged or truncated)")
                self.format = (im.format or "image").lower()
                info = dict(im.info)
                im.load()
                if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                    # 16/32-bit grey: Pillow's convert("RGB") clips to 0..255; scale by the type's
                    # maximum as every backend does (to_rgb), e.g. 16-bit 65535 -> 255.
                    im = Image.fromarray(to_rgb(np.asarray(im), self.background))
                elif im.mode not in ("RGB", "RGBA", "L", "LA"):
                    im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in info else "RGB")
                base = im.copy()
        except SlideReadError:
            raise
        except Exception as e:  # with the decoder's own line, e.g. libtiff's, when it printed one
            raise SlideReadError(f"{self.path}: cannot decode image ({cap.explain(_one_line(e))})") from None
        finally:
            cap.write_back()
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
        # Pillow reports PNG pHYs (per metre) and JPEG JFIF density (per inch or cm) as dpi, and
        # only when they carry a physical unit: the resolution-tag rule applies (inch = unit 2).
        dpi = info.get("dpi")
        if not dpi:
            return
        try:
            dx, dy = float(dpi[0]), float(dpi[1])
        except (TypeError, ValueError, IndexError):
            return
        self._set_mpp_from_resolution(dx, dy, 2, "image-resolution-tags")

    def _read_level(self, level, x, y, w, h):
        return self._levels[level][y:y + h, x:x + w].copy()

    def _close(self):
        self._levels = []


def _wants(path: str, head: bytes) -> bool:
    # TIFFs are read piecewise by the tifffile/OpenSlide backends, never whole by Pillow.
    return bool(head) and not is_tiff_head(head) and is_plain_image(path)


BACKEND = SlideBackend("pillow", _wants, ImageSlide, priority=10)
