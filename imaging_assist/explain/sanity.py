"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

The weights are re-initialised block by block from the output towards the input
("cascading", top-down) and the explanation is recomputed after each step.  An explanation
that depends on what the model learned must change: we require the Spearman rank
correlation between the absolute attributions of the trained and of the fully randomised
model to be below 0.5.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

THRESHOLD = 0.5
_MAX_POINTS = 500_000


@dataclass
class SanityReport:
    method: str
    steps: list[dict] = field(default_factory=list)  # {"block", "spearman"}
    final_spearman: float = float("nan")
    threshold: float = THRESHOLD
    passed: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return {"method": self.method, "steps": self.steps, "final_spearman": self.final_spearman,
                "threshold": self.threshold, "passed": self.passed, "note": self.note}


def blocks_top_down(net: nn.Module, max_steps: int = 8) -> list[tuple[str, nn.Module]]:
    """Layers that own parameters, from the output back to the input (registration order
    reversed), grouped into at most ``max_steps`` consecutive groups so that the cascade
    stays affordable for deep networks.  The last step always randomises everything."""
    layers = [(n, m) for n, m in net.named_modules()
              if any(True for _ in m.parameters(recurse=False))]
    layers.reverse()
    if not layers:
        return []
    k = max(1, math.ceil(len(layers) / max_steps))
    out = []
    for s in range(0, len(layers), k):
        grp = layers[s:s + k]
        names = grp[0][0] if len(grp) == 1 else f"{grp[0][0]} .. {grp[-1][0]}"
        out.append((names, nn.ModuleList([m for _, m in grp])))
    return out


def randomize_(module: nn.Module, gen: torch.Generator) -> None:
    """Re-initialise every parameter of ``module`` (reset_parameters where a layer has it,
    a small normal distribution otherwise) and reset normalisation statistics."""
    before = {id(p): p.detach().clone() for p in module.parameters()}
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's random state
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        for m in module.modules():
            if m is not module and hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    with torch.no_grad():
        for p in module.parameters():
            if torch.equal(p, before[id(p)]):
                p.normal_(0.0, 0.05, generator=gen)


def spearman(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    from scipy.stats import spearmanr

    a = np.abs(np.nan_to_num(np.asarray(a, np.float64).ravel()))
    b = np.abs(np.nan_to_num(np.asarray(b, np.float64).ravel()))
    if a.size > _MAX_POINTS:
        idx = np.random.default_rng(seed).choice(a.size, _MAX_POINTS, replace=False)
        a, b = a[idx], b[idx]
    if np.ptp(b) == 0:
        return 0.0  # the randomised explanation went flat: no rank agreement left
    return float(spearmanr(a, b).statistic)


def cascading_randomization(net: nn.Module, explain_fn: Callable[[nn.Module], np.ndarray],
                            method: str = "", seed: int = 0,
                            threshold: float = THRESHOLD) -> SanityReport:
    """Run ``explain_fn`` on ``net`` and on cascaded randomised copies; ``net`` is untouched."""
    base = np.asarray(explain_fn(net))
    rep = SanityReport(method=method, threshold=threshold)
    if np.ptp(np.nan_to_num(base)) == 0:
        rep.note = "the explanation of the original model is constant: the check is undefined"
        return rep
    work = copy.deepcopy(net).eval()
    gen = torch.Generator().manual_seed(seed)
    for name, block in blocks_top_down(work):
        randomize_(block, gen)
        r = spearman(base, explain_fn(work), seed)
        rep.steps.append({"block": name, "spearman": round(r, 4)})
    rep.final_spearman = rep.steps[-1]["spearman"]
    rep.passed = bool(rep.final_spearman < threshold)
    return rep
