"""Turning modality values into display pixels: window/level, VOI LUT, MONOCHROME1.

No Qt here: the viewer calls :func:`render_slice` and wraps the uint8 result in a QImage.
"""

from __future__ import annotations

import numpy as np

from .volume import Volume, WindowPreset

# Built-in CT presets (center, width) in HU, as radiology workstations ship them.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "Brain": (40, 80),
    "Subdural": (75, 215),
    "Stroke": (40, 40),
    "Lung": (-600, 1500),
    "Mediastinum": (50, 350),
    "Abdomen": (40, 400),
    "Bone": (480, 2500),
}


def presets_for(vol: Volume, dicom_window: tuple[list, list, list] | None) -> list[WindowPreset]:
    """DICOM-tag presets first (they are the scanner's choice), then the built-ins."""
    out: list[WindowPreset] = []
    if dicom_window:
        centers, widths, expl = dicom_window
        for i, (c, w) in enumerate(zip(centers, widths)):
            try:
                c, w = float(c), float(w)
            except (TypeError, ValueError):
                continue
            if w <= 0:
                continue
            if any(p.center == c and p.width == w for p in out):
                continue  # the same window repeated (common): list it once
            name = str(expl[i]).strip() if i < len(expl) and str(expl[i]).strip() else f"DICOM {len(out) + 1}"
            out.append(WindowPreset(name, c, w, source="dicom"))
    if vol.modality == "CT" and vol.units == "HU":
        out.extend(WindowPreset(n, c, w) for n, (c, w) in CT_PRESETS.items())
    return out


def auto_window(arr: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> WindowPreset:
    """A window from the data's percentiles (on a subsample, so it is cheap)."""
    flat = np.asarray(arr).ravel()
    if flat.size > 262144:
        flat = flat[:: flat.size // 262144]
    lo, hi = np.percentile(flat, [lo_pct, hi_pct]) if flat.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1
    return WindowPreset("Auto", float((lo + hi) / 2), float(hi - lo), source="auto")


def default_window(vol: Volume) -> WindowPreset:
    for p in vol.window_presets:
        if p.source == "dicom":
            return p
    k = vol.n_slices // 2
    return auto_window(vol.array[k])


def attach_voi_lut(vol: Volume, ds) -> None:
    """Keep the first VOI LUT of the file (PS3.3 C.11.2) for display."""
    try:
        item = ds.VOILUTSequence[0]
        desc = [int(x) for x in item.LUTDescriptor]
        data = item.LUTData
        lut = np.asarray(data if not isinstance(data, (bytes, bytearray)) else
                         np.frombuffer(data, dtype="<u2" if desc[2] > 8 else "u1"), dtype=np.float64)
        first = desc[1]
        if desc[1] >= 32768 and int(ds.get("PixelRepresentation", 0)) == 1:
            first = desc[1] - 65536
        vol.voi_lut = lut
        vol.voi_lut_first = first
        vol.window_presets.insert(0, WindowPreset(
            str(item.get("LUTExplanation", "") or "DICOM VOI LUT"), float("nan"), float("nan"),
            source="voilut"))
    except Exception as e:  # noqa: BLE001 - a broken LUT must not stop viewing
        vol.warnings.append(f"VOI LUT present but unreadable ({e}); using window values")


def window_to_uint8(a: np.ndarray, center: float, width: float, function: str = "LINEAR",
                    out: np.ndarray | None = None) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing to 0..255."""
    a = np.asarray(a, dtype=np.float32)
    if function.upper() == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (a - center) / max(width, 1e-6)))
    elif function.upper() == "LINEAR_EXACT":
        y = (a - (center - width / 2.0)) / max(width, 1e-6) * 255.0
    else:  # LINEAR: the DICOM formula with its 0.5 / 1 offsets
        w = max(width - 1.0, 1e-6)
        y = ((a - (center - 0.5)) / w + 0.5) * 255.0
    y = np.clip(y, 0, 255)
    if out is None:
        return (y + 0.5).astype(np.uint8)
    np.add(y, 0.5, out=y)
    out[...] = y
    return out


def apply_voi_lut(a: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
    idx = np.clip(np.asarray(a).astype(np.int64) - first, 0, len(lut) - 1)
    vals = lut[idx]
    top = max(1.0, float(lut.max()))
    return (vals / top * 255.0 + 0.5).astype(np.uint8)


def render_slice(vol: Volume, k: int, preset: WindowPreset | None = None, invert: bool = False,
                 slice_array: np.ndarray | None = None) -> np.ndarray:
    """uint8 (rows, cols) or (rows, cols, 3) ready to show. MONOCHROME1 is inverted here."""
    a = vol.array[k] if slice_array is None else slice_array
    if a.ndim == 3:  # colour: shown as stored
        img = a if a.dtype == np.uint8 else (a.astype(np.float32) / max(1.0, float(a.max())) * 255).astype(np.uint8)
        return 255 - img if invert else img
    preset = preset or default_window(vol)
    if preset.source == "voilut" and vol.voi_lut is not None:
        img = apply_voi_lut(a, vol.voi_lut, vol.voi_lut_first)
    else:
        img = window_to_uint8(a, preset.center, preset.width, preset.function)
    if (vol.photometric == "MONOCHROME1") != bool(invert):
        img = 255 - img
    return img
