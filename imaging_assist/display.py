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


VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")  # PS3.3 C.11.2.1.3


def presets_for(vol: Volume, dicom_window: tuple | None) -> list[WindowPreset]:
    """DICOM-tag presets first (they are the scanner's choice), then the built-ins.

    ``dicom_window`` is (centers, widths, explanations[, VOILUTFunction]).  Windows that
    are not finite numbers (or not positive) are left out with a warning naming the
    attribute; an unknown VOI LUT Function is read as LINEAR with a warning."""
    out: list[WindowPreset] = []
    if dicom_window:
        centers, widths, expl = dicom_window[:3]
        function = str(dicom_window[3] if len(dicom_window) > 3 and dicom_window[3] else "LINEAR").strip().upper()
        if function not in VOI_FUNCTIONS:
            vol.warnings.append(f"VOILUTFunction {function!r} is not one of {', '.join(VOI_FUNCTIONS)}: "
                                "windows are applied as LINEAR")
            function = "LINEAR"
        for i, (c, w) in enumerate(zip(centers, widths)):
            try:
                c, w = float(c), float(w)
            except (TypeError, ValueError):
                c, w = float("nan"), float("nan")
            if not (np.isfinite(c) and np.isfinite(w) and w > 0):
                vol.warnings.append(f"WindowCenter/WindowWidth {c:g}/{w:g} of the file is not a usable "
                                    "window: left out")
                continue
            if any(p.center == c and p.width == w for p in out):
                continue  # the same window repeated (common): list it once
            # the file's own words (WindowCenterWidthExplanation), else "File window" (numbered
            # below when the file has several): never a made-up name such as "DICOM 1"
            name = str(expl[i]).strip() if i < len(expl) and str(expl[i]).strip() else ""
            out.append(WindowPreset(name, c, w, source="dicom", function=function))
        unnamed = [p for p in out if not p.name]
        for n, p in enumerate(unnamed):
            p.name = "File window" + (f" {n + 1}" if len(unnamed) > 1 else "")
    if vol.modality == "CT" and vol.units == "HU":
        out.extend(WindowPreset(n, c, w) for n, (c, w) in CT_PRESETS.items())
    return out


