"""The two shipped CT nodule models on a :class:`~imaging_assist.nodules.window.Window`.

* ``ct-nodule-seg`` -> :func:`segment` (nodule probability on the window grid) and
  :func:`nodule_mask` (the connected nodule at the clicked point, or an empty mask);
* ``ct-nodule-malignancy`` -> :func:`malignancy` (P(malignant) as the LIDC readers' majority
  would call it, and a 3D Grad-CAM of the malignant class) and :func:`ood`.

Both load once through the model registry (card ``weights/<id>/model.json``, sha256 of the
safetensors weights checked before loading), run in fp32 on the CPU and are deterministic.
The network input is :func:`imaging_assist.nodules.window.model_channels` with the input
design written in the card (``input.window.design``), the same function the training
scripts use.  The card's ``input.window`` also says how the output is read, as the training
script chose it on the validation split: ``tta`` ("flips8": the probability averaged over the
8 flips of the window's axes, :func:`flip_average`) and, for the segmenter,
``mask_threshold`` (:func:`nodule_mask`) and ``source_grid`` ("probability": the nodule's
probability is mapped trilinearly onto the series' grid and thresholded there,
:func:`source_mask`, rather than a 1 mm mask copied to the nearest voxel).
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import torch
from scipy import ndimage

from . import window as W

SEG_ID = "ct-nodule-seg"
MALIGNANCY_ID = "ct-nodule-malignancy"
SEED_RADIUS_MM = 5.0  # a component counts as "the clicked nodule" when it comes this close to the point
PROB_THRESHOLD = 0.5
# where and how they run, whatever --device/--precision say (analyze says it ignores those);
# each results.json nodule item records both
DEVICE = "cpu"
PRECISION = "fp32"

_lock = threading.Lock()
_models: dict[str, object] = {}


def load(model_id: str):
    """The registry's loaded model (hash-verified), loaded once per process."""
    with _lock:
        m = _models.get(model_id)
        if m is None:
            from ..models.registry import Registry

            m = Registry().load(model_id, device=DEVICE)
            m.network.eval()
            _models[model_id] = m
        return m


def _window_card(model) -> dict:
    return (model.card.raw.get("input") or {}).get("window") or {}


def design(model) -> str:
    return str(_window_card(model).get("design", W.DEFAULT_DESIGN))


# the 8 flips of the window's three axes (dims 2, 3, 4 of a batch), the identity first
FLIPS = tuple(tuple(d for d, b in zip((2, 3, 4), bits) if b) for bits in itertools.product((0, 1), repeat=3))
TTA_MODES = ("none", "flips8")


def tta(model) -> str:
    t = str(_window_card(model).get("tta", "none"))
    if t not in TTA_MODES:
        raise ValueError(f"model {model.card.id}: input.window.tta is one of {TTA_MODES}, not {t!r}")
    return t


def mask_threshold(model=None) -> float:
    """The segmenter's probability threshold (card ``input.window.mask_threshold``)."""
    m = model if model is not None else load(SEG_ID)
    return float(_window_card(m).get("mask_threshold", PROB_THRESHOLD))


def confidence(prob: np.ndarray, comp: np.ndarray) -> float:
    """The segmenter's confidence in the nodule ``comp``: its mean probability (nan when empty)."""
    comp = np.asarray(comp, bool)
    return float(np.asarray(prob, np.float64)[comp].mean()) if comp.any() else float("nan")


def min_confidence(model=None) -> float | None:
    """The card's ``input.window.min_confidence`` (None when the card has none): a nodule whose
    :func:`confidence` is lower is flagged like an out-of-distribution window (conformal
    threshold on the validation nodules, scripts/train_ct_nodule_seg.py)."""
    m = model if model is not None else load(SEG_ID)
    v = _window_card(m).get("min_confidence")
    return None if v is None else float(v["threshold"])


