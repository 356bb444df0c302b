"""Plain 2D images (PNG, JPEG, TIFF, BMP) as :class:`~imaging_assist.volume.Volume` objects.

They have no DICOM geometry: ``has_geometry`` is False, spacing is (1, 1, 1) in *pixels*,
so segmentation areas are reported in pixels, never in mm².  Pixels are kept on the stored
grid (an EXIF rotation is reported, not applied) so that results line up with the file.
Pillow applies a TIFF's Orientation tag on loading (and decodes orientations 5-8 of an
uncompressed TIFF wrongly), so such a TIFF is read with tifffile, which keeps the stored grid.
A grey TIFF whose PhotometricInterpretation is MinIsWhite is a MONOCHROME1 image (Pillow inverts
it at 8 bits only): its Volume says so, and the viewer and the models treat it as they treat
DICOM MONOCHROME1.
"""

from __future__ import annotations

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


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_plain_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:120]


def _tiff_stored_grid(path: Path) -> np.ndarray:
    """The first page of a TIFF on its stored grid (tifffile ignores the Orientation tag)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            a = tf.pages[0].asarray()
    except Exception as e:  # noqa: BLE001 - a damaged file: one line, as Pillow's errors
        raise ImageReadError(f"{path}: not a readable TIFF image ({type(e).__name__}: {_line(e)})") from None
    if a.ndim == 3 and a.shape[2] in (3, 4):
        if a.dtype != np.uint8:
            raise ImageReadError(f"{path}: a {a.dtype} colour TIFF with an Orientation tag is not read")
        a = a[..., :3]
    elif a.ndim == 3 and a.shape[2] == 2:  # grey + alpha
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ImageReadError(f"{path}: TIFF page of shape {a.shape} is not a 2D image")
    return np.ascontiguousarray(a)


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
            if tiff and orient not in (1, None):
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
