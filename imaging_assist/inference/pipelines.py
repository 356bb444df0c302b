"""Inference entry point: :func:`run_model` and :class:`RunOptions`.

The pipeline is split MONAI-style (each part small and testable on its own):

* :mod:`.preprocess` — the card's transforms (:func:`~.preprocess.card_transforms`) and the
  tensor a model sees (:func:`~.preprocess.model_input`);
* :mod:`.inferers` — one inferer per task: :mod:`~.inferers.classify` (``SimpleInferer``),
  :mod:`~.inferers.segment` (``sliding_window_inference``), :mod:`~.inferers.bundle`
  (the bundle's own inferer);
* :mod:`.placement` — results back on the study grid (inverse spatial transforms; label
  maps nearest/argmax, heat maps linear) and their areas/volumes.

This module checks the input, picks device and precision, dispatches to the inferer, and
falls back to the CPU on GPU out-of-memory.  It also re-exports the names other code imports
from here (``model_input``, ``InputError``, ``count_windows``, ``sliding_params``).

Geometry, the part that must be right (a heat map on the wrong voxels is worse than a
crash): see :mod:`.preprocess` and :mod:`.placement`.
"""

from __future__ import annotations

import time
import warnings as _warnings

import numpy as np
import torch

from ..monitoring.log import record_safely as _log_prediction
from ..privacy.audit import record_model_run as _audit_run
from ..volume import Volume
from .device import GpuFallbackWarning, fast_path, free_gpu_memory, is_oom, resolve_device
from .inferers import run_bundle, run_classifier, run_segmenter
from .inferers.common import count_windows, sliding_params
from .jobs import Progress
from .options import InputError, ModelOutputError, RunOptions
from .placement import spacing_known
from .preprocess import card_transforms, model_input

__all__ = ["run_model", "run_model_many", "RunOptions", "InputError", "ModelOutputError", "model_input",
           "card_transforms", "count_windows", "sliding_params", "GpuFallbackWarning"]


UNEVEN_SPACING_TOL = 0.1  # relative spread of slice gaps above which 3D models refuse


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


