"""Preprocessing: the card's transforms and the tensor a model sees.

* A :class:`Volume` array is ``[k, j, i]`` with an LPS affine.  For 3D models it becomes a
  MONAI ``MetaTensor`` ``(C, i, j, k)`` with the RAS affine (what ``LoadImage`` makes of a
  NIfTI), so ``Orientationd``/``Spacingd`` from the card behave exactly as in training.
* 2D models see a slice ``[j, i]`` as ``(C, H, W)`` (``axis_order: row_col``, the
  PIL/torchvision convention) or ``(C, W, H)`` (``col_row``, MONAI ``LoadImage`` on a PNG).
* :func:`card_transforms` is the card's preprocessing as a MONAI ``Compose`` (spatial steps
  first, then intensity); :mod:`.placement` inverts its spatial steps.
* :func:`model_input` is the one function training scripts, the image path and the slide
  path (:class:`imaging_assist.slides.analysis.TileModel`) use, so they cannot drift apart.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..volume import Volume
from .options import InputError


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")


def _m1_range(vol: Volume) -> tuple[float, float] | None:
    """Value range used to invert MONOCHROME1, the same for every slice of a series."""
    if vol.photometric.upper() != "MONOCHROME1":
        return None
    return vol.value_range()


def _to_channels(a: np.ndarray, color: bool, channels: int, photometric: str, invert_m1: bool,
                 warns: list[str], m1_range: tuple[float, float] | None = None) -> np.ndarray:
    """[..., 3] colour or greyscale array -> channel-first (C, ...) float32."""
    a = np.asarray(a)
    if color:
        if channels == 3:
            return np.moveaxis(a.astype(np.float32), -1, 0)
        if channels == 1:
            warns.append("colour image converted to greyscale (BT.601 luma) for a 1-channel model")
            return (a.astype(np.float32) @ LUMA)[None]
        raise InputError(f"the model needs {channels} input channels; a colour image has 3")
    g = a.astype(np.float32)
    if photometric.upper() == "MONOCHROME1" and invert_m1:
        lo, hi = m1_range if m1_range is not None else (float(g.min()), float(g.max()))
        g = hi + lo - g
        warns.append("MONOCHROME1 image inverted (bright = dense) as the model expects")
    if channels == 1:
        return g[None]
    if channels == 3:
        return np.repeat(g[None], 3, 0)
    raise InputError(f"the model needs {channels} input channels (a multi-sequence input); "
                     "a single greyscale series cannot be used")


def _units_for(card, vol: Volume) -> list[int | None]:
    """None = the whole volume (3D models); otherwise slice indices for 2D models."""
    if card.spatial_dims == 3:
        return [None]
    return list(range(vol.n_slices))


def is_dicom(vol: Volume) -> bool:
    """A DICOM image (plain PNG/JPEG/TIFF have neither modality nor headers)."""
    return bool(vol.modality) or bool(vol.headers)


def uses_display_values(card, vol: Volume) -> bool:
    """Card ``input.dicom_values: "display"`` on a greyscale DICOM input."""
    return (getattr(card.input, "dicom_values", "modality") == "display" and is_dicom(vol)
            and not vol.is_color)


def _is_8bit(a: np.ndarray) -> bool:
    lo, hi = float(np.min(a)), float(np.max(a))
    return lo >= 0 and hi <= 255 and (np.issubdtype(a.dtype, np.integer) or np.array_equal(a, np.round(a)))


def _identity_window_on_8bit(preset) -> bool:
    """Does the file's window map 8-bit values 0..255 onto themselves (within half a level)?

    Common for 8-bit CR/DX made from exports (C 127.5 / W 256 gives x + 0.5, C 128 / W 256
    gives x): the stored values are then what the export held, and rounding the half-level
    offset would shift every pixel by one grey level.  Computed with pydicom's
    ``apply_windowing`` (the DICOM formulas, VOILUTFunction included).
    """
    if preset.source != "dicom":
        return False
    from pydicom import Dataset
    from pydicom.pixels import apply_windowing

    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth = float(preset.center), float(preset.width)
    ds.VOILUTFunction = str(preset.function or "LINEAR").upper()
    ds.BitsStored, ds.PixelRepresentation, ds.PhotometricInterpretation = 8, 0, "MONOCHROME2"
    x = np.arange(256, dtype=np.float64)
    try:
        return bool(np.abs(apply_windowing(x, ds) - x).max() <= 0.5 + 1e-9)
    except Exception:  # noqa: BLE001 - an odd window is simply not the identity
        return False


def display_values(vol: Volume, unit: int | None, warns: list[str]) -> np.ndarray:
    """uint8 display values of slice ``unit`` ([j, i]) or of every slice ([k, j, i]), as the
    viewer shows the image and a display export (JPEG/PNG) stores it: the file's VOI LUT, else
    its first window (with VOILUTFunction), then MONOCHROME1 / INVERSE inverted
    (``display.render_slice``).

    8-bit values (0..255) without a window, or with a window that maps them onto themselves,
    are used as stored.  Other values without a window go through the viewer's automatic
    window, with a warning (that is a guess).
    """
    from .. import display

    ks = range(vol.n_slices) if unit is None else [unit]
    a = vol.array if unit is None else vol.array[unit]
    preset = next((p for p in vol.window_presets if p.source in ("voilut", "dicom")), None)
    # the display's inversion: MONOCHROME1 or Presentation LUT Shape INVERSE
    inverted = display.shows_inverted(vol)
    if vol.photometric.upper() == "MONOCHROME1":
        warns.append("MONOCHROME1 image inverted (bright = dense) as the model expects")
    elif inverted:
        warns.append("image inverted for display (Presentation LUT Shape INVERSE) as the model expects")
    if (preset is None or _identity_window_on_8bit(preset)) and _is_8bit(a):
        img = np.asarray(a).astype(np.uint8)
        why = "the file gives no window" if preset is None else "the file's window leaves them unchanged"
        warns.append(f"DICOM values used as 8-bit display values as stored ({why}), as the model "
                     "was trained on exported images")
        return 255 - img if inverted else img
    if preset is None:
        preset = display.default_window(vol)
        warns.append(f"the file gives no display window: the model sees the values through an automatic "
                     f"window (C {preset.center:g} / W {preset.width:g}), as a viewer would show "
                     "them; the model was trained on exported images")
    else:
        what = ("VOI LUT" if preset.source == "voilut" else
                f"window C {preset.center:g} / W {preset.width:g} ({preset.function})")
        warns.append(f"DICOM values mapped to 8-bit display values through the file's {what}, "
                     "as the model was trained on exported images")
    out = np.stack([np.asarray(display.render_slice(vol, k, preset), np.uint8) for k in ks])
    return out if unit is None else out[0]


def meta_input(card, vol: Volume, unit: int | None, warns: list[str], m1=None):
    """Card models: channel-first MetaTensor in the model's axis order (see module doc)."""
    from monai.data import MetaTensor

    ch = card.input.channels
    disp = uses_display_values(card, vol)
    photometric = "MONOCHROME2" if disp else vol.photometric  # the display path inverted M1
    if unit is None:  # 3D
        a = display_values(vol, None, warns) if disp else vol.array
        data = _to_channels(a, vol.is_color, ch, photometric, card.input.invert_monochrome1, warns, m1)
        data = np.ascontiguousarray(np.transpose(data, (0, 3, 2, 1)))  # (C, i, j, k)
        aff = LPS_TO_RAS @ vol.affine
    else:
        sl = display_values(vol, unit, warns) if disp else vol.array[unit]
        data = _to_channels(sl, vol.is_color, ch, photometric, card.input.invert_monochrome1,
                            warns, m1)  # (C, H, W) = (C, j, i)
        sx, sy = float(vol.spacing[0]), float(vol.spacing[1])
        if card.input.axis_order == "col_row":
            data = np.ascontiguousarray(np.transpose(data, (0, 2, 1)))
            aff = np.diag([sx, sy, 1.0, 1.0])
        else:
            aff = np.diag([sy, sx, 1.0, 1.0])
    return MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(aff, dtype=torch.float64),
                      meta={"space": "RAS", "original_channel_dim": 0,
                            "filename_or_obj": vol.source_paths[0] if vol.source_paths else ""})


