"""Model panel helpers without Qt: how run results read as text (findings with their operating point, sizes, timings, heat maps).

Kept free of Qt and torch so that it is cheap to import and easy to test.
"""

from __future__ import annotations

import html
import math

import numpy as np

from ..shared.text import one_line, plain_tip  # noqa: F401 - re-exported for the panel

# (shown text, engine method name); None = no explanation.  Grad-CAM first: the default.
EXPLAIN_CHOICES: list[tuple[str, str | None]] = [
    ("Grad-CAM", "gradcam"),
    ("Integrated Gradients", "integrated_gradients"),
    ("Saliency", "saliency"),
    ("Occlusion", "occlusion"),
    ("None", None),
]
METHOD_TITLES = {m: t for t, m in EXPLAIN_CHOICES if m}


# =========================================================================== matching
# One rule set for analyze, the headless demo and this panel: the engine's (re-exported here
# for older imports; the UI keeps no copy of the rules).
from imaging_assist.models.matching import Match, SeriesFacts, match_card, series_facts  # noqa: E402,F401


# =========================================================================== formatting
# one rule with the engine's decision lines, the report and the CLI: as many decimals as it
# takes to read on the same side of the printed threshold
from imaging_assist.models.operating_point import format_probability as _fmt_prob  # noqa: E402


def decision_text(label: str, p: float, decision: dict | None) -> str:
    """``pneumonia 0.910 ≥ 0.62 → positive`` (or ``(no operating point)``)."""
    if decision is None:
        return f"{label} {_fmt_prob(p)} (no operating point in the card)"
    thr = float(decision["threshold"])
    pos = bool(decision["positive"])
    return f"{label} {_fmt_prob(p, thr)} {'≥' if pos else '<'} {thr:g} → {'positive' if pos else 'negative'}"


def operating_point_text(decision: dict | None) -> str:
    if not decision:
        return ""
    bits = []
    if decision.get("note"):  # "site threshold 0.62, from 412 local studies, 2026-12-04" (models.site)
        bits.append(str(decision["note"]))
    if decision.get("sensitivity") is not None:
        bits.append(f"sensitivity {decision['sensitivity']:.2f}")
    if decision.get("specificity") is not None:
        bits.append(f"specificity {decision['specificity']:.2f}")
    return ", ".join(bits)


def finding_lines(res) -> list[str]:
    """One line per classifier output, in the card's label order."""
    return [decision_text(lab, float(res.probabilities[lab]), res.decisions.get(lab))
            for lab in res.labels if lab in res.probabilities]


def size_lines(res) -> list[str]:
    """Segmentation: one line per structure with its volume (mL), area (mm²) or pixels, and
    where the pixel size comes from (``res.spacing_source``)."""
    out = []
    src = getattr(res, "spacing_source", "none") or "none"
    for lab, n in res.voxel_counts.items():
        if res.volume_ml is not None and src != "none":
            out.append(f"{lab}: {res.volume_ml[lab]:.2f} mL ({n:,} voxels; {src})")
        elif res.area_mm2 is not None and src != "none":
            out.append(f"{lab}: {res.area_mm2[lab]:.1f} mm² ({n:,} pixels; {src})")
        else:
            out.append(f"{lab}: {n:,} px (no pixel spacing)")
    return out


_TIMING_NAMES = (("preprocess_s", "preprocess"), ("infer_s", "inference"),
                 ("postprocess_s", "postprocess"), ("explain_s", "explanation"), ("total_s", "total"))


def timings_text(res, load_s: float | None = None) -> str:
    bits = [f"{res.device} · {res.precision}"]
    if load_s is not None and load_s >= 0.005:
        bits.append(f"model load {load_s:.2f} s")
    for key, name in _TIMING_NAMES:
        if key in res.timings:
            bits.append(f"{name} {float(res.timings[key]):.2f} s")
    return " · ".join(bits)


def _one_based(text: str) -> str:
    """The engine counts slices from 0; the viewer shows 'Image 7 / 28'."""
    import re

    return re.sub(r"\bslice (\d+)\b", lambda m: f"image {int(m.group(1)) + 1}", text)


def heat_text(hm) -> str:
    """``Grad-CAM · pneumonia: faithfulness +0.42 (deletion AUC 0.21, random 0.55) on the whole image``."""
    title = METHOD_TITLES.get(hm.method, hm.method)
    f = hm.faithfulness
    if not f:
        fs = "faithfulness not computed"
    elif f.get("faithfulness") is None:
        fs = "faithfulness n/a (score 0 before deletion)"
    else:
        where = f" on {_one_based(f['where'])}" if f.get("where") else ""
        where = where.replace(" on whole image", " on the whole image")
        fs = (f"faithfulness {f['faithfulness']:+.2f} (deletion AUC {f['deletion_auc']:.3f}, "
              f"random {f['random_deletion_auc']:.3f}){where}")
    return f"{title} · {hm.label}: {fs}"


def heat_display(array: np.ndarray, method: str) -> tuple[float, float, float, str]:
    """(vmin, vmax, threshold, note) to show a heat map as an overlay.

    Grad-CAM is ≥ 0: 0..max, values under 20 % hidden.  Saliency, Integrated Gradients
    and occlusion are noisy at the pixel level (and the last two signed): the colour range
    ends at the 99.5th percentile of the positive values and only positive evidence shows.
    """
    a = np.asarray(array, np.float32).ravel()
    step = max(1, a.size // 4_000_000)  # a sample is plenty for a display range
    sample = a[::step]
    pos = sample[np.isfinite(sample) & (sample > 0)]
    if pos.size == 0:
        return 0.0, 1.0, math.inf, "nothing positive to show"
    if method == "gradcam":
        hi = float(np.nanmax(a)) if step > 1 else float(pos.max())
        frac = 0.2
    else:
        hi = float(np.percentile(pos, 99.5)) or float(pos.max())
        frac = 0.25
    note = "" if method in ("gradcam", "saliency") else "positive evidence shown"
    return 0.0, hi, frac * hi, note


def key_slice(array: np.ndarray, res=None, label: str | None = None) -> int:
    """The slice to look at for a heat map: for a per-slice classifier the slice where the
    label is most probable, otherwise the one with the most positive attribution."""
    a = np.asarray(array, np.float32)
    if a.shape[0] <= 1:
        return 0
    per = getattr(res, "per_slice", None) if res is not None else None
    if per and label is not None and all(label in p for p in per):
        return int(np.argmax([p[label] for p in per]))
    pos = np.where(np.isfinite(a) & (a > 0), a, 0.0)
    return int(np.argmax(pos.reshape(a.shape[0], -1).sum(1)))


def esc(s) -> str:
    return html.escape(str(s), quote=True)