def auto_window(arr: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> WindowPreset:
    """A window from the data's percentiles (on a subsample, so it is cheap)."""
    flat = np.asarray(arr).ravel()
    if flat.size > 262144:
        flat = flat[:: flat.size // 262144]
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    lo, hi = np.percentile(flat, [lo_pct, hi_pct]) if flat.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1
    # float modality values (RescaleSlope 0.0001: 0..0.5) need windows narrower than 1, which
    # LINEAR does not allow (its width >= 1 rule is for integer values): LINEAR_EXACT for them
    function = "LINEAR_EXACT" if np.asarray(arr).dtype.kind == "f" else "LINEAR"
    return WindowPreset("Auto", float((lo + hi) / 2), float(hi - lo), source="auto", function=function)


def default_window(vol: Volume) -> WindowPreset:
    """The file's own choice first: its VOI LUT (as pydicom's ``apply_voi_lut`` prefers it),
    else its first window; otherwise a window from the middle slice's values."""
    for p in vol.window_presets:
        if p.source == "voilut" and vol.voi_lut is not None:
            return p
    for p in vol.window_presets:
        if p.source == "dicom":
            return p
    k = vol.n_slices // 2
    return auto_window(vol.array[k])


def big_endian(ds) -> bool:
    """Whether ``ds`` was written in Explicit VR Big Endian: its OW words (LUT Data) are then
    big-endian bytes, which pydicom keeps as they are in the file."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts:
        return ts == "1.2.840.10008.1.2.2"
    return getattr(ds, "original_encoding", (None, None))[1] is False


def lut_entries(item, ds, n: int, bits: int) -> np.ndarray:
    """The ``n`` entries of a VOI or Modality LUT item's LUT Data (PS3.3 C.11.1.1, C.11.2.1.1),
    unpacked by hand: US values, or OW words in the data set's byte order; entries of 8 bits
    or fewer are either packed two to a word (older files) or one to a 16-bit word (their low
    byte).  Never pydicom's ``apply_voi``, which computes ``value - first`` in uint8 for 8-bit
    entries (a table of more than 256 entries became a sawtooth)."""
    raw = item.get("LUTData")
    if raw is None:
        raise ValueError("no LUTData")
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw)
        if bits <= 8 and len(raw) in (n, n + 1):
            return np.frombuffer(raw[:n], np.uint8).astype(np.int64)  # packed two to a word
        if len(raw) < 2 * n:
            raise ValueError(f"LUTData holds {len(raw) // 2} entries, LUTDescriptor says {n}")
        words = np.frombuffer(raw[:2 * n], ">u2" if big_endian(ds) else "<u2").astype(np.int64)
    else:
        words = np.asarray(raw if isinstance(raw, (list, tuple)) else [raw], np.int64).ravel()
        if words.size < n:
            raise ValueError(f"LUTData holds {words.size} entries, LUTDescriptor says {n}")
        words = words[:n] & 0xFFFF
    return words & 0xFF if bits <= 8 else words  # 8-bit entries in 16-bit words: the low byte


def lut_first(first: int, ds) -> int:
    """The LUTDescriptor's first mapped value: SS for signed data, though often written as US
    (-1024 as 64512), so read back as negative where the pixel data are signed."""
    if first >= 32768 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return first - 65536
    return first


def attach_voi_lut(vol: Volume, ds) -> None:
    """Keep the first VOI LUT of the file (PS3.3 C.11.2) for display.

    The entries are unpacked by hand (:func:`lut_entries`: US/OW data, byte order, 8-bit
    entries packed or in 16-bit words); display looks them up (entry ``value - first``,
    clipped to the table) and scales by the LUT's bit depth (2^bits - 1), never by its
    largest entry."""
    try:
        item = ds.VOILUTSequence[0]
        desc = [int(x) for x in item.LUTDescriptor]
        n, bits = (desc[0] or 65536), desc[2]
        first = lut_first(desc[1], ds)
        if not (1 <= bits <= 16):
            raise ValueError(f"LUTDescriptor bits per entry {bits}")
        lut = lut_entries(item, ds, n, bits).astype(np.float64)
        vol.voi_lut = lut
        vol.voi_lut_first = first
        vol.voi_lut_bits = bits
        vol.window_presets.insert(0, WindowPreset(
            str(item.get("LUTExplanation", "") or "DICOM VOI LUT"), float("nan"), float("nan"),
            source="voilut"))
    except Exception as e:  # noqa: BLE001 - a broken LUT must not stop viewing
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        vol.warnings.append(f"VOILUTSequence present but unreadable ({msg}); using window values")


def _window_header(center: float, width: float, function: str):
    """A stand-in header for pydicom's ``apply_windowing`` whose output range is 0..255."""
    from pydicom.dataset import Dataset
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 8, 0  # output range y_min..y_max = 0..255
    f = function.upper() if function and function.upper() in VOI_FUNCTIONS else "LINEAR"
    if f == "LINEAR" and float(width) < 1:
        # pydicom (and PS3.3) require >= 1 for LINEAR; clamping made a narrower window (on float
        # values) a threshold at c - 0.5 (a flat field): such a window is read as LINEAR_EXACT
        f = "LINEAR_EXACT"
    width = max(float(width), 1e-6)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = float(center), width, f
    return ds


def window_to_uint8(a: np.ndarray, center: float, width: float, function: str = "LINEAR",
                    out: np.ndarray | None = None) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing to 0..255, computed by pydicom's ``apply_windowing``."""
    from pydicom.pixels import apply_windowing
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        # in float64 first: a float32 slice cannot hold float64's max / 4 (overflow warning, inf)
        a = np.nan_to_num(a.astype(np.float64), nan=float(center), posinf=np.finfo(np.float64).max / 4,
                          neginf=-np.finfo(np.float64).max / 4)
    # pydicom evaluates the PS3.3 formulas (~6 ms for a 512x512 float slice; integer
    # slices go through a lookup table built with this function in the viewer).
    with np.errstate(over="ignore"):  # SIGMOID far from the centre: exp overflows to the right limit
        y = apply_windowing(a.astype(np.float64, copy=False), _window_header(center, width, function))
    y = np.clip(y, 0, 255)
    np.add(y, 0.5, out=y)
    if out is None:
        return y.astype(np.uint8)
    out[...] = y
    return out


def apply_voi_lut(a: np.ndarray, lut: np.ndarray, first: int, bits: int = 16) -> np.ndarray:
    """VOI LUT lookup (values below the first input map to the first entry, above the last
    to the last, as PS3.3 C.11.2.1.1 says) scaled to 0..255 by the LUT's bit depth."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a, nan=first)
        a = np.clip(np.rint(a), first - 1, first + len(lut))
    idx = np.clip(a.astype(np.int64) - first, 0, len(lut) - 1)
    vals = np.asarray(lut, np.float64)[idx]
    top = float((1 << int(bits)) - 1)
    return np.clip(vals / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def shows_inverted(vol: Volume, invert: bool = False) -> bool:
    """Whether grey values are shown inverted: MONOCHROME1, or Presentation LUT Shape
    INVERSE (for MONOCHROME1 files INVERSE is the same single inversion), flipped by the
    user's ``invert``."""
    inverse = vol.photometric == "MONOCHROME1" or \
        str(getattr(vol, "presentation_lut_shape", "") or "").upper() == "INVERSE"
    return inverse != bool(invert)


def values_to_uint8(vol: Volume, a: np.ndarray, preset: WindowPreset, invert: bool = False) -> np.ndarray:
    """Grey modality values -> display bytes: VOI LUT or window, then the presentation
    inversion.  The one path for the viewer, its lookup tables and key images."""
    if preset.source == "voilut" and vol.voi_lut is not None:
        img = apply_voi_lut(a, vol.voi_lut, vol.voi_lut_first, getattr(vol, "voi_lut_bits", 16))
    else:
        img = window_to_uint8(a, preset.center, preset.width, preset.function)
    if shows_inverted(vol, invert):
        img = 255 - img
    return img


def render_slice(vol: Volume, k: int, preset: WindowPreset | None = None, invert: bool = False,
                 slice_array: np.ndarray | None = None) -> np.ndarray:
    """uint8 (rows, cols) or (rows, cols, 3) ready to show. MONOCHROME1 is inverted here."""
    a = vol.array[k] if slice_array is None else slice_array
    if a.ndim == 3:  # colour: shown as stored
        if a.dtype == np.uint8:
            img = a
        elif a.dtype.kind in "iu":
            # scaled by the bit depth (BitsStored, else the type's), never by the slice's own
            # maximum: that brightened dark images and made each cine frame a different brightness
            bits = int(getattr(vol, "bits_stored", 0) or 0) or 8 * a.dtype.itemsize
            top = float((1 << bits) - 1)
            img = np.clip(a.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        else:
            img = (a.astype(np.float32) / max(1.0, float(a.max())) * 255).astype(np.uint8)
        return 255 - img if invert else img
    preset = preset or default_window(vol)
    return values_to_uint8(vol, a, preset, invert)
