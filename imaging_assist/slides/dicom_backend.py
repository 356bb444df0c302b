"""DICOM VL Whole Slide Microscopy backend (wsidicom).

A slide is the set of WSM instances in one folder (all levels, label, overview), or a
single WSM file.  Levels come from wsidicom's selected pyramid; pixel spacing (mm) from the
Pixel Measures sequence, so MPP is exact when the file carries it.  wsidicom takes only
power-of-two level steps: a slide with another (e.g. a 3x level) opens one wsidicom pyramid per
level size instead.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .base import (WSM_SOP_CLASS_UID, BackendDeclined, Slide, SlideBackend, SlideReadError,
                   UnsupportedSlideError, is_dicom_head, to_rgb)

# pydicom converts a value when it is first read and warns when it is invalid: a damaged slide's
# values are collected into one line of slide.warnings when it opens; a value first read later
# (a tile's frame, a UID) must not print a library warning on the reader's terminal
warnings.filterwarnings("ignore", message=r"Invalid value for VR", category=UserWarning, module=r"pydicom\.valuerep")


def wsi_sop_class(path: str) -> str | None:
    """SOP Class UID of a DICOM file (None if unreadable / not DICOM)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        import pydicom
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged header is reported by the caller, once
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return str(ds.get("SOPClassUID", "")) or None
    except Exception:
        return None


def is_wsi_dicom(path: str) -> bool:
    return wsi_sop_class(path) == WSM_SOP_CLASS_UID


def find_wsi_dicom_files(folder: str) -> list[str]:
    """WSM instances directly inside ``folder`` (not recursive), sorted by name."""
    return find_wsi_dicom_files_and_others(folder)[0]


