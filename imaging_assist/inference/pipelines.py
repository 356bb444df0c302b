"""Inference pipelines: 2D classification (whole image or per slice), 3D classification,
2D/3D segmentation with MONAI sliding-window inference, MONAI bundles, and explanations.

Geometry, the part that must be right (a heat map on the wrong voxels is worse than a
crash):

* A :class:`Volume` array is ``[k, j, i]`` with an LPS affine.  For 3D models it becomes a
  MONAI ``MetaTensor`` ``(C, i, j, k)`` with the RAS affine (what ``LoadImage`` makes of a
  NIfTI), so ``Orientationd``/``Spacingd`` from the card behave exactly as in training.
* 2D models see a slice ``[j, i]`` as ``(C, H, W)`` (``axis_order: row_col``, the
  PIL/torchvision convention) or ``(C, W, H)`` (``col_row``, MONAI ``LoadImage`` on a PNG;
  always used for bundles).
* Preprocessing is a MONAI ``Compose``; predictions and heat maps go back to the input grid
  with ``Invertd`` on that same Compose (bilinear for probabilities and heat maps), then the
  axes are transposed back to ``[k, j, i]``.  Label maps are made *after* inversion by argmax,
  as in the MONAI bundles.
"""

from __future__ import annotations

import copy
import math
import time
import warnings as _warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..volume import Volume
from .device import FastPath, GpuFallbackWarning, fast_path, free_gpu_memory, is_oom, resolve_device
from .jobs import Progress
from .results import ClassificationResult, HeatMap, SegmentationResult, decide

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
UNEVEN_SPACING_TOL = 0.1  # relative spread of slice gaps above which 3D models refuse
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")


class InputError(UserError):
    """The input does not fit the model (dimensions, units, channels, geometry)."""


@dataclass
class RunOptions:
    device: str | None = None  # None/"auto", "cpu", "cuda", "mps"
    precision: str = "auto"  # "auto", "fp32", "bf16" (see device.fast_path)
    explain: object | None = None  # explain.ExplainConfig, or None for no explanation
    explain_labels: list[str] | None = None  # None: positive/top label(s), or every structure
    region: np.ndarray | None = None  # user region, bool [k, j, i] on the input grid
    overlap: float | None = None  # sliding-window overlap override
    sw_batch_size: int | None = None
    enlarge_roi: bool = True  # use a larger ROI where the card allows it (roi_multiple)
    keep_probabilities: bool = False  # keep segmentation probabilities on the result
    slice_batch: int = 8  # per-slice classification batch
    fallback_to_cpu: bool = True


