"""Captum wrappers working in *model space* (the preprocessed input tensor).

Every function returns a float32 tensor ``(B, *spatial)`` on the CPU with the spatial size
of the model input; the pipelines map it back to the study's grid with the inverse of the
preprocessing (MONAI ``Invertd``), so heat maps land on the same voxels as predictions.

Conventions of the heat maps:

* ``gradcam``: LayerGradCam on the card's layer, ReLU'd, upsampled (bilinear/trilinear);
  non-negative.
* ``integrated_gradients``: signed attributions summed over input channels (positive =
  evidence for the target).
* ``saliency``: |gradient|, maximum over channels; non-negative.
* ``occlusion``: drop of the target score when a patch is replaced by the baseline, mean
  over channels; signed.

Guided Backprop and Guided Grad-CAM are not offered: they are known to fail the
weight-randomisation sanity check (Adebayo et al., 2018), i.e. they show edges, not the
model's reasons.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn as nn

from .names import METHODS, ExplainError, canonical_method  # noqa: F401 - METHODS re-exported (torch-free: .names)


#: Integrated-gradients steps at most: Captum's Gauss-Legendre nodes cost O(n³) time and n² memory
#: before the first pass (10,000 steps ran for minutes, 10⁶ asked for terabytes), and each step is
#: one more forward and backward pass; 32 is the default, a few hundred is already plenty.
MAX_IG_STEPS = 1024


def check_ig_steps(n) -> int:
    """``n`` as an int when it is a whole number of steps from 1 to MAX_IG_STEPS, else ExplainError."""
    try:
        v = operator.index(n)  # an int or a NumPy integer; not 2.5 or "32"
    except TypeError:
        v = 0
    if not 1 <= v <= MAX_IG_STEPS:
        raise ExplainError(f"integrated-gradients steps must be a whole number from 1 to {MAX_IG_STEPS} "
                           f"(got {n!r})")
    return v


@dataclass
class ExplainConfig:
    method: str = "gradcam"
    layer: str | None = None  # Grad-CAM layer; default: the card's gradcam_layer
    ig_steps: int = 32
    ig_internal_batch: int = 8
    baseline: str | float = "min"  # IG/occlusion baseline: "min", "mean", "zero" or a number
    deletion_baseline: str | float = "mean"  # what deleted pixels become (faithfulness)
    occlusion_window: int | None = None  # pixels per side; default 1/8 of the smallest side
    occlusion_stride: int | None = None  # default: half the window
    occlusion_batch: int = 16
    faithfulness: bool = True
    faithfulness_steps: int = 20

    def __post_init__(self):
        check_ig_steps(self.ig_steps)  # refused here, before a model is loaded

    def params(self) -> dict:
        m = canonical_method(self.method)
        if m == "integrated_gradients":
            return {"n_steps": self.ig_steps, "internal_batch_size": self.ig_internal_batch,
                    "baseline": self.baseline}
        if m == "occlusion":
            return {"window": self.occlusion_window, "stride": self.occlusion_stride,
                    "baseline": self.baseline}
        if m == "gradcam":
            return {"layer": self.layer}
        return {}


def make_baseline(x: torch.Tensor, spec: str | float = "min") -> torch.Tensor:
    """Baseline image in model space: per-channel minimum of the input ("the darkest value
    after preprocessing", e.g. 0 for a [0, 1]-scaled CT window), zeros, or a constant."""
    if spec == "min":
        dims = tuple(range(2, x.ndim))
        mins = x.amin(dim=dims, keepdim=True) if dims else x
        return mins.expand_as(x).clone()
    if spec == "mean":
        dims = tuple(range(2, x.ndim))
        return x.mean(dim=dims, keepdim=True).expand_as(x).clone()
    if spec == "zero":
        return torch.zeros_like(x)
    try:
        return torch.full_like(x, float(spec))
    except (TypeError, ValueError):
        raise ExplainError(f"baseline must be min, mean, zero or a number (got {spec!r})") from None


class RegionScore(nn.Module):
    """Seg-Grad-CAM target: sum of the logits of one output channel over a region.

    ``region`` is (1, *spatial) or (B, *spatial) with 0/1 values in model space.
    """

    def __init__(self, net: nn.Module, channel: int, region: torch.Tensor):
        super().__init__()
        self.net = net
        self.channel = channel
        self.register_buffer("region", region.float(), persistent=False)

    def forward(self, x):
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return (out[:, self.channel] * self.region).flatten(1).sum(1)


def _interp_mode(nd: int) -> str:
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]


def attribute(forward: nn.Module, x: torch.Tensor, cfg: ExplainConfig, target: int | None = None,
              layer: nn.Module | None = None) -> torch.Tensor:
    """Attribution map (B, *spatial) for ``forward(x)[:, target]`` (or ``forward(x)`` when it
    returns one score per sample, target None)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    method = canonical_method(cfg.method)
    x = x.detach().float().contiguous()
    nd = x.ndim - 2
    with torch.enable_grad():
        if method == "gradcam":
            if layer is None:
                raise ExplainError("Grad-CAM needs a layer (gradcam_layer in the model card)")
            a = LayerGradCam(forward, layer).attribute(x, target=target, relu_attributions=True)
            if isinstance(a, tuple):
                a = a[0]
            if a.ndim != x.ndim:
                raise ExplainError(f"Grad-CAM layer output has {a.ndim - 2} spatial dimensions, the "
                                   f"input {nd}: choose a convolutional layer as gradcam_layer")
            a = LayerAttribution.interpolate(a.float(), tuple(x.shape[2:]), _interp_mode(nd))
            return a[:, 0].detach().cpu()
        if method == "integrated_gradients":
            ig = IntegratedGradients(forward)
            a = ig.attribute(x, baselines=make_baseline(x, cfg.baseline), target=target,
                             n_steps=check_ig_steps(cfg.ig_steps),
                             internal_batch_size=int(cfg.ig_internal_batch))
            return a.sum(1).detach().float().cpu()
        if method == "saliency":
            a = Saliency(forward).attribute(x.requires_grad_(), target=target, abs=True)
            return a.amax(1).detach().float().cpu()
        if method == "occlusion":
            side = min(x.shape[2:])
            w = int(cfg.occlusion_window or max(2, side // 8))
            s = int(cfg.occlusion_stride or max(1, w // 2))
            c = x.shape[1]
            a = Occlusion(forward).attribute(
                x, sliding_window_shapes=(c,) + (min(w, side),) * nd, strides=(c,) + (s,) * nd,
                baselines=make_baseline(x, cfg.baseline), target=target,
                perturbations_per_eval=int(cfg.occlusion_batch))
            return a.mean(1).detach().float().cpu()
    raise ExplainError(f"unknown method {method}")  # pragma: no cover - canonical_method guards
