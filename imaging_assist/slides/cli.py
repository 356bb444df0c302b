"""Slide functions for the ``imaging-assist info`` and ``scan`` commands (the CLI wires them).

* :func:`is_slide_path` - should ``info PATH`` treat PATH as a slide?
* :func:`info_dict` / :func:`format_info` - what ``info`` prints (JSON / text).
* :func:`scan_slides` - slides under some paths, plus ``(path, reason)`` problems.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .reader import (IMAGE_EXTENSIONS, OPENSLIDE_EXTENSIONS, WSM_SOP_CLASS_UID, Slide, SlideError,
                     _TIFF_MAGIC, open_slide)

#: Plain JPEG/PNG (and untiled TIFF) files count as slides in ``scan`` only from this size up,
#: so folders of small tiles or screenshots are not listed as slides (``info`` takes any size).
SCAN_MIN_PLAIN_SIDE = 4096


@dataclass
class SlideSummary:
    path: str
    format: str
    backend: str
    vendor: str | None
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: tuple[float, float] | None
    objective_power: float | None
    associated_images: list[str]
    warnings: list[str] = field(default_factory=list)
    mpp_source: str = "none"  # where the MPP came from (base.MPP_SOURCES)

    @classmethod
    def from_slide(cls, slide: Slide) -> "SlideSummary":
        return cls(path=slide.path, format=slide.format, backend=slide.backend, vendor=slide.vendor,
                   dimensions=tuple(slide.dimensions), level_count=slide.level_count,
                   level_dimensions=[tuple(d) for d in slide.level_dimensions],
                   level_downsamples=[float(d) for d in slide.level_downsamples],
                   mpp=tuple(slide.mpp) if slide.mpp else None, objective_power=slide.objective_power,
                   associated_images=list(slide.associated_image_names), warnings=list(slide.warnings),
                   mpp_source=getattr(slide, "mpp_source", "none"))

    @property
    def size_mm(self) -> tuple[float, float] | None:
        if self.mpp is None:
            return None
        return self.dimensions[0] * self.mpp[0] / 1000.0, self.dimensions[1] * self.mpp[1] / 1000.0

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "backend": self.backend, "vendor": self.vendor,
                "dimensions": list(self.dimensions), "level_count": self.level_count,
                "level_dimensions": [list(d) for d in self.level_dimensions],
                "level_downsamples": [round(d, 6) for d in self.level_downsamples],
                "mpp": list(self.mpp) if self.mpp else None, "mpp_source": self.mpp_source,
                "size_mm": [round(v, 4) for v in self.size_mm] if self.size_mm else None,
                "objective_power": self.objective_power, "associated_images": list(self.associated_images),
                "warnings": list(self.warnings)}

    def one_line(self) -> str:
        w, h = self.dimensions
        mpp = f"{self.mpp[0]:.4g} µm/px" if self.mpp else "MPP unknown"
        mag = f" {self.objective_power:g}x" if self.objective_power else ""
        assoc = f"  [{', '.join(self.associated_images)}]" if self.associated_images else ""
        return f"{self.format:<12} {w}x{h}  {self.level_count} levels  {mpp}{mag}{assoc}"


def _as_slide(slide_or_path) -> tuple[Slide, bool]:
    if isinstance(slide_or_path, Slide):
        return slide_or_path, False
    return open_slide(slide_or_path), True


def info_dict(slide) -> dict:
    """JSON-ready description of a slide (a :class:`Slide` or a path)."""
    s, owned = _as_slide(slide)
    try:
        d = SlideSummary.from_slide(s).to_dict()
        d["levels"] = [{"level": i, "width": w, "height": h, "downsample": round(ds, 6),
                        "mpp": [round(v, 6) for v in s.level_mpp(i)] if s.mpp else None}
                       for i, ((w, h), ds) in enumerate(zip(s.level_dimensions, s.level_downsamples))]
        d["associated_image_sizes"] = {}
        for name in s.associated_image_names:
            try:
                a = s.associated_image(name)
                d["associated_image_sizes"][name] = [int(a.shape[1]), int(a.shape[0])]
            except SlideError as e:
                d["warnings"].append(f"{name} image unreadable: {e}")
        keep = ("openslide.vendor", "openslide.comment", "aperio.AppMag", "aperio.MPP", "aperio.Date",
                "tiff.Software", "tiff.Compression", "dicom.Manufacturer", "dicom.ManufacturerModelName",
                "ome.Image.Name", "image.format")
        d["properties"] = {k: " ".join(s.properties[k].split())[:160] for k in keep if k in s.properties}
        return d
    finally:
        if owned:
            s.close()


def format_info(slide) -> str:
    """Text for ``imaging-assist info SLIDE``."""
    d = info_dict(slide)
    w, h = d["dimensions"]
    lines = [f"Slide       {os.path.basename(d['path'])}",
             f"Format      {d['format']}  (backend {d['backend']}{', vendor ' + d['vendor'] if d['vendor'] else ''})",
             f"Size        {w} x {h} px" + (f"  ({d['size_mm'][0]:.2f} x {d['size_mm'][1]:.2f} mm)"
                                           if d["size_mm"] else "")]
    if d["mpp"]:
        lines.append(f"MPP         {d['mpp'][0]:.4g} x {d['mpp'][1]:.4g} µm/px (source {d['mpp_source']})")
    else:
        lines.append("MPP         unknown (WARNING: not in the file; physical sizes unavailable)")
    if d["objective_power"]:
        lines.append(f"Objective   {d['objective_power']:g}x")
    lines.append(f"Levels      {d['level_count']}")
    for lv in d["levels"]:
        mpp = f"  {lv['mpp'][0]:.4g} µm/px" if lv["mpp"] else ""
        lines.append(f"  {lv['level']:>2}  {lv['width']:>7} x {lv['height']:<7} downsample {lv['downsample']:<9.4g}{mpp}")
    if d["associated_image_sizes"]:
        lines.append("Associated  " + ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in d["associated_image_sizes"].items()))
    else:
        lines.append("Associated  none")
    for k, v in d["properties"].items():
        lines.append(f"  {k} = {v}")
    for wmsg in d["warnings"]:
        lines.append(f"warning: {wmsg}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- detection


def _head(path: str, n: int = 132) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _is_wsi_dicom_file(path: str) -> bool:
    head = _head(path)
    if len(head) < 132 or head[128:132] != b"DICM":
        return False
    from .dicom_backend import is_wsi_dicom
    return is_wsi_dicom(path)


def _tiff_is_slide_like(path: str, min_side: int = 0) -> bool:
    """Tiled, pyramidal, OME or vendor TIFF; or any TIFF whose longest side >= min_side."""
    try:
        import tifffile
        with tifffile.TiffFile(path) as tif:
            p = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            if tif.is_ome or tif.is_svs or p.is_tiled or len(tif.series[0].levels) > 1:
                return True
            return max(int(p.imagewidth), int(p.imagelength)) >= min_side
    except Exception:
        return False


def _plain_image_side(path: str) -> int:
    from PIL import Image
    try:
        with Image.open(path) as im:
            return max(im.size)
    except Exception:
        return -1


def is_slide_path(path: str | os.PathLike, min_side: int = 0) -> bool:
    """True if PATH should be opened as a slide rather than a DICOM series / one image.

    Slides: OpenSlide vendor files (.svs, .ndpi, .mrxs, ...), TIFF files, DICOM VL Whole
    Slide Microscopy files (or a folder of them), and plain JPEG/PNG/BMP images.
    DICOM files of other SOP classes and anything else are not slides.
    ``min_side`` > 0 (``analyze`` with a tile model): TIFF and plain images count only when
    their largest level is longer than that, so a single tile goes through the image path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from .dicom_backend import find_wsi_dicom_files
        return bool(find_wsi_dicom_files(path))
    if not os.path.isfile(path):
        return False
    head = _head(path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return _is_wsi_dicom_file(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in OPENSLIDE_EXTENSIONS and not (min_side and ext in (".tif", ".tiff")):
        return True
    if head[:4] in _TIFF_MAGIC:
        return _tiff_is_slide_like(path, min_side + 1) if min_side else True
    if ext in IMAGE_EXTENSIONS or ext in (".tif", ".tiff"):
        return _plain_image_side(path) > min_side
    return False


def _candidates(paths: Iterable[str], problems: list[tuple[str, str]]):
    """Yield (kind, path, files) for everything under ``paths`` that may be a slide."""
    stack = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            problems.append((p, "no such file or folder"))
            continue
        stack.append(p)
    for root in stack:
        if os.path.isfile(root):
            yield from _classify_file(root, explicit=True)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            wsm = []
            mrxs_dirs = set()
            for n in sorted(filenames):
                full = os.path.join(dirpath, n)
                if n.lower().endswith(".mrxs"):
                    mrxs_dirs.add(os.path.splitext(n)[0])
                if not os.path.isfile(full):  # a pipe or device blocks open(); the DICOM scan lists it
                    continue
                head = _head(full)
                if len(head) >= 132 and head[128:132] == b"DICM":
                    if _is_wsi_dicom_file(full):
                        wsm.append(full)
                    continue
                yield from _classify_file(full, explicit=False, head=head)
            # MIRAX keeps its data in a same-named folder: not a separate slide
            dirnames[:] = [d for d in dirnames if d not in mrxs_dirs]
            if wsm:
                yield ("dicom", dirpath, wsm)


def _classify_file(path: str, explicit: bool, head: bytes | None = None):
    head = _head(path) if head is None else head
    ext = os.path.splitext(path)[1].lower()
    if len(head) >= 132 and head[128:132] == b"DICM":
        if _is_wsi_dicom_file(path):
            yield ("dicom", path, None)
        return
    if ext in OPENSLIDE_EXTENSIONS:
        yield ("file", path, None)
    elif head[:4] in _TIFF_MAGIC:
        if explicit or _tiff_is_slide_like(path, SCAN_MIN_PLAIN_SIDE):
            yield ("file", path, None)
    elif ext in IMAGE_EXTENSIONS:
        side = _plain_image_side(path)
        if side < 0:
            yield ("bad", path, "unreadable image")
        elif explicit or side >= SCAN_MIN_PLAIN_SIDE:
            yield ("file", path, None)


def scan_slides(paths, progress: Callable[[int, int], None] | None = None
                ) -> tuple[list[SlideSummary], list[tuple[str, str]]]:
    """Find and open the slides under ``paths`` (files or folders, recursive).

    Returns ``(summaries, problems)``; a problem is ``(path, one-line reason)`` for a file that
    looks like a slide but cannot be opened.  DICOM WSI instances are grouped per folder (one
    slide per folder, like wsidicom opens them).  Plain JPEG/PNG and untiled TIFF files are
    listed only when their longest side is at least :data:`SCAN_MIN_PLAIN_SIDE` px (or when
    given explicitly), so folders of small tiles are not listed as slides.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    problems: list[tuple[str, str]] = []
    found = list(_candidates(paths, problems))
    out: list[SlideSummary] = []
    for i, (kind, path, extra) in enumerate(found):
        if progress:
            progress(i, len(found))
        if kind == "bad":
            problems.append((path, extra))
            continue
        try:
            if kind == "dicom" and extra:
                from .dicom_backend import DicomSlide
                slide = DicomSlide(path, extra)
            else:
                slide = open_slide(path)
        except SlideError as e:
            msg = str(e)
            prefix = f"{path}: "
            problems.append((path, msg[len(prefix):] if msg.startswith(prefix) else msg))
            continue
        except Exception as e:  # a backend bug must not stop the scan
            problems.append((path, f"{type(e).__name__}: {e}".splitlines()[0]))
            continue
        try:
            out.append(SlideSummary.from_slide(slide))
        finally:
            slide.close()
    if progress:
        progress(len(found), len(found))
    out.sort(key=lambda s: s.path)
    problems.sort()
    return out, problems


__all__ = ["SlideSummary", "format_info", "info_dict", "is_slide_path", "scan_slides",
           "SCAN_MIN_PLAIN_SIDE", "WSM_SOP_CLASS_UID"]