def model_input(card, vol: Volume, unit: int = 0) -> torch.Tensor:
    """The tensor a 2D card model sees for slice ``unit`` of ``vol``: (C, *card size).

    Training scripts call this on every training image so that a shipped model is trained on
    exactly the preprocessing ``run_model`` applies (one code path, no drift).
    """
    warns: list[str] = []
    pre = card_transforms(card, False, _model_in_shape(card, vol))
    d = pre({"image": meta_input(card, vol, unit, warns, _m1_range(vol))})
    return d["image"].as_tensor()


#: The most voxels a card's resampling (``input.spacing``) may make of one input: the card
#: limit on sizes (``card.MAX_INPUT_VOXELS``) times 4. A card whose spacing is valid but far finer
#: than the image (0.005 mm on a 0.45-mm CT: 46,200^2, 25 GB) is refused before Spacingd runs.
MAX_RESAMPLED_VOXELS = 4 << 24


def _model_in_shape(card, vol: Volume) -> tuple[int, ...]:
    """Spatial shape of the input in the model's axis order (before any resampling); raises
    :class:`InputError` when the card's resampling would make it larger than
    :data:`MAX_RESAMPLED_VOXELS`."""
    k, j, i = vol.array.shape[:3]
    sx, sy, sz = (float(v) for v in vol.spacing)
    if card.spatial_dims == 3:
        shape, sp = (i, j, k), (sx, sy, sz)
    elif card.input.axis_order == "col_row":
        shape, sp = (i, j), (sx, sy)
    else:
        shape, sp = (j, i), (sy, sx)
    if card.input.spacing:
        out = [max(1.0, n * s / float(t)) for n, s, t in zip(shape, sp, card.input.spacing)]
        if math.prod(out) > MAX_RESAMPLED_VOXELS:
            raise InputError(
                f"model {card.id}: resampling this {'x'.join(map(str, shape))} image to the card's spacing "
                f"{'x'.join(f'{float(t):g}' for t in card.input.spacing)} mm would make "
                f"{'x'.join(str(round(v)) for v in out)} voxels (more than {MAX_RESAMPLED_VOXELS:,}): refused")
    return shape


