"""DICOM VL Whole Slide Microscopy backend (wsidicom).

A slide is the set of WSM instances in one folder (all levels, label, overview), or a
single WSM file.  Levels come from wsidicom's selected pyramid; pixel spacing (mm) from the
Pixel Measures sequence, so MPP is exact when the file carries it.
"""

from __future__ import annotations

import os

import numpy as np

from .reader import (WSM_SOP_CLASS_UID, Slide, SlideReadError, UnsupportedSlideError,
                     plausible_mpp, to_rgb)


def wsi_sop_class(path: str) -> str | None:
    """SOP Class UID of a DICOM file (None if unreadable / not DICOM)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        import pydicom
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return str(ds.get("SOPClassUID", "")) or None
    except Exception:
        return None


def is_wsi_dicom(path: str) -> bool:
    return wsi_sop_class(path) == WSM_SOP_CLASS_UID


def find_wsi_dicom_files(folder: str) -> list[str]:
    """WSM instances directly inside ``folder`` (not recursive), sorted by name."""
    out = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for n in names:
        p = os.path.join(folder, n)
        if os.path.isfile(p) and is_wsi_dicom(p):
            out.append(p)
    return out


class DicomSlide(Slide):
    backend = "wsidicom"

    def __init__(self, path: str, files: list[str] | None = None):
        super().__init__(path)
        self.format = "dicom-wsi"
        if files is None:
            sop = wsi_sop_class(self.path)
            if sop != WSM_SOP_CLASS_UID:
                raise UnsupportedSlideError(
                    f"{self.path}: DICOM file is not a whole-slide image (SOP class {sop or 'unknown'}); "
                    "open it as a DICOM series instead")
            # The other instances of the same slide (levels, label, overview) sit beside it.
            folder = os.path.dirname(os.path.abspath(self.path))
            files = find_wsi_dicom_files(folder) or [self.path]
        from wsidicom import WsiDicom
        try:
            self._wsi = WsiDicom.open(files)
        except Exception as e:
            raise SlideReadError(f"{self.path}: wsidicom could not open it "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        try:
            self._setup()
        except Exception:
            self._wsi.close()
            raise

    def _setup(self) -> None:
        wsi = self._wsi
        self._levels = sorted(wsi.levels, key=lambda L: -L.size.width * L.size.height)
        self._finish_levels([(L.size.width, L.size.height) for L in self._levels])
        try:
            sp = self._levels[0].pixel_spacing  # mm
            mx, my = float(sp.width) * 1000.0, float(sp.height) * 1000.0
            if plausible_mpp(mx) and plausible_mpp(my):
                self.mpp = (mx, my)
            else:
                self.warnings.append(f"ignored implausible pixel spacing {mx:g} µm in the DICOM file")
        except Exception:
            pass
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
        props["dicom.files"] = str(len(wsi.files or []))
        self.properties = props
        self._finish_mpp()

    def _read_level(self, level, x, y, w, h):
        L = self._levels[level]
        try:
            arr = self._wsi.read_region((x, y), L.level, (w, h), as_array=True)
        except Exception as e:
            raise SlideReadError(f"{self.path}: read failed at level {level} "
                                 f"({type(e).__name__}: {e})") from None
        return to_rgb(np.asarray(arr), self.background)

    def _read_associated(self, name):
        if name == "label":
            return self._wsi.read_label(as_array=True)
        if name == "macro":
            return self._wsi.read_overview(as_array=True)
        thumbs = self._wsi.pyramid.thumbnails
        t = thumbs[0] if hasattr(thumbs, "__getitem__") else thumbs.get(0)
        return self._wsi.read_thumbnail((t.size.width, t.size.height), as_array=True)

    def _close(self):
        self._wsi.close()
