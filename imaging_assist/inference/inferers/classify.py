"""Classification inferer: whole image, per slice (2D models on a series) or per volume,
through MONAI's ``SimpleInferer``; explanations mapped back to the study grid."""

from __future__ import annotations

import contextlib

import time

import numpy as np
import torch

from ..options import InputError, check_finite
from ..placement import _from_model_order, _invert
from ..preprocess import _m1_range, _model_in_shape, _units_for, card_transforms, meta_input
from ..results import ClassificationResult, HeatMap, decide
from .common import _activation, _explain_labels, _forward, _gradcam_layer, _net_out


def _run_classifier(model, vol, opts, device, fp, prog, warns) -> ClassificationResult:
    card = model.card
    labels = card.labels
    units = _units_for(card, vol)
    m1 = _m1_range(vol)
    pre = card_transforms(card, False, _model_in_shape(card, vol))
    timings: dict = {}
    t = time.perf_counter()
    dicts, xs = [], []
    for u in units:
        d = pre({"image": meta_input(card, vol, u, warns, m1)})
        dicts.append(d)
        xs.append(d["image"].as_tensor())
    timings["preprocess_s"] = time.perf_counter() - t
    inf_prog = prog.stage(0.05, 0.6 if opts.explain else 0.95)
    t = time.perf_counter()
    probs = []
    bs = max(1, int(opts.slice_batch))
    from monai.inferers import SimpleInferer

    from ...validation import ood

    inferer = SimpleInferer()
    # The OOD score's features come from this same forward pass when it runs in fp32, as the
    # statistics were fitted; otherwise (bf16, TorchScript, no statistics) ood.attach runs its own.
    hooks = ood.fused_hooks(card, model.network) if fp.autocast_dtype is None else None
    with hooks if hooks is not None else contextlib.nullcontext():
        for s in range(0, len(xs), bs):
            x = torch.stack(xs[s:s + bs])
            logits = inferer(x, lambda b: _forward(model, b, device, fp)).cpu()
            probs.append(_checked_probs(logits, card, labels))
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
    decisions = decide(probabilities, card.thresholds, card)
    res = ClassificationResult(card.id, card.version, card.task, list(labels),
                               probabilities=probabilities, decisions=decisions,
                               per_slice=per_slice, aggregation=aggregation, timings=timings)
    # issue 14: a flagged result has its decisions withheld
    feats = hooks.features() if hooks is not None else None
    if feats is not None and len(feats) == len(xs):
        ood.attach_block(res, ood.block_from_features(card, feats))
    else:
        ood.attach(model, res, xs)
    if opts.explain is not None:
        positive = [lab for lab, dd in decisions.items() if dd and dd["positive"]]
        default = positive or [max(probabilities, key=probabilities.get)]
        _explain_classifier(model, vol, opts, device, pre, dicts, xs, p, res,
                            _explain_labels(card, opts.explain_labels, default), prog.stage(0.6, 1.0),
                            warns)
    return res


def _checked_probs(logits: torch.Tensor, card, labels) -> torch.Tensor:
    if logits.ndim != 2:
        raise InputError(f"model {card.id} is a classifier but its output has shape "
                         f"{tuple(logits.shape)}")
    if logits.shape[1] != len(labels):
        raise InputError(f"model {card.id} outputs {logits.shape[1]} values but its card "
                         f"lists {len(labels)} labels")
    check_finite(logits, card)
    return _activation(logits, card.activation)


def _explain_classifier(model, vol, opts, device, pre, dicts, xs, p, res, targets, prog, warns):
    from ...explain.faithfulness import deletion_auc
    from ...explain.methods import attribute, canonical_method, make_baseline

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