def _region_input(card, region: np.ndarray, unit: int | None):
    from monai.data import MetaTensor

    r = np.asarray(region, np.float32)
    if unit is None:
        r = np.transpose(r, (2, 1, 0))[None]
    else:
        r = r[unit][None]
        if card.input.axis_order == "col_row":
            r = np.transpose(r, (0, 2, 1))
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(r)))


def _resize_mode(card, in_shape) -> str:
    """MONAI's Resize anti-aliasing blurs with zero padding, which darkens the borders, so
    shrinking uses "area" (box averaging, no border bias) and enlarging (bi/tri)linear."""
    lin = "trilinear" if card.spatial_dims == 3 else "bilinear"
    m = card.input.resize_mode
    if m == "auto":
        shrink = in_shape is not None and all(int(o) <= int(i) for o, i in zip(card.input.size, in_shape))
        return "area" if shrink else lin
    return lin if m == "linear" else m


def intensity_steps(card) -> list[tuple[str, dict, bool]]:
    """The card's intensity steps as MONAI transforms: ``(name, kwargs, batchable)``.

    ``name`` is a ``monai.transforms`` array transform (its dictionary form is ``name + "d"``
    with the same arguments).  ``batchable``: the step is the same for every image (element-
    wise, or a fixed per-channel mean/std), so it may run on a whole batch laid out channel
    first; the others (percentiles, z-score, min-max) depend on the image and run per image.
    """
    out = []
    for s in card.input.intensity:
        t = s["type"]
        if t == "window":
            c, w = float(s["center"]), float(s["width"])
            out.append(("ScaleIntensityRange", dict(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0,
                                                    b_max=1.0, clip=True), True))
        elif t == "scale_range":
            out.append(("ScaleIntensityRange", dict(a_min=float(s["a_min"]), a_max=float(s["a_max"]),
                                                    b_min=float(s.get("b_min", 0.0)),
                                                    b_max=float(s.get("b_max", 1.0)),
                                                    clip=bool(s.get("clip", True))), True))
        elif t == "zscore":
            out.append(("NormalizeIntensity", dict(nonzero=bool(s.get("nonzero", False)),
                                                   channel_wise=bool(s.get("channel_wise", True))), False))
        elif t == "minmax":
            out.append(("ScaleIntensity", dict(minv=float(s.get("min", 0.0)), maxv=float(s.get("max", 1.0))),
                        False))
        elif t == "percentile":
            out.append(("ScaleIntensityRangePercentiles", dict(
                lower=float(s.get("lower", 0.5)), upper=float(s.get("upper", 99.5)),
                b_min=float(s.get("b_min", 0.0)), b_max=float(s.get("b_max", 1.0)),
                clip=bool(s.get("clip", True)), channel_wise=bool(s.get("channel_wise", False))), False))
        elif t == "normalize":
            out.append(("NormalizeIntensity", dict(subtrahend=np.asarray(s["mean"], np.float32),
                                                   divisor=np.asarray(s["std"], np.float32),
                                                   channel_wise=True), True))
        else:  # the card validator allows only the types above
            raise InputError(f"model {card.id}: unknown intensity step {t!r}")
    return out


