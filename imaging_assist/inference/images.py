"""Plain 2D images (PNG, JPEG, TIFF, BMP) as :class:`~imaging_assist.volume.Volume` objects.

They have no DICOM geometry: ``has_geometry`` is False, spacing is (1, 1, 1) in *pixels*,
so segmentation areas are reported in pixels, never in mm².  Pixels are kept on the stored
grid (an EXIF rotation is reported, not applied) so that results line up with the file.
Pillow applies a TIFF's Orientation tag on loading (and decodes orientations 5-8 of an
uncompressed TIFF wrongly), so such a TIFF is read with tifffile, which keeps the stored grid;
so is a 32-bit unsigned grey TIFF, which Pillow reads as signed.
A grey TIFF whose PhotometricInterpretation is MinIsWhite is a MONOCHROME1 image (Pillow inverts
it at 8 bits only): its Volume says so, and the viewer and the models treat it as they treat
DICOM MONOCHROME1.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
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
        if a.dtype != np.uint8:
            raise ImageReadError(f"{path}: a {a.dtype} colour TIFF with an Orientation tag is not read")
        a = a[..., :3]
    elif a.ndim == 3 and a.shape[2] == 2:  # grey + alpha
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ImageReadError(f"{path}: TIFF page of shape {a.shape} is not a 2D image")
    return np.ascontiguousarray(a)


def _unsigned_32(im) -> bool:
    """A 32-bit unsigned grey TIFF: Pillow reads it as its signed mode "I" (values above 2**31
    wrap to negative numbers), so tifffile reads it (uint32)."""
    def first(v):
        return v[0] if isinstance(v, tuple) and v else v

    tags = getattr(im, "tag_v2", {})
    return im.mode == "I" and first(tags.get(258)) == 32 and first(tags.get(339, 1)) == 1


def read_image(path: str | Path) -> Volume:
    from PIL import Image, UnidentifiedImageError

    from ..native_stderr import Captured, by_libtiff, captured

    path = Path(path)
    warnings: list[str] = []
    cap = Captured()
    try:
        with Image.open(path) as im, (captured() if by_libtiff(im) else nullcontext(cap)) as cap:
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
            if tiff and (orient not in (1, None) or _unsigned_32(im)):
                arr = _tiff_stored_grid(path)
                monochrome1 = white_is_zero and arr.ndim == 2
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
    if arr.size == 0:
        raise ImageReadError(f"{path}: empty image")
    color = arr.ndim == 3
    from ..privacy.audit import record_open_file  # the audit trail (never raises)
    record_open_file(path, "image")
    return Volume(array=arr[None], spacing=(1.0, 1.0, 1.0), modality="", units="",
                  photometric="RGB" if color else ("MONOCHROME1" if monochrome1 else "MONOCHROME2"),
                  has_geometry=False,
                  warnings=warnings, description=path.name, source_paths=[str(path)])