# =========================================================================== entry point
def run_model(model, volume: Volume, options: RunOptions | None = None, progress=None):
    """Run a loaded model on a volume (or a plain image as a 1-slice volume).

    ``progress`` is a :class:`~.jobs.Progress` or a ``callback(fraction, message)``.
    Raises :class:`~.jobs.Cancelled` when cancelled, ``UserError`` subclasses on bad input.
    On GPU out-of-memory it warns (``GpuFallbackWarning``, a progress message and the
    result's ``warnings``) and runs again on the CPU.
    """
    opts = options or RunOptions()
    prog = progress if isinstance(progress, Progress) else Progress(progress)
    device = resolve_device(opts.device)
    try:
        return _run_on(model, volume, opts, device, prog)
    except Exception as e:  # noqa: BLE001 - only OOM is handled, everything else re-raised
        if device.type == "cpu" or not opts.fallback_to_cpu or not is_oom(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        msg = (f"{device.type.upper()} ran out of memory ({first}); ran on the CPU instead, "
               "which is slower")
        _warnings.warn(msg, GpuFallbackWarning, stacklevel=2)
        prog.note("warning: " + msg)
        free_gpu_memory()
        res = _run_on(model, volume, opts, torch.device("cpu"), prog)
        res.warnings.insert(0, msg)
        return res


def _run_on(model, volume: Volume, opts: RunOptions, device: torch.device, prog: Progress):
    card = model.card
    with model.lock:
        t0 = time.perf_counter()
        model.to(device)
        warns: list[str] = list(volume.warnings)
        _check_input(card, volume, warns, opts)
        if opts.explain is not None:
            from ..explain.methods import canonical_method
            from ..explain.sanity import sanity_warning

            w = sanity_warning(card, canonical_method(opts.explain.method))
            if w:
                warns.append(w)
        fp = fast_path(device, card.task, card.spatial_dims, opts.precision,
                       card_precision=card.inference.get("precision"))
        if not isinstance(model.network, torch.jit.ScriptModule):
            with torch.no_grad():  # weights in the memory format of the inputs (channels_last)
                model.network.to(memory_format=fp.memory_format(card.spatial_dims + 2))
        prog(0.0, f"{card.id}: {device.type}, {fp.precision}")
        if card.is_bundle:
            res = _run_bundle(model, volume, opts, device, fp, prog, warns)
        elif card.task == "classification":
            res = _run_classifier(model, volume, opts, device, fp, prog, warns)
        else:
            res = _run_segmenter(model, volume, opts, device, fp, prog, warns)
        src = volume.source_paths[0] if volume.source_paths else ""
        res.source = src
        res.device = str(device)
        res.precision = fp.precision
        res.shape = tuple(volume.array.shape[:3])
        res.has_geometry = bool(volume.has_geometry)
        # No modality and no geometry: a plain PNG/JPEG/TIFF (read_image), not DICOM.
        res.is_plain_image = not volume.modality and not volume.has_geometry
        res.spacing = tuple(float(s) for s in volume.spacing) if _spacing_known(volume) else None
        res.affine = volume.affine if volume.has_geometry else None
        res.series_uid = volume.series_uid
        res.description = volume.description
        res.warnings = list(dict.fromkeys(warns + res.warnings))
        res.timings["total_s"] = time.perf_counter() - t0
        return res


# =========================================================================== input checks
def _spacing_known(vol: Volume) -> bool:
    if vol.has_geometry:
        return True
    if vol.headers:
        h = vol.headers[0]
        try:
            return "PixelSpacing" in h or "ImagerPixelSpacing" in h
        except TypeError:
            pass
    return bool(vol.modality) and not any("no pixel spacing" in w for w in vol.warnings)


def _check_input(card, vol: Volume, warns: list[str], opts: RunOptions) -> None:
    if vol.array.size == 0:
        raise InputError("the image is empty")
    if vol.loaded is not None and not np.all(vol.loaded):
        raise InputError("the series is still loading: wait until all slices are read")
    u = card.input.units
    if u and (vol.units or "").upper() != u.upper():
        raise InputError(f"model {card.id} expects pixel values in {u} (e.g. a DICOM "
                         f"{'/'.join(card.modality)} series); this input has "
                         f"{('values in ' + vol.units) if vol.units else 'no physical units'}")
    if card.spatial_dims == 3:
        if vol.n_slices < 2:
            raise InputError(f"model {card.id} is 3D and needs a series of several slices "
                             "(this input is a single image)")
        if vol.is_color:
            raise InputError(f"model {card.id} is 3D and needs a greyscale series, not colour")
        if vol.is_cine:
            raise InputError(f"model {card.id} is 3D; this series is a cine loop (frames are time)")
        if not vol.has_geometry:
            raise InputError(f"model {card.id} is 3D and needs a series with 3D geometry "
                             "(ImagePositionPatient/Orientation); this one has none")
        pos = None if vol.slice_positions is None else np.asarray(vol.slice_positions, float)
        if pos is not None and pos.size > 2:
            gaps = np.abs(np.diff(pos))
            med = float(np.median(gaps))
            if med > 0 and float(gaps.max() - gaps.min()) > UNEVEN_SPACING_TOL * med:
                raise InputError(f"model {card.id} is 3D but the slices are unevenly spaced "
                                 f"({gaps.min():.2f}-{gaps.max():.2f} mm): the model would see a "
                                 "distorted volume; resample the series to even spacing first")
    if opts.region is not None:
        r = np.asarray(opts.region)
        if r.shape != tuple(vol.array.shape[:3]):
            raise InputError(f"the selected region has shape {r.shape}, the image "
                             f"{tuple(vol.array.shape[:3])}")
        if not r.any():
            raise InputError("the selected region is empty")
        if card.task != "segmentation":
            raise InputError("a region can only be explained for segmentation models")
    mods = [m.upper() for m in card.modality]
    if vol.modality:
        if vol.modality.upper() not in mods and "OT" not in mods:
            warns.append(f"modality {vol.modality} is not one model {card.id} was made for "
                         f"({', '.join(mods)})")
    else:
        warns.append("plain image without DICOM geometry or modality: the model's modality "
                     f"({', '.join(mods)}) is assumed; sizes are in pixels")


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


def _meta_input(card, vol: Volume, unit: int | None, warns: list[str], m1=None):
    """Card models: channel-first MetaTensor in the model's axis order (see module doc)."""
    from monai.data import MetaTensor

    ch = card.input.channels
    if unit is None:  # 3D
        data = _to_channels(vol.array, vol.is_color, ch, vol.photometric,
                            card.input.invert_monochrome1, warns, m1)
        data = np.ascontiguousarray(np.transpose(data, (0, 3, 2, 1)))  # (C, i, j, k)
        aff = LPS_TO_RAS @ vol.affine
    else:
        sl = vol.array[unit]
        data = _to_channels(sl, vol.is_color, ch, vol.photometric, card.input.invert_monochrome1,
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
    pre = _card_transforms(card, False, _model_in_shape(card, vol))
    d = pre({"image": _meta_input(card, vol, unit, warns, _m1_range(vol))})
    return d["image"].as_tensor()


def _model_in_shape(card, vol: Volume) -> tuple[int, ...]:
    """Spatial shape of the input in the model's axis order (before any resampling)."""
    k, j, i = vol.array.shape[:3]
    if card.spatial_dims == 3:
        return (i, j, k)
    return (i, j) if card.input.axis_order == "col_row" else (j, i)


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


def _from_model_order(card, arr: np.ndarray, unit: int | None) -> np.ndarray:
    """(C, model spatial order) on the input grid -> (C, k, j, i) or (C, j, i)."""
    if unit is None:
        return np.transpose(arr, (0, 3, 2, 1))
    if card.input.axis_order == "col_row":
        return np.transpose(arr, (0, 2, 1))
    return arr


def _resize_mode(card, in_shape) -> str:
    """MONAI's Resize anti-aliasing blurs with zero padding, which darkens the borders, so
    shrinking uses "area" (box averaging, no border bias) and enlarging (bi/tri)linear."""
    lin = "trilinear" if card.spatial_dims == 3 else "bilinear"
    m = card.input.resize_mode
    if m == "auto":
        shrink = in_shape is not None and all(int(o) <= int(i) for o, i in zip(card.input.size, in_shape))
        return "area" if shrink else lin
    return lin if m == "linear" else m


def _card_transforms(card, with_region: bool, in_shape=None):
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
    for s in card.input.intensity:
        t = s["type"]
        if t == "window":
            c, w = float(s["center"]), float(s["width"])
            ts.append(mt.ScaleIntensityRanged("image", a_min=c - w / 2, a_max=c + w / 2,
                                              b_min=0.0, b_max=1.0, clip=True))
        elif t == "scale_range":
            ts.append(mt.ScaleIntensityRanged("image", a_min=float(s["a_min"]), a_max=float(s["a_max"]),
                                              b_min=float(s.get("b_min", 0.0)),
                                              b_max=float(s.get("b_max", 1.0)),
                                              clip=bool(s.get("clip", True))))
        elif t == "zscore":
            ts.append(mt.NormalizeIntensityd("image", nonzero=bool(s.get("nonzero", False)),
                                             channel_wise=bool(s.get("channel_wise", True))))
        elif t == "minmax":
            ts.append(mt.ScaleIntensityd("image", minv=float(s.get("min", 0.0)),
                                         maxv=float(s.get("max", 1.0))))
        elif t == "percentile":
            ts.append(mt.ScaleIntensityRangePercentilesd(
                "image", lower=float(s.get("lower", 0.5)), upper=float(s.get("upper", 99.5)),
                b_min=float(s.get("b_min", 0.0)), b_max=float(s.get("b_max", 1.0)),
                clip=bool(s.get("clip", True)), channel_wise=bool(s.get("channel_wise", False))))
        elif t == "normalize":
            ts.append(mt.NormalizeIntensityd("image", subtrahend=np.asarray(s["mean"], np.float32),
                                             divisor=np.asarray(s["std"], np.float32),
                                             channel_wise=True))
    ts.append(mt.EnsureTyped(keys=keys, dtype=torch.float32))
    return mt.Compose(ts)


def _invert(pre, d: dict, arr: torch.Tensor, key: str = "image", nearest: bool = False) -> np.ndarray:
    """Map ``arr`` (C, *model spatial) from model space back to the input grid."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    if not _has_spatial_ops(d[key]):
        return arr.detach().cpu().numpy()
    orig = d[key]
    if not nearest:
        # Going back, an "area" shrink is undone with linear interpolation (MONAI would reuse
        # "area", i.e. blocky nearest-like upsampling of probabilities and heat maps).
        ops = copy.deepcopy(list(orig.applied_operations))
        lin = "trilinear" if arr.ndim - 1 == 3 else "bilinear"
        for op in ops:
            info = op.get("extra_info") or {}
            if op.get("class") == "Resize" and info.get("mode") == "area":
                info["mode"] = lin
                info["align_corners"] = False
        orig = MetaTensor(torch.empty(0), meta=dict(orig.meta), applied_operations=ops)
    # Invertd takes the transform trace from d[key]; the output must be a MetaTensor for it.
    dd = {key: orig, "_out": MetaTensor(arr.detach().cpu().float())}
    inv = Invertd(keys="_out", transform=pre, orig_keys=key, nearest_interp=nearest)(dd)["_out"]
    return inv.detach().cpu().numpy() if isinstance(inv, torch.Tensor) else np.asarray(inv)


def _has_spatial_ops(x) -> bool:
    return bool(getattr(x, "applied_operations", None))


# =========================================================================== forward helpers
def _net_out(out):
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, dict):
        raise InputError("the network returns a dict; only tensor outputs are supported")
    return out


def _forward(model, x: torch.Tensor, device: torch.device, fp: FastPath) -> torch.Tensor:
    """One network call in inference mode (all prediction calls go through here)."""
    with torch.inference_mode(), fp.autocast(device):
        xin = x.to(device).contiguous(memory_format=fp.memory_format(x.ndim))
        return _net_out(model.network(xin)).float()


def _activation(logits: torch.Tensor, act: str) -> torch.Tensor:
    return torch.softmax(logits, 1) if act == "softmax" else torch.sigmoid(logits)


def count_windows(spatial: tuple, roi: list[int], overlap) -> int:
    """Number of sliding windows MONAI will run (for progress)."""
    try:
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        size = [max(s, r) for s, r in zip(spatial, roi)]
        ov = overlap if isinstance(overlap, (list, tuple)) else [overlap] * len(roi)
        scan = _get_scan_interval(size, roi, len(roi), ov)
        return max(1, len(dense_patch_slices(size, roi, scan)))
    except Exception:  # noqa: BLE001 - private helpers may move; progress is then approximate
        ov = overlap if isinstance(overlap, (list, tuple)) else [overlap] * len(roi)
        n = 1
        for s, r, o in zip(spatial, roi, ov):
            step = max(1, int(r * (1 - o)))
            n *= 1 + max(0, math.ceil((max(s, r) - r) / step))
        return n


def _sliding(model, x: torch.Tensor, roi, sw_batch: int, overlap, mode: str, device, fp: FastPath,
             prog: Progress) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    total = math.ceil(count_windows(tuple(x.shape[2:]), list(roi), overlap) / sw_batch)
    done = [0]

    def predictor(w):
        prog.check()
        out = _forward(model, w, device, fp)
        done[0] += 1
        prog(min(1.0, done[0] / total), f"window {done[0]}/{total}")
        return out

    with torch.inference_mode():
        return sliding_window_inference(x, list(roi), sw_batch, predictor, overlap=overlap,
                                        mode=mode, sw_device=device, device="cpu")


def _default_max_roi_voxels(sd: int) -> int:
    if sd == 2:
        return 4096 * 4096
    try:
        import psutil

        avail = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001
        avail = 0
    return 256 * 256 * 128 if avail >= 8 * 2**30 else 128 * 128 * 128


def sliding_params(card, spatial: tuple, device: torch.device, opts: RunOptions):
    """(roi, overlap, mode, sw_batch_size, base_roi, base_overlap) for a segmentation input.

    When the card declares the network fully convolutional (``inference.roi_multiple``),
    the ROI is enlarged up to ``inference.max_roi_voxels`` (balanced tiles, sizes multiple
    of roi_multiple) while keeping the card's overlap *in voxels*: fewer, larger windows
    give the same network output away from window borders and are much faster on a CPU.
    """
    inf = card.inference
    mult = inf.get("roi_multiple")
    base = card.input.roi_size or card.input.size
    if base is None:
        if not mult:
            raise InputError(f"model {card.id}: the card gives neither input.roi_size nor "
                             "inference.roi_multiple, so the sliding-window size is unknown")
        base = [int(math.ceil(s / mult) * mult) for s in spatial]
    base = [int(b) for b in base]
    ov = float(opts.overlap if opts.overlap is not None else inf.get("overlap", 0.25))
    mode = inf.get("blend", "gaussian")
    roi = list(base)
    if mult and opts.enlarge_roi:
        budget = int(inf.get("max_roi_voxels") or _default_max_roi_voxels(len(spatial)))
        margin = [b * ov for b in base]
        full = [int(math.ceil(s / mult) * mult) for s in spatial]
        n = [1] * len(spatial)

        def sizes():
            return [max(b, int(math.ceil((f + (k - 1) * m) / k / mult) * mult))
                    for b, f, k, m in zip(base, full, n, margin)]

        cand = sizes()
        while math.prod(cand) > budget:
            shrinkable = [a for a in range(len(cand)) if cand[a] > base[a]]
            if not shrinkable:
                break
            a = max(shrinkable, key=lambda i: cand[i])
            n[a] += 1
            cand = sizes()
        if math.prod(cand) <= budget and math.prod(cand) >= math.prod(base):
            roi = cand
    overlap = [min(ov, (b * ov) / r) for b, r in zip(base, roi)] if roi != base else ov
    sw = int(opts.sw_batch_size or inf.get("sw_batch_size") or (4 if device.type == "cuda" else 1))
    return roi, overlap, mode, sw, base, ov


# =========================================================================== classification
def _gradcam_layer(model, cfg, warns: list[str]):
    from ..explain.methods import ExplainError
    from ..models.architectures import get_layer, last_conv_layer

    name = cfg.layer or model.card.gradcam_layer
    if not model.supports_hooks:
        raise ExplainError(f"Grad-CAM needs layer hooks, which TorchScript model {model.card.id} "
                           "does not support; use ig, saliency or occlusion")
    if not name:
        name = last_conv_layer(model.network)
        if name is None:
            raise ExplainError(f"model {model.card.id} has no convolution layer for Grad-CAM")
        warns.append(f"the model card names no gradcam_layer: Grad-CAM uses the last convolution "
                     f"layer '{name}'")
    return name, get_layer(model.network, name)


def _explain_labels(card, requested, default: list[str]) -> list[tuple[int, str]]:
    from ..explain.methods import ExplainError

    names = requested or default
    out = []
    for n in names:
        if n not in card.labels:
            raise ExplainError(f"unknown label {n!r} for model {card.id} (labels: "
                               f"{', '.join(card.labels)})")
        out.append((card.labels.index(n), n))
    return out


def _run_classifier(model, vol, opts, device, fp, prog, warns) -> ClassificationResult:
    card = model.card
    labels = card.labels
    units = _units_for(card, vol)
    m1 = _m1_range(vol)
    pre = _card_transforms(card, False, _model_in_shape(card, vol))
    timings: dict = {}
    t = time.perf_counter()
    dicts, xs = [], []
    for u in units:
        d = pre({"image": _meta_input(card, vol, u, warns, m1)})
        dicts.append(d)
        xs.append(d["image"].as_tensor())
    timings["preprocess_s"] = time.perf_counter() - t
    inf_prog = prog.stage(0.05, 0.6 if opts.explain else 0.95)
    t = time.perf_counter()
    probs = []
    bs = max(1, int(opts.slice_batch))
    for s in range(0, len(xs), bs):
        x = torch.stack(xs[s:s + bs])
        logits = _forward(model, x, device, fp).cpu()
        if logits.ndim != 2:
            raise InputError(f"model {card.id} is a classifier but its output has shape "
                             f"{tuple(logits.shape)}")
        if logits.shape[1] != len(labels):
            raise InputError(f"model {card.id} outputs {logits.shape[1]} values but its card "
                             f"lists {len(labels)} labels")
        probs.append(_activation(logits, card.activation))
        inf_prog((s + len(x)) / len(xs), f"image {min(s + bs, len(xs))}/{len(xs)}")
    p = torch.cat(probs).numpy()  # (n_units, n_labels)
    timings["infer_s"] = time.perf_counter() - t
    per_slice = None
    aggregation = "whole_image"
    if len(units) > 1:
        agg = card.inference.get("slice_aggregation", "max")
        pv = p.mean(0) if agg == "mean" else p.max(0)
        aggregation = f"{'mean' if agg == 'mean' else 'max'}_over_slices"
        per_slice = [{lab: round(float(v), 6) for lab, v in zip(labels, row)} for row in p]
    else:
        pv = p[0]
    probabilities = {lab: float(v) for lab, v in zip(labels, pv)}
    decisions = decide(probabilities, card.thresholds)
    res = ClassificationResult(card.id, card.version, card.task, list(labels),
                               probabilities=probabilities, decisions=decisions,
                               per_slice=per_slice, aggregation=aggregation, timings=timings)
    if opts.explain is not None:
        positive = [lab for lab, dd in decisions.items() if dd and dd["positive"]]
        default = positive or [max(probabilities, key=probabilities.get)]
        _explain_classifier(model, vol, opts, device, pre, dicts, xs, p, res,
                            _explain_labels(card, opts.explain_labels, default), prog.stage(0.6, 1.0),
                            warns)
    return res


def _explain_classifier(model, vol, opts, device, pre, dicts, xs, p, res, targets, prog, warns):
    from ..explain.faithfulness import deletion_auc
    from ..explain.methods import attribute, canonical_method, make_baseline

    cfg = opts.explain
    card = model.card
    method = canonical_method(cfg.method)
    layer_name, layer = (None, None)
    if method == "gradcam":
        layer_name, layer = _gradcam_layer(model, cfg, warns)
    bs = max(1, int(opts.slice_batch))
    n_units = len(xs)
    grid_shape = tuple(vol.array.shape[:3])
    for ti, (idx, lab) in enumerate(targets):
        t = time.perf_counter()
        heat = np.full(grid_shape, np.nan, np.float32)
        ms_heats = []
        for s in range(0, n_units, bs):
            x = torch.stack(xs[s:s + bs]).to(device)
            a = attribute(model.network, x, cfg, target=idx, layer=layer)
            for b in range(a.shape[0]):
                u = s + b
                ms_heats.append(a[b])
                back = _invert(pre, dicts[u], a[b][None])
                g = _from_model_order(card, back, None if card.spatial_dims == 3 else u)[0]
                if card.spatial_dims == 3:
                    heat[:] = g
                else:
                    heat[u] = g
            prog((ti + (s + len(x)) / n_units) / len(targets), f"explaining {lab}")
        elapsed = time.perf_counter() - t
        hm = HeatMap(lab, method, heat, "label", time_s=elapsed,
                     params={**cfg.params(), **({"layer": layer_name} if layer_name else {})})
        if cfg.faithfulness:
            k = int(np.argmax(p[:, idx]))  # the most positive slice (or the only image)
            tf = time.perf_counter()
            x = xs[k][None].to(device)

            def score(xb, _i=idx):
                return _activation(_net_out(model.network(xb.to(device))).float(), card.activation)[:, _i]

            f = deletion_auc(score, x, ms_heats[k].to(device), make_baseline(x, cfg.deletion_baseline),
                             steps=cfg.faithfulness_steps)
            f["where"] = "whole image" if n_units == 1 else f"slice {k} (highest probability)"
            f["time_s"] = round(time.perf_counter() - tf, 4)
            hm.faithfulness = f
        res.heatmaps.append(hm)
    res.timings["explain_s"] = sum(h.time_s for h in res.heatmaps)


# =========================================================================== segmentation
def _labels_from_probs(card, probs: np.ndarray) -> np.ndarray:
    """(C, ...) probabilities -> label indices (argmax; sigmoid: thresholds, then argmax)."""
    if card.activation == "softmax":
        return np.argmax(probs, 0)
    thr = np.array([card.thresholds[lab].threshold if lab in card.thresholds else 0.5
                    for lab in card.labels[1:]], np.float32)
    above = probs >= thr.reshape((-1,) + (1,) * (probs.ndim - 1))
    lab = np.argmax(np.where(above, probs, -1.0), 0) + 1
    return np.where(above.any(0), lab, 0)


def _expected_channels(card) -> int:
    return len(card.labels) if card.activation == "softmax" else len(card.labels) - 1


def _channel_of(card, label_index: int) -> int:
    return label_index if card.activation == "softmax" else label_index - 1


def _measure(res: SegmentationResult, vol: Volume, label_map: np.ndarray, labels: list[str],
             warns: list[str]) -> None:
    counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(labels))
    res.voxel_counts = {lab: int(counts[i]) for i, lab in enumerate(labels) if i > 0}
    if vol.n_slices > 1 and vol.has_geometry:
        vox_ml = abs(float(np.linalg.det(vol.affine[:3, :3]))) / 1000.0
        res.volume_ml = {lab: round(c * vox_ml, 4) for lab, c in res.voxel_counts.items()}
    elif vol.n_slices == 1 and _spacing_known(vol):
        d = np.asarray(vol.direction, float)
        px = abs(float(np.linalg.norm(np.cross(d[:, 0] * vol.spacing[0], d[:, 1] * vol.spacing[1]))))
        res.area_mm2 = {lab: round(c * px, 4) for lab, c in res.voxel_counts.items()}
    else:
        res.area_px = dict(res.voxel_counts)
        if vol.n_slices > 1:
            warns.append("no 3D geometry: sizes are pixel counts summed over slices, not mL")


def _run_segmenter(model, vol, opts, device, fp, prog, warns) -> SegmentationResult:
    card = model.card
    units = _units_for(card, vol)
    m1 = _m1_range(vol)
    with_region = opts.region is not None
    pre = _card_transforms(card, with_region, _model_in_shape(card, vol))
    grid = tuple(vol.array.shape[:3])
    label_map = np.zeros(grid, np.uint8 if len(card.labels) <= 256 else np.uint16)
    keep = np.zeros((_expected_channels(card),) + grid, np.float32) if opts.keep_probabilities else None
    timings = {"preprocess_s": 0.0, "infer_s": 0.0, "postprocess_s": 0.0}
    res = SegmentationResult(card.id, card.version, card.task, list(card.labels), timings=timings)
    explain = opts.explain is not None
    span = 0.6 if explain else 1.0
    sw_info = None
    kept_units = []  # (unit, d, x, model-space labels) for the explanation pass
    # ---- pass 1: inference on every unit (the volume, or each slice for 2D models)
    for n, u in enumerate(units):
        uprog = prog.stage(span * n / len(units), span * (n + 1) / len(units))
        t = time.perf_counter()
        data = {"image": _meta_input(card, vol, u, warns, m1)}
        if with_region:
            data["region"] = _region_input(card, opts.region, u)
        d = pre(data)
        x = d["image"].as_tensor()[None]
        timings["preprocess_s"] += time.perf_counter() - t
        t = time.perf_counter()
        roi, overlap, mode, sw, base_roi, base_ov = sliding_params(card, tuple(x.shape[2:]), device, opts)
        sw_info = {"roi": roi, "overlap": overlap, "blend": mode, "sw_batch_size": sw}
        logits = _sliding(model, x, roi, sw, overlap, mode, device, fp, uprog)
        if logits.shape[1] != _expected_channels(card):
            raise InputError(f"model {card.id} outputs {logits.shape[1]} channels but its card "
                             f"lists {len(card.labels)} labels ({card.activation}: expected "
                             f"{_expected_channels(card)})")
        probs_ms = _activation(logits, card.activation)[0]
        del logits
        timings["infer_s"] += time.perf_counter() - t
        t = time.perf_counter()
        probs = _from_model_order(card, _invert(pre, d, probs_ms), u)
        lab = _labels_from_probs(card, probs)
        target = label_map if u is None else label_map[u]
        target[...] = lab
        if keep is not None:
            if u is None:
                keep[:] = probs
            else:
                keep[:, u] = probs
        if explain:
            lab_ms = _labels_from_probs(card, probs_ms.numpy()).astype(np.uint16)
            kept_units.append((u, d, x, lab_ms, base_roi, base_ov, mode))
        del probs, probs_ms
        timings["postprocess_s"] += time.perf_counter() - t
    res.label_map = label_map
    res.probabilities = keep
    res.sliding_window = sw_info
    _measure(res, vol, label_map, card.labels, warns)
    if not explain:
        return res
    # ---- pass 2: explanations (default: every structure that was found)
    from ..explain.methods import canonical_method

    method = canonical_method(opts.explain.method)
    present = [card.labels[i] for i in range(1, len(card.labels)) if res.voxel_counts.get(card.labels[i])]
    default = present or [card.labels[i] for i in range(1, len(card.labels))]
    targets = _explain_labels(card, opts.explain_labels, default)
    eprog = prog.stage(span, 1.0)
    total = len(targets) * len(kept_units)
    step = 0
    for idx, name in targets:
        te = time.perf_counter()
        heat = np.zeros(grid, np.float32)
        regions = []
        for u, d, x, lab_ms, base_roi, base_ov, mode in kept_units:
            if with_region:
                r = (d["region"].as_tensor()[0] > 0.5).float()
            else:
                r = torch.from_numpy((lab_ms == idx).astype(np.float32))
            regions.append(r)
        sizes = [float(r.sum()) for r in regions]
        best = int(np.argmax(sizes)) if sizes else -1
        faith = None
        for n, ((u, d, x, lab_ms, base_roi, base_ov, mode), r) in enumerate(zip(kept_units, regions)):
            sub = eprog.stage(step / total, (step + 1) / total)
            step += 1
            if sizes[n] == 0:
                continue
            h_ms, f = _explain_seg_unit(model, x, r, _channel_of(card, idx), opts, device, base_roi,
                                        base_ov, mode, warns, sub, with_faithfulness=(n == best))
            h = _from_model_order(card, _invert(pre, d, h_ms[None]), u)[0]
            if u is None:
                heat[:] = h
            else:
                heat[u] = h
            if f is not None:
                f["where"] = ("ROI window centred on the region" if u is None
                              else f"slice {u} (largest region), ROI window centred on the region")
                faith = f
        hm = HeatMap(name, method, heat, "user_region" if with_region else "predicted_region",
                     faithfulness=faith, time_s=time.perf_counter() - te, params=opts.explain.params())
        if not any(sizes):
            hm.warnings.append(f"no {name} region was found, so nothing was explained")
        res.heatmaps.append(hm)
    res.timings["explain_s"] = sum(h.time_s for h in res.heatmaps)
    return res


def _explain_seg_unit(model, x, region_ms, channel, opts, device, roi, overlap, mode, warns, prog,
                      with_faithfulness: bool = True):
    """Seg-Grad-CAM (or another method) of sum(logits[channel] * region), computed per
    sliding-window patch at the card's ROI and stitched with the same Gaussian blending."""
    from monai.inferers import sliding_window_inference

    from ..explain.faithfulness import deletion_auc
    from ..explain.methods import RegionScore, attribute, canonical_method, make_baseline

    cfg = opts.explain
    method = canonical_method(cfg.method)
    layer = None
    if method == "gradcam":
        _, layer = _gradcam_layer(model, cfg, warns)
    net = model.network
    roi = [int(r) for r in roi]
    inp = torch.cat([x, region_ms[None, None].to(x.dtype)], 1)
    total = math.ceil(count_windows(tuple(x.shape[2:]), roi, overlap))
    done = [0]

    def predictor(w):
        prog.check()
        img, reg = w[:, :-1], w[:, -1:]
        out = torch.zeros((w.shape[0], 1) + tuple(w.shape[2:]), dtype=torch.float32)
        for b in range(w.shape[0]):
            if float(reg[b].sum()) <= 0:
                continue
            fwd = RegionScore(net, channel, reg[b:b + 1, 0].to(device))
            out[b, 0] = attribute(fwd, img[b:b + 1].to(device), cfg, target=None, layer=layer)[0]
        done[0] += w.shape[0]
        prog(min(1.0, done[0] / total), f"explaining window {done[0]}/{total}")
        return out.to(w.device)

    heat = sliding_window_inference(inp, roi, 1, predictor, overlap=overlap, mode=mode,
                                    sw_device=device, device="cpu")[0, 0].detach()
    f = None
    if cfg.faithfulness and with_faithfulness:
        tf = time.perf_counter()
        xc, hc, rc = _window_on_region(x[0], heat, region_ms, roi)
        xc = xc[None].to(device)
        rcd = rc.to(device)
        nvox = float(rcd.sum())

        def score(xb):
            pr = torch.softmax(_net_out(net(xb)).float(), 1) if model.card.activation == "softmax" \
                else torch.sigmoid(_net_out(net(xb)).float())
            return (pr[:, channel] * rcd).flatten(1).sum(1) / max(nvox, 1.0)

        f = deletion_auc(score, xc, hc.to(device), make_baseline(xc, cfg.deletion_baseline),
                         steps=cfg.faithfulness_steps)
        f["region_voxels"] = int(nvox)
        f["score"] = "mean probability of the label over the region"
        f["time_s"] = round(time.perf_counter() - tf, 4)
    return heat, f


def _window_on_region(x: torch.Tensor, heat: torch.Tensor, region: torch.Tensor, roi):
    """Crop (C,*S) input, heat and region to an ROI window centred on the region (padded
    with the input minimum / zeros when the image is smaller than the ROI)."""
    import torch.nn.functional as F

    spatial = x.shape[1:]
    nz = torch.nonzero(region > 0.5)
    centre = nz.float().mean(0).round().long().tolist() if len(nz) else [s // 2 for s in spatial]
    sl = []
    for c, r, s in zip(centre, roi, spatial):
        r = min(int(r), int(s))
        lo = max(0, min(int(c) - r // 2, int(s) - r))
        sl.append(slice(lo, lo + r))
    xc = x[(slice(None), *sl)]
    hc = heat[tuple(sl)]
    rc = region[tuple(sl)]
    pads = []
    for r, s in zip(reversed(list(roi)), reversed(list(xc.shape[1:]))):
        pads += [0, max(0, int(r) - int(s))]
    if any(pads):
        mins = xc.amin(dim=tuple(range(1, xc.ndim)), keepdim=True)
        xc = F.pad(xc - mins, pads) + mins
        hc = F.pad(hc, pads, value=float("nan"))
        rc = F.pad(rc, pads)
    return xc, hc, rc


# =========================================================================== MONAI bundles
def _bundle_input(card, vol: Volume, unit: int | None, warns: list[str], m1=None):
    """What MONAI ``LoadImage`` would return for the file: (i, j, k) with a RAS affine for
    volumes (NibabelReader/ITKReader), (W, H[, 3]) with an identity affine for 2D images
    (PILReader, ``reverse_indexing``)."""
    from monai.data import MetaTensor

    ch = card.input.channels
    src = vol.source_paths[0] if vol.source_paths else ""
    if unit is None:
        if ch != 1:
            raise InputError(f"bundle {card.id} needs {ch} input channels; a single series has 1")
        data = np.ascontiguousarray(np.transpose(vol.array.astype(np.float32), (2, 1, 0)))
        aff = LPS_TO_RAS @ vol.affine
        return MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(aff),
                          meta={"original_channel_dim": float("nan"), "space": "RAS",
                                "spatial_shape": np.asarray(data.shape), "original_affine": aff,
                                "filename_or_obj": src})
    a = _to_channels(vol.array[unit], vol.is_color, ch, vol.photometric,
                     card.input.invert_monochrome1, warns, m1)  # (C, H, W)
    if ch == 1:
        data = np.ascontiguousarray(a[0].T)  # (W, H)
        cdim = float("nan")
    else:
        data = np.ascontiguousarray(np.transpose(a, (2, 1, 0)))  # (W, H, C)
        cdim = -1
    return MetaTensor(torch.from_numpy(data), affine=torch.eye(4, dtype=torch.float64),
                      meta={"original_channel_dim": cdim, "spatial_shape": np.asarray(data.shape[:2]),
                            "filename_or_obj": src})


def _bundle_back(card, arr: np.ndarray, unit: int | None) -> np.ndarray:
    """(C, LoadImage order) -> (C, k, j, i) or (C, j, i)."""
    if unit is None:
        return np.transpose(arr, (0, 3, 2, 1))
    return np.transpose(arr, (0, 2, 1))


class _Watched(torch.nn.Module):
    """Wraps a bundle network so that every call checks for cancel and reports progress."""

    def __init__(self, net, device, fp, prog, total):
        super().__init__()
        self.net, self.device, self.fp, self.prog, self.total = net, device, fp, prog, max(1, total)
        self.calls = 0

    def forward(self, x, *args, **kwargs):
        self.prog.check()
        with self.fp.autocast(self.device):
            out = _net_out(self.net(x.to(self.device), *args, **kwargs)).float()
        self.calls += 1
        self.prog(min(1.0, self.calls / self.total), f"window {self.calls}/{self.total}")
        return out


def _post_activation(post) -> str | None:
    """"sigmoid"/"softmax" when the bundle's postprocessing applies one, else None."""
    if post is None:
        return None
    for t in post.transforms:
        if type(t).__name__ in ("Activations", "Activationsd"):
            sig, soft = getattr(t, "sigmoid", False), getattr(t, "softmax", False)
            sig = sig[0] if isinstance(sig, tuple) else sig
            soft = soft[0] if isinstance(soft, tuple) else soft
            if sig:
                return "sigmoid"
            if soft:
                return "softmax"
    return None


def _run_bundle(model, vol, opts, device, fp, prog, warns):
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Invertd

    card = model.card
    rt = model.bundle
    units = _units_for(card, vol)
    m1 = _m1_range(vol)
    grid = tuple(vol.array.shape[:3])
    key = rt.image_key
    timings = {"preprocess_s": 0.0, "infer_s": 0.0, "postprocess_s": 0.0}
    seg = card.task == "segmentation"
    if opts.region is not None:
        raise InputError("a user-selected region cannot be explained for MONAI bundles yet; "
                         "explain the predicted region instead")
    label_map = np.zeros(grid, np.uint16) if seg else None
    cls_probs = []
    heats: dict[str, np.ndarray] = {}
    faith: dict[str, dict] = {}
    heat_time: dict[str, float] = {}
    span = 0.6 if opts.explain else 0.95
    targets = None
    for n, u in enumerate(units):
        uprog = prog.stage(n / len(units), (n + 1) / len(units))
        t = time.perf_counter()
        d = rt.preprocessing({key: _bundle_input(card, vol, u, warns, m1)})
        x = d[key]
        orig_spatial = tuple(x.meta.get("spatial_shape", ())) if hasattr(x, "meta") else ()
        xin = x.as_tensor()[None]
        timings["preprocess_s"] += time.perf_counter() - t
        t = time.perf_counter()
        inferer = rt.inferer
        total = 1
        if isinstance(inferer, SlidingWindowInferer):
            total = math.ceil(count_windows(tuple(xin.shape[2:]), list(inferer.roi_size),
                                            inferer.overlap) / inferer.sw_batch_size)
        watched = _Watched(model.network, device, fp, uprog.stage(0, span), total)
        with torch.inference_mode():
            pred = inferer(xin.to(device) if not isinstance(inferer, SlidingWindowInferer) else xin,
                           watched)
        pred = _net_out(pred).float().cpu()
        timings["infer_s"] += time.perf_counter() - t
        t = time.perf_counter()
        # As in MONAI's evaluator the prediction is a MetaTensor carrying the input's meta,
        # so the bundle's own Invertd can map it back.
        d[rt.pred_key] = MetaTensor(pred[0], meta=dict(x.meta)) if hasattr(x, "meta") else pred[0]
        logits_ms = pred[0]
        if rt.postprocessing is not None:
            d = rt.postprocessing(d)
        out = d[rt.pred_key]
        out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        if seg:
            if out.ndim != xin.ndim - 1:
                raise InputError(f"bundle {card.id}: postprocessing gave shape {out.shape}, "
                                 "expected a channel-first image")
            if tuple(out.shape[1:]) != tuple(int(s) for s in orig_spatial):
                inv = Invertd(keys="_o", transform=rt.preprocessing, orig_keys=key,
                              nearest_interp=True)({key: d[key], "_o": MetaTensor(torch.as_tensor(out))})["_o"]
                out = np.asarray(inv)
                if tuple(out.shape[1:]) != tuple(int(s) for s in orig_spatial):
                    raise InputError(f"bundle {card.id}: its output grid {out.shape[1:]} differs "
                                     f"from the input {orig_spatial} and cannot be mapped back")
            if out.shape[0] == 1:
                if not np.allclose(out, np.rint(out), atol=1e-4):
                    warns.append(f"bundle {card.id} gives a continuous single-channel output: "
                                 "thresholded at 0.5")
                    out = (out >= 0.5).astype(np.float32)
                lab = np.rint(out[0]).astype(np.int64)
            else:
                lab = np.argmax(out, 0)
            if lab.min() < 0 or lab.max() >= len(card.labels):
                raise InputError(f"bundle {card.id}: label value {lab.max()} is outside its "
                                 f"{len(card.labels)} labels")
            lab = _bundle_back(card, lab[None], u)[0]
            if u is None:
                label_map[:] = lab
            else:
                label_map[u] = lab
        else:
            v = out.reshape(-1)
            if v.size != len(card.labels):
                raise InputError(f"bundle {card.id} outputs {v.size} values for "
                                 f"{len(card.labels)} labels")
            if _post_activation(rt.postprocessing) is None:
                v = _activation(torch.from_numpy(v)[None], card.activation)[0].numpy()
            cls_probs.append(v)
        timings["postprocess_s"] += time.perf_counter() - t
        if opts.explain is not None:
            targets = [] if targets is None else targets
            _explain_bundle_unit(model, vol, opts, device, rt, d, xin, logits_ms, u, seg, grid,
                                 heats, faith, heat_time, cls_probs, warns, uprog.stage(span, 1.0),
                                 targets)
    res_cls = SegmentationResult if seg else ClassificationResult
    res = res_cls(card.id, card.version, card.task, list(card.labels), timings=timings)
    res.warnings.extend(model.notes)
    if seg:
        res.label_map = label_map.astype(np.uint8) if len(card.labels) <= 256 else label_map
        _measure(res, vol, res.label_map, card.labels, warns)
    else:
        p = np.stack(cls_probs)
        if len(units) > 1:
            pv = p.max(0)
            res.per_slice = [{lab: round(float(v), 6) for lab, v in zip(card.labels, row)} for row in p]
            res.aggregation = "max_over_slices"
        else:
            pv = p[0]
        res.probabilities = {lab: float(v) for lab, v in zip(card.labels, pv)}
        res.decisions = decide(res.probabilities, card.thresholds)
    if opts.explain is not None:
        from ..explain.methods import canonical_method

        method = canonical_method(opts.explain.method)
        for name, h in heats.items():
            res.heatmaps.append(HeatMap(name, method, h, "predicted_region" if seg else "label",
                                        faithfulness=faith.get(name), time_s=heat_time.get(name, 0.0),
                                        params=opts.explain.params()))
        res.timings["explain_s"] = sum(heat_time.values())
    return res


def _explain_bundle_unit(model, vol, opts, device, rt, d, xin, logits_ms, u, seg, grid, heats, faith,
                         heat_time, cls_probs, warns, prog, targets):
    from monai.inferers import SlidingWindowInferer

    from ..explain.faithfulness import deletion_auc
    from ..explain.methods import attribute, canonical_method, make_baseline

    card = model.card
    cfg = opts.explain
    key = rt.image_key
    if not targets:
        if seg:
            default = [card.labels[i] for i in range(1, len(card.labels))]
        else:
            pv = cls_probs[-1]
            default = [card.labels[int(np.argmax(pv))]]
        targets.extend(_explain_labels(card, opts.explain_labels, default))
    for idx, name in targets:
        te = time.perf_counter()
        if seg:
            if logits_ms.shape[0] == 1:
                lab_ms = (logits_ms[0] > 0).numpy().astype(np.int64)
                ch = 0
            else:
                lab_ms = torch.argmax(logits_ms, 0).numpy()
                ch = idx
            region = torch.from_numpy((lab_ms == idx).astype(np.float32))
            inferer = rt.inferer
            if isinstance(inferer, SlidingWindowInferer):
                roi, ov = list(inferer.roi_size), inferer.overlap
            else:
                roi, ov = list(xin.shape[2:]), 0.0
            if float(region.sum()) == 0:
                h = np.zeros(grid, np.float32)
                f = None
            else:
                h_ms, f = _explain_seg_unit(model, xin, region, ch, opts, device, roi, ov, "gaussian",
                                            warns, prog)
                back = _invert(rt.preprocessing, d, h_ms[None], key=key)
                h = _bundle_back(card, back, u)[0]
        else:
            method = canonical_method(cfg.method)
            layer = _gradcam_layer(model, cfg, warns)[1] if method == "gradcam" else None
            x = xin.to(device)
            a = attribute(model.network, x, cfg, target=idx, layer=layer)
            back = _invert(rt.preprocessing, d, a[0][None].cpu(), key=key)
            h = _bundle_back(card, back, u)[0]
            f = None
            if cfg.faithfulness:
                act = _post_activation(rt.postprocessing) or card.activation

                def score(xb, _i=idx, _act=act):
                    return _activation(_net_out(model.network(xb)).float(), _act)[:, _i]

                f = deletion_auc(score, x, a[0].to(device), make_baseline(x, cfg.deletion_baseline),
                                 steps=cfg.faithfulness_steps)
                f["where"] = "whole image"
        hh = heats.setdefault(name, np.zeros(grid, np.float32))
        if u is None:
            hh[:] = h
        else:
            hh[u] = h
        if f is not None and name not in faith:
            faith[name] = f
        heat_time[name] = heat_time.get(name, 0.0) + time.perf_counter() - te