def card_transforms(card, with_region: bool, in_shape=None):
    """Card preprocessing as a MONAI Compose (spatial first, then intensity).

    ``in_shape``: spatial shape of the input in model axis order (picks the resize mode).
    """
    import monai.transforms as mt

    keys = ["image", "region"] if with_region else ["image"]
    ts = []
    if card.spatial_dims == 3 and card.input.orientation:
        ts.append(mt.Orientationd(keys=keys, axcodes=card.input.orientation, labels=None))
    if card.input.spacing:
        ts.append(mt.Spacingd(keys=keys, pixdim=card.input.spacing,
                              mode=["bilinear", "nearest"][:len(keys)], dtype=np.float32))
    if card.input.size:
        if card.input.spacing and card.input.size:
            in_shape = None  # after resampling the shape is not known here: use linear
        ts.append(mt.Resized(keys=keys, spatial_size=card.input.size,
                             mode=[_resize_mode(card, in_shape), "nearest"][:len(keys)]))
    for name, kw, _ in intensity_steps(card):
        ts.append(getattr(mt, name + "d")("image", **kw))
    ts.append(mt.EnsureTyped(keys=keys, dtype=torch.float32))
    return mt.Compose(ts)


def batch_model_input(card, x: torch.Tensor) -> torch.Tensor:
    """``model_input`` for a batch of 2D images already in the model's axis order:
    ``(N, C, H, W)`` float values as stored (e.g. 0..255 RGB) -> ``(N, C, *card size)``, on
    ``x``'s device (slide tiles, :class:`imaging_assist.slides.analysis.TileModel`).

    The same MONAI transforms as :func:`card_transforms` (no spacing step: slide tiles are
    scaled by µm/px before): ``Resize`` with the card's mode on the N*C planes at once
    (interpolation is per plane), the batchable intensity steps on the batch laid out
    ``(C, N, H, W)`` (so per-channel constants meet their channel), the others per image.
    Equal to ``model_input`` per image to float rounding (tests/test_inference_parity.py).
    """
    import monai.transforms as mt

    x = torch.as_tensor(x).float()
    n, c = int(x.shape[0]), int(x.shape[1])
    size = card.input.size
    if size and tuple(x.shape[2:]) != tuple(int(v) for v in size):
        mode = _resize_mode(card, tuple(x.shape[2:]))
        planes = mt.Resize(spatial_size=size, mode=mode)(x.reshape((n * c,) + tuple(x.shape[2:])))
        x = torch.as_tensor(planes).reshape((n, c) + tuple(int(v) for v in size))
    for name, kw, batchable in intensity_steps(card):
        t = getattr(mt, name)(**kw)
        if batchable:
            x = torch.as_tensor(t(x.transpose(0, 1))).transpose(0, 1)
        else:
            x = torch.stack([torch.as_tensor(t(img)) for img in x])
    return x.float().contiguous()
