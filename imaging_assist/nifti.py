"""NIfTI files read with nibabel (overlays on a series, CT volumes for the nodule models).

nibabel does the reading; this module adds what a viewer needs around it:

* nibabel repairs some header fields while loading (zero pixdim -> 1, an unknown sform_code -> 0,
  a vox_offset below 352 -> 352) and logs each repair; those lines would reach the terminal
  raw, so its logger is silenced while loading and the caller decides from the header as stored
  (:func:`stored_header`).  A vox_offset inside the header is refused by :func:`read_data`:
  nibabel repairs the field but reads the voxels from that offset all the same.
* Every failure of a damaged file (nibabel raises ImageFileError, HeaderDataError, OverflowError,
  struct errors, zlib errors...) becomes one :class:`NiftiError` line.
* What it cannot catch: NIfTI has no checksum, so a damaged scl_slope / scl_inter (or a data type
  swapped for another of the same size) reads as a valid, differently scaled image.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class NiftiError(ValueError):
    """A NIfTI file that cannot be used; the message is one line naming the file."""


@contextmanager
def _quiet():
    import nibabel as nib
    log = nib.imageglobals.logger
    level, log.level = log.level, logging.CRITICAL + 1
    try:
        yield
    finally:
        log.level = level


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def load(path):
    """``nibabel.load`` without its repair lines; any failure is one NiftiError line.
    Nothing but the header is read yet (voxels are read through ``img.dataobj``)."""
    import nibabel as nib
    path = Path(path)
    try:
        with _quiet():
            img = nib.load(str(path))
            # a damaged header can fail only here (OverflowError, an unknown data type): now
            data_nbytes(img) + int(img.dataobj.offset)
    except FileNotFoundError:
        raise NiftiError(f"{path.name}: no such file") from None
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a broken file
        raise NiftiError(f"{path.name}: not a readable NIfTI file ({_first_line(e)})") from None
    return img


def stored_header(path, img):
    """The header as it is stored, before nibabel's repairs."""
    import nibabel as nib
    try:
        with _quiet(), nib.openers.ImageOpener(str(path)) as f:
            return type(img.header).from_fileobj(f, check=False)
    except Exception as e:  # noqa: BLE001
        raise NiftiError(f"{Path(path).name}: not a readable NIfTI file ({_first_line(e)})") from None


def data_nbytes(img) -> int:
    return int(np.prod([int(n) for n in img.shape], dtype=object)) * int(img.get_data_dtype().itemsize)


def read_data(path, img) -> np.ndarray:
    """The voxels (nibabel's scaling applied); a failure is one NiftiError line."""
    # nibabel repairs a single-file vox_offset below the header's end in its header check only:
    # the voxels are still read from that offset, header bytes counted as voxels
    hdr = img.header
    first = getattr(hdr, "single_vox_offset", None)  # 352 (NIfTI-1), 544 (NIfTI-2)
    if getattr(hdr, "is_single", False) and first is not None and int(img.dataobj.offset) < first:
        raise NiftiError(f"{Path(path).name}: not a readable NIfTI file (vox_offset {int(img.dataobj.offset)} lies "
                         f"inside the header: a single-file NIfTI stores its voxels from byte {first} on)")
    try:
        with _quiet():
            return np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001
        raise NiftiError(f"{Path(path).name}: the voxel data cannot be read ({_first_line(e)})") from None