def flip_average(net, x: torch.Tensor, mode: str, forward=None) -> torch.Tensor:
    """Softmax of ``net`` on the windows ``x`` (N, C, z, y, x), averaged over the flips of
    ``mode`` ("none" or "flips8": each flipped copy's output flipped back) -- the same
    function at training time (scripts/train_ct_nodule_*.py) and at a click.  ``forward``
    (default ``net``) runs the stacked batch [flip 0 of every window, flip 1, ...]."""
    flips = FLIPS if mode == "flips8" else FLIPS[:1]
    xb = torch.cat([torch.flip(x, f) if f else x for f in flips])
    with torch.no_grad():
        out = torch.softmax((forward or net)(xb).float(), 1)
    n = len(x)
    parts = []
    for k, f in enumerate(flips):
        o = out[k * n:(k + 1) * n]
        parts.append(torch.flip(o, f) if (f and o.ndim == 5) else o)  # classifier outputs need no flip back
    return torch.stack(parts).mean(0)


def _input(model, window: W.Window) -> torch.Tensor:
    if window.image.shape != W.WINDOW_SHAPE:
        raise ValueError(f"window shape {window.image.shape}, the models take {W.WINDOW_SHAPE}")
    return torch.from_numpy(W.model_channels(window, design(model)))[None]


def _key(x: torch.Tensor) -> str:
    import hashlib

    return hashlib.blake2b(x.numpy().tobytes(), digest_size=16).hexdigest()


# OOD features of the last input of each model, taken by hooks on the model's own forward pass
# (as run_model does: imaging_assist.validation.ood.fused_hooks), so ood() after segment() /
# malignancy() on the same window costs no second pass
_feats: dict[str, tuple[str, np.ndarray]] = {}
_stats: dict[str, object] = {}


def _forward(m, x: torch.Tensor) -> torch.Tensor:
    """The network's output for the batch ``x`` (the window first, then its flipped copies);
    the OOD features of the first item (the window as it is) are kept for :func:`ood`."""
    from ..validation.ood import forward_with_features, ood_spec

    spec = ood_spec(m.card)
    with torch.no_grad():
        if spec and isinstance(spec.get("layers"), list):
            out, f = forward_with_features(m.network, x, list(spec["layers"]))
            _feats[m.card.id] = (_key(x[:1]), f[:1])
            return out
        return m.network(x)


def segment(window: W.Window) -> np.ndarray:
    """float32 [z, y, x] nodule probability on the window grid (0 where the window has no data)."""
    m = load(SEG_ID)
    x = _input(m, window)
    with m.lock:
        p = flip_average(m.network, x, tta(m), forward=lambda xb: _forward(m, xb))[0, 1].numpy()
    return (p * W.design_valid(window, design(m))).astype(np.float32)


def nodule_mask(prob: np.ndarray, window: W.Window, threshold: float | None = None) -> np.ndarray:
    """bool [z, y, x]: the connected component (26-connectivity) of ``prob >= threshold`` (default:
    the card's ``mask_threshold``) that comes within ``SEED_RADIUS_MM`` of the window centre (the
    clicked point), the one with the most probability mass when several do; all False when none
    does ("no nodule here")."""
    threshold = mask_threshold() if threshold is None else float(threshold)
    m = (np.asarray(prob) >= threshold) & window.valid
    lab, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros(m.shape, bool)
    off = (np.arange(W.WINDOW_SIZE) - (W.WINDOW_SIZE - 1) / 2.0) * W.MODEL_SPACING_MM
    d2 = off[:, None, None] ** 2 + off[None, :, None] ** 2 + off[None, None, :] ** 2
    near = np.unique(lab[(d2 <= SEED_RADIUS_MM ** 2) & (lab > 0)])
    if near.size == 0:
        return np.zeros(m.shape, bool)
    mass = ndimage.sum(prob, lab, near)
    return lab == int(near[int(np.argmax(mass))])


