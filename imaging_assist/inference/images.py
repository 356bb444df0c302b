"""Plain 2D images (PNG, JPEG, TIFF, BMP) as :class:`~imaging_assist.volume.Volume` objects.

They have no DICOM geometry: ``has_geometry`` is False, spacing is (1, 1, 1) in *pixels*,
so segmentation areas are reported in pixels, never in mm².  Pixels are kept on the stored
grid (an EXIF rotation is reported, not applied) so that results line up with the file.
Pillow applies a TIFF's Orientation tag on loading (and decodes orientations 5-8 of an
uncompressed TIFF wrongly), so such a TIFF is read with tifffile, which keeps the stored grid;
so is a TIFF whose values Pillow changes: 32-bit unsigned grey (read as signed), signed 8-bit
grey (read as unsigned: negative values wrap to 128..255) and 16-bit colour or grey + alpha
(Pillow keeps the high byte only).  A 16-bit colour or grey + alpha PNG is decoded with
imagecodecs (libpng) for the same reason.  16-bit colour whose channels are equal is kept as
16-bit grey; other 16-bit colour is reduced to 8 bits per channel (the high byte, as the colour
models take 8-bit values), with a warning.
An image above Pillow's decompression-bomb warning size (``PIL.Image.MAX_IMAGE_PIXELS``,
about 89 Mpx) is read with a warning on the volume (DICOM images of that size are read too);
Pillow refuses twice that size, and so does this reader, in one line.
A grey TIFF whose PhotometricInterpretation is MinIsWhite is a MONOCHROME1 image (Pillow inverts
it at 8 bits only): its Volume says so, and the viewer and the models treat it as they treat
DICOM MONOCHROME1.
"""

from __future__ import annotations

import os
import warnings as pywarnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..volume import Volume

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # the viewer opens BMP too


class ImageReadError(UserError):
    pass


def is_plain_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: str | Path, unreadable: list | None = None) -> list[Path]:
    """The plain images below ``folder`` (hidden files and folders left out), sorted.  Each
    folder that cannot be read (permissions) is appended to ``unreadable`` as (folder, reason),
    ``folder`` itself included: callers list them, never skip them in silence."""
    folder = Path(folder)
    found = []

    def onerror(e: OSError) -> None:  # Path.rglob skips an unreadable folder without a word
        if unreadable is not None:
            unreadable.append((getattr(e, "filename", None) or str(folder), f"cannot read folder: {e.strerror or e}"))

    for root, dirs, files in os.walk(folder, onerror=onerror):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [p for p in (Path(root) / f for f in files if not f.startswith("."))
                  if is_plain_image(p) and p.is_file()]
    return sorted(found)


def _line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:120]


