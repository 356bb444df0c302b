"""Segmentation inferer: MONAI sliding-window inference of the card's model, probabilities
placed back on the study grid, label maps by argmax (or thresholds for sigmoid outputs);
Seg-Grad-CAM and the other methods per sliding-window patch."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..options import InputError, check_finite
from ..placement import _from_model_order, _invert, _labels_from_probs, _measure
from ..preprocess import _m1_range, _model_in_shape, _region_input, _units_for, card_transforms, meta_input
from ..results import HeatMap, SegmentationResult
from .common import (_activation, _explain_labels, _gradcam_layer, _net_out, _sliding, count_windows,
                     sliding_params)


def _expected_channels(card) -> int:
    return len(card.labels) if card.activation == "softmax" else len(card.labels) - 1


def _channel_of(card, label_index: int) -> int:
    return label_index if card.activation == "softmax" else label_index - 1


def _run_segmenter(model, vol, opts, device, fp, prog, warns) -> SegmentationResult:
    card = model.card
    units = _units_for(card, vol)
    m1 = _m1_range(vol)
    with_region = opts.region is not None
    pre = card_transforms(card, with_region, _model_in_shape(card, vol))
    grid = tuple(vol.array.shape[:3])
    label_map = np.zeros(grid, np.uint8 if len(card.labels) <= 256 else np.uint16)
    keep = np.zeros((_expected_channels(card),) + grid, np.float32) if opts.keep_probabilities else None
    timings = {"preprocess_s": 0.0, "infer_s": 0.0, "postprocess_s": 0.0}
    res = SegmentationResult(card.id, card.version, card.task, list(card.labels), timings=timings)
    explain = opts.explain is not None
    span = 0.6 if explain else 1.0
    sw_info = None
    kept_units = []  # (unit, d, x, model-space labels) for the explanation pass
    ood_inputs = []  # model inputs of each unit for the OOD score (validation.ood)
    # ---- pass 1: inference on every unit (the volume, or each slice for 2D models)
    for n, u in enumerate(units):
        uprog = prog.stage(span * n / len(units), span * (n + 1) / len(units))
        t = time.perf_counter()
        data = {"image": meta_input(card, vol, u, warns, m1)}
        if with_region:
            data["region"] = _region_input(card, opts.region, u)
        d = pre(data)
        x = d["image"].as_tensor()[None]
        if card.spatial_dims == 2:
            ood_inputs.append(x[0])
        timings["preprocess_s"] += time.perf_counter() - t
        t = time.perf_counter()
        roi, overlap, mode, sw, base_roi, base_ov = sliding_params(card, tuple(x.shape[2:]), device, opts)
        sw_info = {"roi": roi, "overlap": overlap, "blend": mode, "sw_batch_size": sw}
        logits = _sliding(model, x, roi, sw, overlap, mode, device, fp, uprog)
        if logits.shape[1] != _expected_channels(card):
            raise InputError(f"model {card.id} outputs {logits.shape[1]} channels but its card "
                             f"lists {len(card.labels)} labels ({card.activation}: expected "
                             f"{_expected_channels(card)})")
        check_finite(logits, card)
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
    from ...validation.ood import attach as attach_ood  # issue 14: per image OOD score

    attach_ood(model, res, ood_inputs)
    if not explain:
        return res
    # ---- pass 2: explanations (default: every structure that was found)
    from ...explain.methods import canonical_method

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

    from ...explain.faithfulness import deletion_auc
    from ...explain.methods import RegionScore, attribute, canonical_method, make_baseline

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

