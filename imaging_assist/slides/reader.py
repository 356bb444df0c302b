"""One reader interface over whole-slide image formats.

:func:`open_slide` picks a backend from the file's content (not only its name), by walking a
small registry: each backend registers a name, a cheap ``sniff(path, head_bytes)``, a priority
and an ``open(path)`` (:func:`register_backend`).  The backends import only :mod:`.base`
(the :class:`Slide` class, errors, MPP rules), so they never import this module.  The built-in
ones, in the order they are asked:

=========  ==============================  ==================================  ======================
priority   name                            reads                               module
=========  ==============================  ==================================  ======================
100        ``wsidicom``                    DICOM VL Whole Slide Microscopy     ``dicom_backend``
                                           (a file, or the folder of its
                                           instances)
80         ``openslide``                   Aperio SVS, Hamamatsu NDPI/VMS,     ``openslide_backend``
                                           MIRAX, Leica SCN, Philips TIFF,
                                           Sakura, Trestle, Ventana, Zeiss
60         ``tifffile``                    OME-TIFF, generic tiled or striped  ``tiff_backend``
                                           TIFF (pyramid or not)
50         ``openslide-generic-tiff``      generic TIFFs tifffile declines     ``openslide_backend``
10         ``pillow``                      plain JPEG / PNG / BMP ...          ``image_backend``
=========  ==============================  ==================================  ======================

A backend's ``open`` raises :class:`BackendDeclined` to pass the file on to the next one.

Conventions (level-0 coordinates, RGB uint8 reads, MPP never guessed, ``mpp_source``) are in
:mod:`.base`.  Every name that used to live here (``Slide``, the errors, ``plausible_mpp``,
``to_rgb``, ...) is still importable from here.
"""

from __future__ import annotations

import os
import threading

from . import dicom_backend, image_backend, openslide_backend, tiff_backend
from .base import (ASSOCIATED_NAMES, HEAD_BYTES, IMAGE_EXTENSIONS, MAX_REGION_PIXELS, MAX_SIDE,  # noqa: F401
                   MISSING_MPP_MESSAGE, MPP_SOURCES, OPENSLIDE_EXTENSIONS, PLAUSIBLE_MPP_RANGE,
                   RESOLUTION_TAG_MPP_RANGE, RESOLUTION_TAG_SOURCES, TIFF_EXTENSIONS, WSM_SOP_CLASS_UID,
                   _TIFF_MAGIC, BackendDeclined, MissingMPPWarning, Slide, SlideBackend, SlideError,
                   SlideReadError, UnsupportedSlideError, canonical_associated_name, heatmap_kind,
                   is_dicom_head, is_tiff_head, mpp_from_resolution, plausible_mpp, read_head, to_rgb)

__all__ = ["open_slide", "register_backend", "unregister_backend", "registered_backends", "SlideBackend",
           "BackendDeclined", "Slide", "SlideError", "SlideReadError", "UnsupportedSlideError",
           "MissingMPPWarning", "MISSING_MPP_MESSAGE", "plausible_mpp", "to_rgb", "canonical_associated_name"]

# --------------------------------------------------------------------------- registry

_REGISTRY: list[SlideBackend] = []
_REGISTRY_LOCK = threading.Lock()


def register_backend(name: str, sniff, open, priority: int = 0) -> SlideBackend:  # noqa: A002
    """Add a backend (see :class:`~.base.SlideBackend`); higher ``priority`` is asked first,
    equal priorities in registration order.  ``name`` must be new."""
    backend = SlideBackend(name, sniff, open, int(priority))
    with _REGISTRY_LOCK:
        if any(b.name == name for b in _REGISTRY):
            raise ValueError(f"slide backend {name!r} is already registered")
        _REGISTRY.append(backend)
        _REGISTRY.sort(key=lambda b: -b.priority)  # stable: ties keep registration order
    return backend


def unregister_backend(name: str) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY[:] = [b for b in _REGISTRY if b.name != name]


def registered_backends() -> tuple[SlideBackend, ...]:
    """The registry in the order :func:`open_slide` asks it."""
    with _REGISTRY_LOCK:
        return tuple(_REGISTRY)


for _b in (dicom_backend.BACKEND, openslide_backend.BACKEND, tiff_backend.BACKEND,
           openslide_backend.GENERIC_TIFF_BACKEND, image_backend.BACKEND):
    register_backend(_b.name, _b.sniff, _b.open, _b.priority)


def is_dicom_file(path: str) -> bool:
    return is_dicom_head(read_head(path))


def _magic(path: str, n: int = HEAD_BYTES) -> bytes:  # kept for callers of the old name
    return read_head(path, n)


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a slide with the first registered backend that wants it; raises :class:`SlideError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SlideError(f"{path}: no such file or folder")
    head = read_head(path)
    if heatmap_kind(path, head):  # a TIFF like a slide's, but float probabilities on a tile grid
        raise UnsupportedSlideError(f"{path}: an imaging-assist heat map, not a slide: open the slide it was "
                                    "made for and load it there (Load heat map…), or see it with "
                                    "`imaging-assist info`")
    declined: list[str] = []
    for backend in registered_backends():
        try:
            wanted = backend.sniff(path, head)
        except SlideError:
            raise
        except Exception:  # a sniffer that trips over odd bytes just does not want the file
            wanted = False
        if not wanted:
            continue
        try:
            slide = backend.open(path)
        except BackendDeclined as e:
            declined.append(str(e).removeprefix(f"{path}: "))
            continue
        from ..privacy.audit import record_open_file  # the audit trail (never raises)
        record_open_file(path, "slide", backend=backend.name)
        return slide
    if os.path.isdir(path):
        raise UnsupportedSlideError(f"{path}: folder holds no DICOM whole-slide images "
                                    "(VL Whole Slide Microscopy)")
    ext = os.path.splitext(path.lower())[1]
    if declined:
        raise UnsupportedSlideError(f"{path}: {declined[0]}")
    if ext in OPENSLIDE_EXTENSIONS:
        raise UnsupportedSlideError(f"{path}: OpenSlide cannot read this {ext} file "
                                    "(damaged, or companion files missing)")
    raise UnsupportedSlideError(f"{path}: not a slide or image format this program can read")
