"""Pieces every inferer shares: the network call, activations, sliding-window parameters
and progress, Grad-CAM layer and explanation targets."""

from __future__ import annotations

import math

import torch

from ..device import FastPath
from ..jobs import Progress
from ..options import InputError, RunOptions


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
    """Number of windows ``monai.inferers.sliding_window_inference`` runs (for progress).

    Written here because MONAI exposes the count only through private helpers: the image is
    padded to at least the ROI; per axis the step is ``int(roi * (1 - overlap))`` (at least 1;
    the whole ROI when it equals the image), and windows start at 0, step, 2*step, ... until
    one reaches the end (the last is shifted back to fit).  Checked against MONAI's own call
    count in tests/test_inference_structure.py.
    """
    ov = overlap if isinstance(overlap, (list, tuple)) else [overlap] * len(roi)
    n = 1
    for s, r, o in zip(spatial, roi, ov):
        size, r = max(int(s), int(r)), int(r)
        step = r if r == size else max(1, int(r * (1 - float(o))))
        n *= 1 + max(0, math.ceil((size - r) / step))
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


def _gradcam_layer(model, cfg, warns: list[str]):
    from ...explain.methods import ExplainError
    from ...models.architectures import get_layer, last_conv_layer

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
    from ...explain.methods import ExplainError

    names = requested or default
    out = []
    for n in names:
        if n not in card.labels:
            raise ExplainError(f"unknown label {n!r} for model {card.id} (labels: "
                               f"{', '.join(card.labels)})")
        out.append((card.labels.index(n), n))
    return out

