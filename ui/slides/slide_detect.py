"""Which paths the main window shows in the slide view.  Light on purpose: it runs on every
``open_path``, so DICOM files and folders (the radiology case) are recognised from one
header without importing the slide engine; the slide view is imported only for slides."""

from __future__ import annotations

import os

#: VL Whole Slide Microscopy Image Storage (also in imaging_assist.slides.reader)
WSM_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _dicom_head(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return None


def _is_wsm(path: str) -> bool:
    """Is this DICOM file a whole-slide image?  (SOP Class UID only.)"""
    # The engine's header walk: no pydicom import for ordinary files (a cold pydicom
    # import costs more than the whole first-image budget of the viewer).
    from imaging_assist.dicom.header import HeaderError, read_record
    try:
        return str(read_record(path).get("SOPClassUID", "")) == WSM_SOP_CLASS_UID
    except (HeaderError, OSError):  # unreadable: the DICOM loader reports it
        return False


def is_slide_target(path) -> bool:
    """Should the main window open ``path`` in the slide view?

    Decided by :func:`imaging_assist.slides.cli.is_slide_path`, except that DICOM files that
    are not whole-slide images, and folders whose first DICOM file is not one, are answered
    from that one header (a large DICOM study folder costs one header read, not one per file).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        head = _dicom_head(path) or b""
        if len(head) >= 132 and head[128:132] == b"DICM" and not _is_wsm(path):
            return False
        from imaging_assist.slides.cli import IMAGE_EXTENSIONS, SCAN_MIN_PLAIN_SIDE, is_slide_path
        if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS and not head.startswith((b"II*\0", b"MM\0*")):
            # a plain JPEG/PNG/BMP is a slide only when it is as large as `scan` lists slides: a
            # chest film or a pathology tile opens in the image viewer, where its models are
            return is_slide_path(path, SCAN_MIN_PLAIN_SIDE - 1)
        return is_slide_path(path)
    if not os.path.isdir(path):
        return False
    try:
        with os.scandir(path) as it:
            names = sorted(e.path for e in it if e.is_file())
    except OSError:
        return False
    for p in names[:50]:
        head = _dicom_head(p)
        if head is not None and len(head) >= 132 and head[128:132] == b"DICM":
            if not _is_wsm(p):
                return False
            from imaging_assist.slides.cli import is_slide_path
            return is_slide_path(path)
    return False
