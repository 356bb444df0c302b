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

from ..jsonvalues import is_number

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


# --------------------------------------------------------------------------- shipped results
# the file itself (reading it, which weights it names, models verify) lives in validation, so
# the models package can verify it without importing explain (tests/test_models_security.py)
from ..validation.sanity_file import SANITY_FILE, recorded_doc as _recorded_doc  # noqa: F401
from ..validation.sanity_file import verify_sanity  # noqa: F401
from ..validation.sanity_file import weights_state as _weights_state


def recorded_sanity(card) -> dict:
    """``{method: {"passed", "final_spearman", ...}}`` measured for a model by
    ``scripts/check_explanations.py`` (``sanity.json`` in its folder); {} when absent, or when
    it was made with other weights (a retrained model: its verdicts say nothing about these
    weights, :func:`not_checked_note` says so).  A file without the weights' sha256 (older)
    is used as before; ``models verify`` says it has none."""
    doc = _recorded_doc(card)
    if not doc or _weights_state(card, doc)[0] == "other":
        return {}
    methods = doc.get("methods", {})
    out = {}
    for m, r in (methods.items() if isinstance(methods, dict) else ()):
        if not isinstance(r, dict) or not isinstance(r.get("passed", True), bool):
            continue  # not a result: as if the method had not been checked
        # the numbers are formatted into warnings: a value of another type is left out
        out[m] = {k: v for k, v in r.items() if k not in ("final_spearman", "threshold")
                  or is_number(v)}
    return out


def sanity_methods(card) -> list[str]:
    """The methods ``sanity.json`` holds a verdict for, whatever weights it was made with."""
    doc = _recorded_doc(card)
    methods = doc.get("methods") if doc else None
    return [m for m in methods if isinstance(m, str)] if isinstance(methods, dict) else []


def other_weights_reason(card) -> str | None:
    """Why the model's recorded sanity verdicts are not shown, when ``sanity.json`` was made with
    other weights than the card's (the same reason for every method); None otherwise."""
    doc = _recorded_doc(card)
    if not doc:
        return None
    status, rec, have = _weights_state(card, doc)
    if status != "other":
        return None
    return (f"the weight-randomisation sanity check of model {card.id} was made with other weights "
            f"(sha256 {str(rec)[:12]}…, these are {str(have)[:12]}…); rerun scripts/check_explanations.py")


def not_checked_note(card, method: str) -> str | None:
    """One line when the model's ``sanity.json`` holds a verdict for ``method`` made with other
    weights than the card's (its verdict is not shown: "not checked for these weights")."""
    if method not in sanity_methods(card):
        return None
    why = other_weights_reason(card)
    return f"{method.replace('_', ' ')} not checked for these weights: {why}" if why else None


def sanity_warning(card, method: str) -> str | None:
    """A one-line warning when ``method`` failed the randomisation check on this model, or when
    its recorded check was made with other weights (:func:`not_checked_note`)."""
    r = recorded_sanity(card).get(method)
    if not r:
        return not_checked_note(card, method)
    if r.get("passed", True):
        return None
    return (f"{method.replace('_', ' ')} failed the weight-randomisation sanity check on model "
            f"{card.id} (Spearman {r.get('final_spearman', float('nan')):.2f} between the trained and a "
            f"randomised network, limit {r.get('threshold', THRESHOLD)}): this map may show image "
            "structure rather than what the model learned; prefer gradcam")


def check_model(model, x: torch.Tensor, method: str, seed: int = 0, cfg=None) -> list[SanityReport]:
    """The cascade on a loaded card model for one preprocessed input ``x`` (1, C, *spatial).

    Classifiers: the predicted class is explained.  Segmenters: one report per structure
    found in the prediction (Seg-Grad-CAM target = the structure's logits over its region).
    """
    from ..models.architectures import get_layer, last_conv_layer
    from .methods import ExplainConfig, RegionScore, attribute, canonical_method

    method = canonical_method(method)
    cfg = cfg or ExplainConfig(method)
    card = model.card
    net = model.network.eval()
    layer_name = card.gradcam_layer or last_conv_layer(net)
    with torch.no_grad():
        out = net(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if card.task == "classification":
        targets = [(int(out.argmax(1)[0]), None)]
    else:
        lab = out.argmax(1)[0]
        targets = [(c, (lab == c).float()[None]) for c in range(1, out.shape[1]) if (lab == c).sum() > 0]
    reports = []
    for target, region in targets:
        def explain(n, target=target, region=region):
            fwd = n if region is None else RegionScore(n, target, region)
            layer = get_layer(n, layer_name) if method == "gradcam" else None
            return attribute(fwd, x, cfg, target=target if region is None else None,
                             layer=layer)[0].detach().numpy()

        rep = cascading_randomization(net, explain, method, seed=seed)
        rep.note = (rep.note + f" target {card.labels[target]}").strip()
        reports.append(rep)
    return reports