def find_wsi_dicom_files_and_others(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(WSM instances, [(other file, what it is)]) directly inside ``folder``, sorted by name.

    The other files matter: a damaged level-0 instance is not recognised as WSM, and without
    it the slide would silently open at a lower resolution.  Listed as others: files that look
    like DICOM (preamble, or a .dcm/.dicom/no extension) but are not WSM instances; hidden
    files and other kinds (notes, images) are not listed.
    """
    out: list[str] = []
    others: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out, others
    for n in names:
        p = os.path.join(folder, n)
        if n.startswith(".") or not os.path.isfile(p):
            continue
        sop = wsi_sop_class(p)
        if sop == WSM_SOP_CLASS_UID:
            out.append(p)
        elif sop or os.path.splitext(n)[1].lower() in ("", ".dcm", ".dicom"):
            others.append((p, f"DICOM of another kind (SOP class {sop})" if sop else "not readable DICOM"))
    return out, others


class DicomSlide(Slide):
    backend = "wsidicom"

    def __init__(self, path: str, files: list[str] | None = None):
        """``path``: a WSM file (its folder's other instances are opened with it) or a folder;
        ``files``: the instances, when the caller has already listed them."""
        super().__init__(path)
        self.format = "dicom-wsi"
        if files is None and not os.path.isdir(self.path):
            sop = wsi_sop_class(self.path)
            if sop != WSM_SOP_CLASS_UID:
                raise UnsupportedSlideError(
                    f"{self.path}: DICOM file is not a whole-slide image (SOP class {sop or 'unknown'}); "
                    "open it as a DICOM series instead")
            # The other instances of the same slide (levels, label, overview) sit beside it.
            folder = os.path.dirname(os.path.abspath(self.path))
            files, others = find_wsi_dicom_files_and_others(folder)
            files = files or [self.path]
        elif os.path.isdir(self.path):
            files, others = find_wsi_dicom_files_and_others(self.path)
            if not files:
                raise BackendDeclined(f"{self.path}: folder holds no DICOM whole-slide images "
                                      "(VL Whole Slide Microscopy)")
        else:
            others = []
        if others:
            names = ", ".join(f"{os.path.basename(p)} ({why})" for p, why in others[:3])
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            self.warnings.append(f"left out {len(others)} file(s) beside the slide that are not whole-slide "
                                 f"DICOM: {names}{more}; if one was a level of this slide, it is missing")
        from wsidicom import WsiDicom
        try:
            # pydicom/wsidicom warn about invalid values of a damaged file: collected into one
            # line of slide.warnings instead of printed.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    self._wsi = WsiDicom.open(files)
                    self._level_wsis = [self._wsi]
                except NotImplementedError as e:
                    # wsidicom builds its pyramid from power-of-two levels only ("Levels needs to
                    # be integer"); a valid slide with e.g. a 3x level opens level by level.
                    self._level_wsis = _open_level_by_level(files, e)
                    self._wsi = self._level_wsis[0]
        except Exception as e:
            hint = " (no usable Pixel Spacing?)" if type(e).__name__ == "WsiDicomNoResolutionError" else ""
            raise SlideReadError(f"{self.path}: wsidicom could not open it ({_one_line(e)}){hint}") from None
        try:
            with warnings.catch_warnings(record=True) as more_caught:  # values read while setting up
                warnings.simplefilter("always")
                self._setup()
            caught = list(caught) + list(more_caught)
        except SlideReadError:
            self._close()
            raise
        except Exception as e:
            self._close()
            raise SlideReadError(f"{self.path}: unreadable DICOM WSI ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
        msgs = list(dict.fromkeys(str(w.message).splitlines()[0][:160] for w in caught if str(w.message)))
        if msgs:
            more = f" (+{len(msgs) - 1} more)" if len(msgs) > 1 else ""
            self.warnings.append(f"the DICOM files have invalid values: {msgs[0]}{more}")

    def _setup(self) -> None:
        wsi = self._wsi
        # (WsiDicom, level) pairs, largest first
        levels = sorted(((w, L) for w in self._level_wsis for L in w.levels),
                        key=lambda wl: -wl[1].size.width * wl[1].size.height)
        self._levels = [L for _, L in levels]
        self._level_wsi = [w for w, _ in levels]
        self._finish_levels([(L.size.width, L.size.height) for L in self._levels])
        try:
            sp = self._levels[0].pixel_spacing  # mm
            mx, my = float(sp.width) * 1000.0, float(sp.height) * 1000.0
        except Exception as e:
            self.warnings.append(f"no usable Pixel Spacing in the DICOM file ({type(e).__name__})")
        else:
            self._set_mpp(mx, my, "dicom-pixel-spacing")
        def present(series) -> bool:
            try:
                return series is not None and len(series) > 0
            except TypeError:
                return series is not None

        names = []
        if present(wsi.labels):
            names.append("label")
        if present(wsi.overviews):
            names.append("macro")
        if present(getattr(wsi.pyramid, "thumbnails", None)):
            names.append("thumbnail")
        self._associated_names = tuple(names)
        props = {}
        try:
            md = wsi.metadata
            eq = md.equipment
            for key, val in (("dicom.Manufacturer", eq.manufacturer), ("dicom.ManufacturerModelName", eq.model_name),
                             ("dicom.DeviceSerialNumber", eq.device_serial_number)):
                if val:
                    props[key] = str(val)
            if eq.manufacturer:
                self.vendor = str(eq.manufacturer)
            for op in md.pyramid.optical_paths or ():
                obj = getattr(op, "objective", None)
                if obj is not None and getattr(obj, "objective_power", None):
                    self.objective_power = float(obj.objective_power)
                    break
        except Exception:  # metadata is optional for reading pixels
            pass
        props["dicom.files"] = str(sum(len(w.files or []) for w in self._level_wsis))
        self.properties = props
        self._finish_mpp()

    def _read_level(self, level, x, y, w, h):
        L = self._levels[level]
        try:
            arr = self._level_wsi[level].read_region((x, y), L.level, (w, h), as_array=True)
        except Exception as e:
            raise SlideReadError(f"{self.path}: read failed at level {level} "
                                 f"({type(e).__name__}: {e})") from None
        return to_rgb(np.asarray(arr), self.background)

    def _read_associated(self, name):
        try:
            return self._read_associated_unchecked(name)
        except Exception as e:
            raise SlideReadError(f"{self.path}: {name} image unreadable ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None

    def _read_associated_unchecked(self, name):
        if name == "label":
            return self._wsi.read_label(as_array=True)
        if name == "macro":
            return self._wsi.read_overview(as_array=True)
        thumbs = self._wsi.pyramid.thumbnails
        t = thumbs[0] if hasattr(thumbs, "__getitem__") else thumbs.get(0)
        return self._wsi.read_thumbnail((t.size.width, t.size.height), as_array=True)

    def _close(self):
        for w in self._level_wsis:
            w.close()


def _open_level_by_level(files: list[str], error: Exception) -> list:
    """One WsiDicom per level size (the largest with the label, overview and thumbnail), for a
    pyramid wsidicom refuses as a whole because a level is not a power-of-two step; ``error``
    (wsidicom's, naming the level's spacing) is raised again when the files are not one series."""
    import pydicom
    from wsidicom import WsiDicom

    levels: dict[tuple[int, int], list[str]] = {}
    others, series = [], set()
    try:
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows", "SeriesInstanceUID"])
            image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
            series.add(str(ds.get("SeriesInstanceUID", "")))
            if len(image_type) > 2 and image_type[2] == "VOLUME":
                size = (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
                levels.setdefault(size, []).append(f)
            else:
                others.append(f)
    except Exception:
        raise error from None
    if len(levels) < 2 or len(series) != 1:
        raise error
    groups = [levels[k] for k in sorted(levels, key=lambda k: -k[0] * k[1])]
    groups[0] = groups[0] + others
    opened: list = []
    try:
        for g in groups:
            opened.append(WsiDicom.open(g))
    except Exception:
        for w in opened:
            w.close()
        raise error from None
    return opened


BACKEND = SlideBackend("wsidicom", lambda path, head: os.path.isdir(path) or is_dicom_head(head), DicomSlide,
                       priority=100)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