def run_model_many(model, volumes: list[Volume], options: RunOptions | None = None,
                   batch: int | None = None) -> list:
    """:func:`run_model` on each of ``volumes``, a classifier's images going through the network
    together, ``batch`` at a time (default: the card's ``inference.batch_size``; the batch
    engines use this).  Returns one entry per volume: its result, or the exception
    ``run_model`` would have raised for it (``Cancelled``/``KeyboardInterrupt`` propagate).

    Each result equals ``run_model``'s (the same preprocessing, OOD score, decisions,
    explanation, checks, prediction log and audit event per volume); only the forward pass is
    shared, so probabilities agree to float rounding (tests/test_batched_inference.py).  A
    result's ``batched`` gives the images in its pass (``results.json``), its ``timings`` its
    share of the pass as ``infer_s``.  Segmenters and bundles (already batched over windows) and
    a single volume go through ``run_model`` one by one; so does every volume not yet finished
    when a GPU runs out of memory."""
    from .jobs import Cancelled

    opts = options or RunOptions()
    card = model.card
    bs = int(batch or card.inference.get("batch_size", 1) or 1)
    if len(volumes) < 2 or bs < 2 or card.is_bundle or card.task != "classification":
        return [_one(model, v, opts) for v in volumes]
    from .inferers.classify import finish, forward, prepare

    device = resolve_device(opts.device)
    out: list = [None] * len(volumes)
    try:
        with model.lock:
            started = []
            for i, v in enumerate(volumes):
                t0 = time.perf_counter()
                try:
                    warns, fp = _begin(model, v, opts, device)
                    started.append((i, warns, prepare(model, v, warns), t0))
                except (Cancelled, KeyboardInterrupt):
                    raise
                except Exception as e:  # noqa: BLE001 - this volume's error, as run_model raises it
                    out[i] = _error_or_retry(e, device)
            # one pass per group of equal tensor shapes (a card without a fixed size keeps each
            # image's own), in order
            groups: dict = {}
            for item in started:
                groups.setdefault(tuple(item[2].xs[0].shape) if item[2].xs else (), []).append(item)
            for items in groups.values():
                xs = [x for it in items for x in it[2].xs]
                t = time.perf_counter()
                p, feats = forward(model, xs, device, fp, bs)
                per_image = (time.perf_counter() - t) / max(1, len(xs))
                k = 0
                for i, warns, prep, t0 in items:
                    n = len(prep.xs)
                    prep.timings["infer_s"] = per_image * n
                    res_batched = min(bs, len(xs) - k // bs * bs)  # its (first) image's pass
                    try:
                        res = finish(model, volumes[i], opts, device, prep, p[k:k + n],
                                     None if feats is None else feats[k:k + n], Progress(), warns)
                        res.batched = res_batched
                        out[i] = _complete(model, volumes[i], res, device, fp, warns, t0)
                    except (Cancelled, KeyboardInterrupt):
                        raise
                    except Exception as e:  # noqa: BLE001 - this volume's error
                        out[i] = _error_or_retry(e, device)
                    k += n
    except Exception as e:  # noqa: BLE001 - only OOM is handled, everything else re-raised
        if device.type == "cpu" or not is_oom(e):
            raise
    if any(o is None for o in out):  # the GPU ran out of memory: those volumes alone, through
        free_gpu_memory()             # run_model (which falls back to the CPU and says so)
        out = [_one(model, v, opts) if o is None else o for o, v in zip(out, volumes)]
    return out


def _error_or_retry(e: Exception, device: torch.device):
    """A volume's error, or None (run it alone) when it is the GPU running out of memory."""
    return None if device.type != "cpu" and is_oom(e) else e


def _one(model, volume: Volume, opts: RunOptions):
    from .jobs import Cancelled

    try:
        return run_model(model, volume, opts)
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the caller gets each volume's own error
        return e


def _run_on(model, volume: Volume, opts: RunOptions, device: torch.device, prog: Progress):
    card = model.card
    with model.lock:
        t0 = time.perf_counter()
        warns, fp = _begin(model, volume, opts, device)
        prog(0.0, f"{card.id}: {device.type}, {fp.precision}")
        if card.is_bundle:
            res = run_bundle(model, volume, opts, device, fp, prog, warns)
        elif card.task == "classification":
            res = run_classifier(model, volume, opts, device, fp, prog, warns)
        else:
            res = run_segmenter(model, volume, opts, device, fp, prog, warns)
        return _complete(model, volume, res, device, fp, warns, t0)


def _begin(model, volume: Volume, opts: RunOptions, device: torch.device):
    """Before the inferer (the model's lock held): the model on ``device``, the input checked,
    the explanation's sanity warning; returns (warnings, fast path)."""
    card = model.card
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
    mf = fp.memory_format(card.spatial_dims + 2)
    if not isinstance(model.network, torch.jit.ScriptModule) and model.memory_format != mf:
        # weights in the memory format of the inputs (channels_last), converted when the
        # format changes, not on every run (walking the weights cost 1.3 ms a chest film)
        with torch.no_grad():
            model.network.to(memory_format=mf)
        model.memory_format = mf
    return warns, fp


def _complete(model, volume: Volume, res, device: torch.device, fp, warns: list[str], t0: float):
    """After the inferer: the result's facts about its input, the card's quality checks, the
    prediction log and the audit trail."""
    card = model.card
    src = volume.source_paths[0] if volume.source_paths else ""
    res.source = src
    res.device = str(device)
    res.precision = fp.precision
    res.shape = tuple(volume.array.shape[:3])
    res.has_geometry = bool(volume.has_geometry)
    # No modality and no geometry: a plain PNG/JPEG/TIFF (read_image), not DICOM.
    res.is_plain_image = not volume.modality and not volume.has_geometry
    res.spacing = tuple(float(s) for s in volume.spacing) if spacing_known(volume) else None
    res.affine = volume.affine if volume.has_geometry else None
    res.series_uid = volume.series_uid
    res.description = volume.description
    res.warnings = list(dict.fromkeys(warns + res.warnings))
    if getattr(res, "label_map", None) is not None and getattr(card, "quality_checks", None) is not None:
        from .quality import check_segmentation  # the card's plausibility checks (issue 14)

        res.quality = check_segmentation(res.label_map, card.labels, card.quality_checks)
        if res.quality is not None and not res.quality["passed"]:
            res.warnings.append(res.quality["text"])
    res.timings["total_s"] = time.perf_counter() - t0
    _log_prediction(model, volume, res)  # issue 18: the prediction log (never raises)
    _audit_run(model, volume, res)  # issue 16: the audit trail (never raises)
    return res


def _check_input(card, vol: Volume, warns: list[str], opts: RunOptions) -> None:
    inp = (getattr(card, "raw", None) or {}).get("input")
    if isinstance(inp, dict) and inp.get("window"):  # e.g. the CT nodule models (nodules/window.py)
        raise InputError(f"model {card.id} analyses a window around a point the reader gives (a CT "
                         "nodule), not a whole series: use `analyze --at X,Y,Z` or Shift+click the "
                         "nodule in the viewer")
    if vol.array.size == 0:
        raise InputError("the image is empty")
    if vol.loaded is not None and not np.all(vol.loaded):
        raise InputError("the series is still loading: wait until all slices are read")
    if np.issubdtype(vol.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(vol.array)))
        if bad:  # percentile/z-score scaling would spread NaN over the whole image
            raise InputError(f"the image holds NaN or infinite pixel values ({bad} of "
                             f"{vol.array.size}): it cannot be analysed")
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
        aff = np.asarray(vol.affine, np.float64)
        if not np.all(np.isfinite(aff)) or abs(float(np.linalg.det(aff[:3, :3]))) < 1e-9:
            raise InputError(f"model {card.id} is 3D but this series' geometry is unusable (spacing "
                             f"{tuple(float(v) for v in vol.spacing)}, a NaN/infinite or degenerate "
                             "orientation): resampling it would put results on the wrong voxels")
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
    slide = (getattr(card, "raw", None) or {}).get("slide")
    if isinstance(slide, dict) and card.task == "classification" and not vol.has_geometry:
        # a tile model on a large plain image: analyze tiles it as a slide (slides.analysis.
        # is_slide_input, more than two tiles on its longer side); here it is shrunk to one tile
        tile = int(slide.get("tile_px") or (card.input.size or [224])[0])
        rows, cols = (int(v) for v in vol.array.shape[1:3])
        if max(rows, cols) > 2 * tile:
            warns.append(f"this image ({cols} x {rows} px) is more than two of model {card.id}'s {tile}-px "
                         f"tiles: it is shrunk to one tile here, {max(rows, cols) / tile:.1f}x smaller than the "
                         "tiles the model was trained on; `imaging-assist analyze` tiles such an image as a slide")
    mods = [m.upper() for m in card.modality]
    if vol.modality:
        if vol.modality.upper() not in mods and "OT" not in mods:
            warns.append(f"modality {vol.modality} is not one model {card.id} was made for "
                         f"({', '.join(mods)})")
    else:
        warns.append("plain image without DICOM geometry or modality: the model's modality "
                     f"({', '.join(mods)}) is assumed; sizes are in pixels")
    lo, hi = np.min(vol.array), np.max(vol.array)
    if lo == hi:  # intensity scaling divides by zero; the output would not depend on the image
        raise InputError(f"the image is blank (every pixel value is {lo:g}): there is nothing to analyse")