def _tiff_stored_grid(path: Path) -> np.ndarray:
    """The first page of a TIFF on its stored grid (tifffile ignores the Orientation tag), as
    Pillow would give its pixels: grey (1-bit as 0/255), or RGB from RGB (contiguous or planar),
    JPEG YCbCr, a palette or CMYK; any other PhotometricInterpretation is refused in one line
    (tifffile returns the raw samples, which would be analysed as grey or RGB)."""
    import tifffile
    from PIL import Image

    P = tifffile.PHOTOMETRIC
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            photometric, axes = page.photometric, page.axes
            ycbcr_jpeg = photometric == P.YCBCR and page.compression == tifffile.COMPRESSION.JPEG
            if photometric not in (P.MINISBLACK, P.MINISWHITE, P.RGB, P.PALETTE, P.SEPARATED) and not ycbcr_jpeg:
                raise ImageReadError(f"{path}: a {getattr(photometric, 'name', photometric)} TIFF with an "
                                     "Orientation tag is not read (grey, RGB, palette or CMYK only)")
            if photometric == P.SEPARATED and (page.samplesperpixel != 4 or page.tags.valueof(332, 1) != 1):
                raise ImageReadError(f"{path}: a separated TIFF other than CMYK with an Orientation tag is not read")
            colormap = page.colormap if photometric == P.PALETTE else None
            a = page.asarray()
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file: one line, as Pillow's errors
        raise ImageReadError(f"{path}: not a readable TIFF image ({type(e).__name__}: {_line(e)})") from None
    if "S" in axes and a.ndim == len(axes):
        a = np.moveaxis(a, axes.index("S"), -1)  # planar (PlanarConfiguration 2): samples last
    if a.dtype == bool:  # 1 bit per sample
        a = a.astype(np.uint8)
        if colormap is None:
            a *= 255  # as Pillow's mode "1" converted to "L"
    if colormap is not None:
        if a.ndim != 2 or a.dtype.kind != "u" or colormap.shape[1] <= int(a.max(initial=0)):
            raise ImageReadError(f"{path}: a palette TIFF whose indices do not fit its colormap is not read")
        # by hand (tifffile has no palette conversion): Pillow's rule, the 16-bit colormap // 256
        a = np.moveaxis((np.asarray(colormap) >> 8).astype(np.uint8)[:, a], 0, -1)
    elif photometric == P.SEPARATED:
        if a.dtype != np.uint8 or a.ndim != 3:
            raise ImageReadError(f"{path}: a {a.dtype} CMYK TIFF with an Orientation tag is not read")
        a = np.asarray(Image.frombytes("CMYK", (a.shape[1], a.shape[0]), a.tobytes()).convert("RGB"))
    if a.ndim == 3 and a.shape[2] in (3, 4):
        if a.dtype not in (np.uint8, np.uint16):  # 16 bits: read_image keeps grey or reduces it
            raise ImageReadError(f"{path}: a {a.dtype} colour TIFF is not read (8 or 16 bits only)")
        a = a[..., :3]
    elif a.ndim == 3 and a.shape[2] == 2:  # grey + alpha
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ImageReadError(f"{path}: TIFF page of shape {a.shape} is not a 2D image")
    return np.ascontiguousarray(a)


def _pillow_changes_values(im) -> bool:
    """A TIFF whose values Pillow changes on reading, so tifffile reads it: 32-bit unsigned grey
    (Pillow's signed mode "I" wraps values above 2**31 to negative numbers), signed samples in a
    mode Pillow reads as unsigned (8-bit grey: -1 becomes 255), and more than 8 bits per sample
    of colour or grey + alpha (Pillow has no such 16-bit modes: it keeps the high byte)."""
    def first(v):
        return v[0] if isinstance(v, tuple) and v else v

    tags = getattr(im, "tag_v2", {})
    bits, fmt = first(tags.get(258)), first(tags.get(339, 1))
    return ((im.mode == "I" and bits == 32 and fmt == 1)
            or (fmt == 2 and im.mode not in ("I", "F"))
            or (im.mode in ("RGB", "RGBA", "RGBX", "LA") and isinstance(bits, int) and bits > 8))


def _png16_colour(path: Path, im) -> bool:
    """A 16-bit colour or grey + alpha PNG (IHDR bit depth 16, colour type 2, 4 or 6): Pillow has
    no 16-bit modes for these and keeps the high byte of each sample (12-bit data: 16 levels)."""
    if getattr(im, "format", "") != "PNG":
        return False
    with open(path, "rb") as f:
        head = f.read(26)  # signature (8), IHDR length and type (8), width, height, depth, colour type
    return len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)


