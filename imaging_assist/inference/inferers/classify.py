"""Classification inferer: whole image, per slice (2D models on a series) or per volume,
through MONAI's ``SimpleInferer``; explanations mapped back to the study grid."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..options import InputError, check_finite
from ..placement import _from_model_order, _invert
from ..preprocess import _m1_range, _model_in_shape, _units_for, card_transforms, meta_input
from ..results import ClassificationResult, HeatMap, decide
from .common import _activation, _explain_labels, _forward, _gradcam_layer, _net_out


def _run_classifier(model, vol, opts, device, fp, prog, warns) -> ClassificationResult:
    prep = prepare(model, vol, warns)
    bs = max(1, int(opts.slice_batch))
    inf_prog = prog.stage(0.05, 0.6 if opts.explain else 0.95)
    t = time.perf_counter()
    p, feats = forward(model, prep.xs, device, fp, bs, inf_prog)
    prep.timings["infer_s"] = time.perf_counter() - t
    return finish(model, vol, opts, device, prep, p, feats, prog, warns)


@dataclass
class Prepared:
    """One input's model tensors (one per unit: the image, or each slice for a 2D model on a
    series) with what :func:`finish` needs to map results back."""

    pre: object
    dicts: list
    xs: list
    timings: dict


def prepare(model, vol, warns) -> Prepared:
    """The card's transforms on every unit of ``vol``."""
    card = model.card
    units = _units_for(card, vol)
    m1 = _m1_range(vol)
    pre = card_transforms(card, False, _model_in_shape(card, vol))
    t = time.perf_counter()
    dicts, xs = [], []
    for u in units:
        d = pre({"image": meta_input(card, vol, u, warns, m1)})
        dicts.append(d)
        xs.append(d["image"].as_tensor())
    return Prepared(pre, dicts, xs, {"preprocess_s": time.perf_counter() - t})


def forward(model, xs, device, fp, batch: int, prog=None):
    """Probabilities (n, n_labels) of the model tensors ``xs`` in forward passes of ``batch``,
    and the OOD features of the same passes ((n, D), or None when they must be taken apart:
    no statistics, bf16, TorchScript)."""
    from monai.inferers import SimpleInferer

    from ...validation import ood

    card = model.card
    inferer = SimpleInferer()
    probs = []
    # The OOD score's features come from this same forward pass when it runs in fp32, as the
    # statistics were fitted; otherwise (bf16, TorchScript, no statistics) ood.attach runs its own.
    hooks = ood.fused_hooks(card, model.network) if fp.autocast_dtype is None else None
    with hooks if hooks is not None else contextlib.nullcontext():
        for s in range(0, len(xs), batch):
            x = torch.stack(xs[s:s + batch])
            logits = inferer(x, lambda b: _forward(model, b, device, fp)).cpu()
            probs.append(_checked_probs(logits, card, card.labels))
            if prog is not None:
                prog((s + len(x)) / len(xs), f"image {min(s + batch, len(xs))}/{len(xs)}")
    feats = hooks.features() if hooks is not None else None
    if feats is not None and len(feats) != len(xs):
        feats = None
    return torch.cat(probs).numpy(), feats


def finish(model, vol, opts, device, prep: Prepared, p, feats, prog, warns) -> ClassificationResult:
    """The result of one input from its units' probabilities ``p`` and OOD features."""
    from ...validation import ood

    card = model.card
    labels = card.labels
    xs = prep.xs
    per_slice = None
    aggregation = "whole_image"
    if len(xs) > 1:
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
                               per_slice=per_slice, aggregation=aggregation, timings=prep.timings)
    # the labels a heat map explains by default: those over their threshold, taken before a
    # flagged result has its decisions withheld (else a withheld result explained its top label,
    # not the finding it is about, and differently from --research-override's withholding)
    positive = [lab for lab, dd in decisions.items() if dd and dd["positive"]]
    # issue 14: a flagged result has its decisions withheld; on a series also when a decision's
    # probability comes from a flagged slice (max: the slice that gives it; mean: any)
    decisive = (ood.decisive_units(p, labels, decisions, aggregation == "mean_over_slices")
                if len(xs) > 1 else None)
    if feats is not None:
        ood.attach_block(res, ood.block_from_features(card, feats, decisive=decisive))
    else:
        ood.attach(model, res, xs, decisive=decisive)
    if opts.explain is not None:
        default = positive or [max(probabilities, key=probabilities.get)]
        _explain_classifier(model, vol, opts, device, prep.pre, prep.dicts, xs, p, res,
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