def source_mask(prob: np.ndarray, comp: np.ndarray, window: W.Window, volume, threshold: float | None = None,
                mode: str | None = None) -> np.ndarray:
    """bool mask of the nodule ``comp`` (from :func:`nodule_mask`) on ``volume``'s voxel grid.

    ``mode`` "probability" (the card's ``source_grid``; default "mask"): the probability inside
    ``comp`` and one voxel around it (the neighbours the interpolation reads; any of them at or
    above the threshold would belong to ``comp``) is mapped trilinearly and thresholded on the
    series' grid, so a nodule's edge is placed between 1 mm voxels, not at the nearest one;
    "mask": ``comp`` copied to the nearest window voxel."""
    if mode is None or threshold is None:
        m = load(SEG_ID)
        mode = str(_window_card(m).get("source_grid", "mask")) if mode is None else mode
        threshold = mask_threshold(m) if threshold is None else threshold
    comp = np.asarray(comp, bool)
    if mode == "mask":
        return W.to_source_grid(window, comp.astype(np.uint8), volume, order=0) > 0
    if mode != "probability":
        raise ValueError(f"source_grid is 'mask' or 'probability', not {mode!r}")
    region = ndimage.binary_dilation(comp, np.ones((3, 3, 3), bool))
    vals = np.where(region, np.asarray(prob, np.float32), np.float32(0))
    return W.to_source_grid(window, vals, volume, order=1) >= float(threshold)


def malignancy(window: W.Window, explain: bool = True) -> tuple[float, np.ndarray | None]:
    """(P(malignant), 3D Grad-CAM of the malignant class on the window grid scaled to 0..1,
    zero where the model saw no data; None when ``explain`` is False).

    "Malignant" is the LIDC readers' majority opinion, not pathology (see the card)."""
    m = load(MALIGNANCY_ID)
    x = _input(m, window)
    with m.lock:
        p = float(flip_average(m.network, x, tta(m), forward=lambda xb: _forward(m, xb))[0, 1])
        if not explain:
            return p, None
        from ..explain.methods import ExplainConfig, attribute
        from ..models.architectures import get_layer

        a = attribute(m.network, x, ExplainConfig("gradcam"), target=1,
                      layer=get_layer(m.network, m.card.gradcam_layer))[0].numpy()
    a = np.maximum(a, 0) * W.design_valid(window, design(m))
    top = float(a.max())
    return p, (a / top if top > 0 else a).astype(np.float32)


def _ood_of(model_id: str, window: W.Window):
    from ..validation.ood import forward_with_features, load_stats, score

    m = load(model_id)
    with _lock:  # hash-checked once per process, like the weights
        if model_id not in _stats:
            _stats[model_id] = load_stats(m.card)
        stats = _stats[model_id]
    if stats is None:
        return None
    x = _input(m, window)
    with m.lock:
        k, feats = _feats.get(model_id, ("", None))
        if k != _key(x) or stats.layers != list((m.card.raw.get("ood") or {}).get("layers", [])):
            with torch.no_grad():
                _, feats = forward_with_features(m.network, x, stats.layers)
    return stats, float(score(stats.tensors, feats, stats.method, stats.k)[0])


def ood(window: W.Window) -> dict:
    """``{score, threshold, flagged, reasons, method, segmentation}``: the malignancy model's
    OOD score (imaging_assist.validation.ood: Mahalanobis on the card's layers, hash-checked
    statistics) decides ``score``/``threshold``; the segmenter's own score is reported under
    ``segmentation`` and flags the window too when above its threshold (it separates windows
    without a nodule best: docs/ct_nodules_models.md)."""
    reasons = []
    valid = float(window.valid.mean())
    if valid < 0.5:
        reasons.append(f"only {valid:.0%} of the window lies inside the series (the point is near its edge)")
    seg = _ood_of(SEG_ID, window)
    seg_block = None
    if seg is not None:
        st, s = seg
        seg_block = st.result(s).to_dict()
        if seg_block["flagged"]:
            reasons.append(f"the segmentation model's features are unlike its training nodules (OOD score "
                           f"{s:.3g} > threshold {st.threshold:.3g})")
    mal = _ood_of(MALIGNANCY_ID, window)
    if mal is None:
        d = {"score": None, "threshold": None, "flagged": bool(reasons),
             "reasons": reasons + ["not scored: the malignancy model has no OOD statistics"]}
    else:
        st, s = mal
        d = st.result(s, reasons).to_dict()
    d["segmentation"] = seg_block
    return d
