"""Faithfulness of a heat map: the deletion curve (Petsiuk et al., RISE 2018).

Pixels are replaced by the baseline in the order of the heat map (most attributed first)
and the model's score for the explained target is recorded after each step; the area under
that curve (x = fraction removed, 0..1) is the *deletion AUC*.  A faithful heat map makes
the score fall fast, so its AUC is lower than that of a random order.  We report both and

    faithfulness = (random_auc - deletion_auc) / score_at_0

(> 0: better than random; 0: no better than random; < 0: worse than random).

Written with PyTorch directly: Captum 0.9 has ``infidelity``/``sensitivity_max`` but no
deletion curve.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, *S) -> (B,) scores


def _curve(score_fn: ScoreFn, x: torch.Tensor, order: torch.Tensor, baseline: torch.Tensor,
           steps: int, chunk: int) -> np.ndarray:
    c = x.shape[1]
    n = order.numel()
    counts = np.round(np.linspace(0, 1, steps + 1) * n).astype(np.int64)
    xf = x.reshape(1, c, n)
    bf = baseline.reshape(1, c, n)
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, steps + 1, chunk):
            batch = []
            for m in counts[start:start + chunk]:
                xi = xf.clone()
                idx = order[:m]
                xi[:, :, idx] = bf[:, :, idx]
                batch.append(xi.reshape(x.shape))
            s = score_fn(torch.cat(batch, 0))
            scores.extend(float(v) for v in s.float().cpu())
    return np.asarray(scores)


def deletion_auc(score_fn: ScoreFn, x: torch.Tensor, attribution: torch.Tensor,
                 baseline: torch.Tensor, steps: int = 10, seed: int = 0,
                 chunk: int = 4) -> dict:
    """Deletion AUC of ``attribution`` (spatial shape of ``x``) and of a random order."""
    x = x.detach()
    a = torch.as_tensor(attribution).detach().float().reshape(-1).cpu()
    if a.numel() != int(np.prod(x.shape[2:])):
        raise ValueError("attribution and input have different spatial sizes")
    a = torch.nan_to_num(a, nan=-float("inf"))
    # Stable order; ties (e.g. zeros after ReLU) are broken randomly so that a flat region
    # does not remove pixels in raster order.
    g = torch.Generator().manual_seed(seed)
    jitter = torch.rand(a.numel(), generator=g) * 1e-12 * (float(a[torch.isfinite(a)].abs().max()) + 1e-30
                                                         if torch.isfinite(a).any() else 1.0)
    order = torch.argsort(a + jitter, descending=True).to(x.device)
    rand_order = torch.randperm(a.numel(), generator=g).to(x.device)
    fr = np.linspace(0, 1, steps + 1)
    ours = _curve(score_fn, x, order, baseline, steps, chunk)
    rand = _curve(score_fn, x, rand_order, baseline, steps, chunk)
    auc = float(np.trapezoid(ours, fr))
    rauc = float(np.trapezoid(rand, fr))
    s0 = float(ours[0])
    return {"deletion_auc": round(auc, 6), "random_deletion_auc": round(rauc, 6),
            "faithfulness": round((rauc - auc) / s0, 6) if abs(s0) > 1e-12 else None,
            "score_at_0": round(s0, 6), "steps": steps,
            "curve": [round(float(v), 6) for v in ours],
            "random_curve": [round(float(v), 6) for v in rand]}