def _png16_samples(path: Path) -> np.ndarray:
    """The uint16 samples of a 16-bit colour or grey + alpha PNG, (rows, cols, channels), by
    libpng (imagecodecs)."""
    import imagecodecs

    try:
        return imagecodecs.png_decode(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - a damaged file: one line, as Pillow's errors
        raise ImageReadError(f"{path}: not a readable PNG image ({type(e).__name__}: {_line(e)})") from None


@contextmanager
def _no_bomb_warning():
    """Pillow's DecompressionBombWarning is a Python warning on the terminal (nothing in the
    results): silenced here, said on the volume instead."""
    from PIL import Image

    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def read_image(path: str | Path) -> Volume:
    from PIL import Image, UnidentifiedImageError

    from ..native_stderr import Captured, by_libtiff, captured

    path = Path(path)
    warnings: list[str] = []
    cap = Captured()
    try:
        with _no_bomb_warning(), Image.open(path) as im, \
                (captured() if by_libtiff(im) else nullcontext(cap)) as cap:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:  # Pillow refuses above twice the limit
                warnings.append(f"large image: {im.width}x{im.height} = {im.width * im.height:,} pixels, above "
                                f"the decompression-bomb warning size of {limit:,}: reading and analysing "
                                "it takes much memory (tens of bytes per pixel)")
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                warnings.append(f"{n_frames} pages/frames in the file: only the first is analysed")
            try:
                orient = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - broken EXIF is not worth failing for
                orient = 1
            if orient not in (1, None):
                warnings.append(f"EXIF orientation {orient} is ignored: results are on the stored "
                                "pixel grid, which viewers may show rotated")
            mode = im.mode
            tiff = getattr(im, "format", "") == "TIFF"
            white_is_zero = tiff and getattr(im, "tag_v2", {}).get(262) == 0
            monochrome1 = False
            if tiff and (orient not in (1, None) or _pillow_changes_values(im)):
                arr = _tiff_stored_grid(path)
                monochrome1 = white_is_zero and arr.ndim == 2
                if mode in ("RGBA", "LA"):
                    warnings.append("alpha channel ignored")
            elif _png16_colour(path, im):
                arr = _png16_samples(path)
                if arr.ndim == 3 and arr.shape[2] in (2, 4) or "transparency" in im.info:
                    warnings.append("alpha channel ignored")
                if arr.ndim == 3:
                    arr = arr[..., 0] if arr.shape[2] == 2 else arr[..., :3]
            elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.array(im).astype(np.uint16)
            elif mode in ("I", "F"):
                arr = np.array(im)
            elif mode in ("L", "1"):
                arr = np.array(im.convert("L"))
            elif mode == "LA":
                arr = np.array(im.convert("L"))
                warnings.append("alpha channel ignored")
            else:
                if mode in ("RGBA", "PA") or "transparency" in im.info:
                    warnings.append("alpha channel ignored")
                arr = np.array(im.convert("RGB"))
            if white_is_zero and mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                monochrome1 = True  # Pillow inverts MinIsWhite at 8 bits only
            if monochrome1:
                warnings.append("TIFF PhotometricInterpretation MinIsWhite: shown and analysed as MONOCHROME1 "
                                "(the lowest value white)")
    except ImageReadError:  # already one line naming the file (the tifffile reader)
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: image is too large to open safely ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: not a readable PNG/JPEG/TIFF image ({cap.explain(_line(e))})") from None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise more types for a damaged
        # file (TypeError "Missing dimensions" from a TIFF without its size tags, struct.error...)
        raise ImageReadError(f"{path}: not a readable PNG/JPEG/TIFF image ({type(e).__name__}: "
                             f"{cap.explain(_line(e))})") from None
    finally:
        cap.write_back()  # a C library's lines that no error message took (warnings, other threads)
    if arr.ndim == 3 and arr.shape[2] == 3 and np.array_equal(arr[..., 0], arr[..., 1]) \
            and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0].copy()  # grey image stored as RGB
    if arr.ndim == 3 and arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
        warnings.append("16-bit colour image reduced from 16 to 8 bits per channel (the high byte of each "
                        "sample kept): the colour models take 8-bit values")
    if arr.size == 0:
        raise ImageReadError(f"{path}: empty image")
    color = arr.ndim == 3
    from ..privacy.audit import record_open_file  # the audit trail (never raises)
    record_open_file(path, "image")
    return Volume(array=arr[None], spacing=(1.0, 1.0, 1.0), modality="", units="",
                  photometric="RGB" if color else ("MONOCHROME1" if monochrome1 else "MONOCHROME2"),
                  has_geometry=False,
                  warnings=warnings, description=path.name, source_paths=[str(path)])
