"""MONAI bundle inferer: the bundle's own preprocessing, inferer and postprocessing (with its
``Invertd``); results back on the study grid."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ...volume import Volume
from ..options import InputError, check_finite
from ..placement import _bundle_back, _invert, _measure
from ..preprocess import LPS_TO_RAS, _m1_range, _to_channels, _units_for
from ..results import ClassificationResult, HeatMap, SegmentationResult, decide
from .common import _activation, _explain_labels, _gradcam_layer, _net_out, count_windows
from .segment import _explain_seg_unit


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


def _flat(t) -> list:
    """The transforms of a Compose (OneOf, SomeOf...), nested ones included."""
    ts = getattr(t, "transforms", None)
    if isinstance(ts, (list, tuple)):
        return [x for c in ts for x in _flat(c)]
    return [t]


def _per_dim(v, n: int) -> list[float]:
    a = [float(x) for x in np.atleast_1d(np.asarray(v, dtype=float))] or [0.0]
    return (a + [a[-1]] * n)[:n]


def _check_grid(card, pre, x) -> None:
    """Refuse, before the bundle's preprocessing runs, an input that its Spacing(d)/Zoom(d)/
    Resize(d) would make larger than the bundle limit of voxels (``pixdim`` 0.002 on a 64x64
    PNG: 32,000^2 pixels, gigabytes). Estimated from their arguments and the input's shape and
    spacing (affine), in order; nothing is resampled. A card's ``input.spacing`` is refused the
    same way (preprocess._model_in_shape)."""
    from ...models.bundle_code import _MAX_VOXELS

    sd = card.spatial_dims
    shape0 = [float(n) for n in x.shape[:sd]]
    aff = np.asarray(x.affine, dtype=float)
    sp = [float(np.linalg.norm(aff[:sd, i])) or 1.0 for i in range(sd)]
    shape = list(shape0)
    for t in _flat(pre):
        t = (getattr(t, "spacing_transform", None) or getattr(t, "resizer", None)
             or getattr(t, "zoomer", None) or getattr(t, "rand_zoom", None) or t)
        name = type(t).__name__
        new = list(shape)
        if name == "Spacing":
            new = [n * s / p if p > 0 else n for n, s, p in zip(shape, sp, _per_dim(t.pixdim, sd))]
        elif name == "Resize":
            if t.size_mode == "longest":
                new = [n * float(t.spatial_size) / max(shape) for n in shape]
            else:
                new = [z if z > 0 else n for n, z in zip(shape, _per_dim(t.spatial_size, sd))]
        elif name in ("Zoom", "RandZoom") and not t.keep_size:
            new = [n * z for n, z in zip(shape, _per_dim(t.zoom if name == "Zoom" else t.max_zoom, sd))]
        sp = [s * n / m if m > 0 else s for s, n, m in zip(sp, shape, new)]
        shape = [max(1.0, m) for m in new]
        if math.prod(shape) > _MAX_VOXELS:
            raise InputError(
                f"bundle {card.id}: its preprocessing ({name}) would make this "
                f"{'x'.join(str(round(n)) for n in shape0)} image {'x'.join(str(round(n)) for n in shape)} "
                f"voxels (more than {_MAX_VOXELS:,}): refused before resampling")


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
        inp = _bundle_input(card, vol, u, warns, m1)
        _check_grid(card, rt.preprocessing, inp)
        d = rt.preprocessing({key: inp})
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
        check_finite(pred, card)
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
    from ...models.registry import changed_message, changed_since_add

    changed = changed_since_add(card.folder, model.hashes) if card.folder is not None else []
    if changed:  # the folder is not what `models add` recorded (models verify says FAILED)
        res.warnings.append(changed_message(card.id, card.folder, changed))
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
        res.decisions = decide(res.probabilities, card.thresholds, card)
    if opts.explain is not None:
        from ...explain.methods import canonical_method

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

    from ...explain.faithfulness import deletion_auc
    from ...explain.methods import attribute, canonical_method, make_baseline

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

