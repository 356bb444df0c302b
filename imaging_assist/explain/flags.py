"""When not to show a heat map: the engine's verdict on one explanation of one result.

A map is flagged (the viewer hides it by default and shows why) when

* its method failed the weight-randomisation sanity check recorded for the model
  (``sanity.json`` in the model folder, :func:`imaging_assist.explain.sanity.recorded_sanity`):
  the map may show image structure rather than what the model learned; or when that check was
  made with other weights (a retrained model): "not checked for these weights";
* its faithfulness score is negative (:mod:`imaging_assist.explain.faithfulness`): deleting the
  pixels it ranks highest lowers the score less than deleting random pixels;
* less than half of its positive attribution lies inside the card's ``explanation_region``
  (e.g. the lungs for ``cxr-pneumonia``; measured by :mod:`imaging_assist.explain.regions`),
  unless that region itself failed its quality checks (then the share means nothing and the
  region's own warning says so).

No Qt here.
"""

from __future__ import annotations

MOSTLY_OUTSIDE_BELOW = 0.5  # share of the positive attribution inside the card's region


def _title(method: str) -> str:
    return {"gradcam": "Grad-CAM", "integrated_gradients": "Integrated Gradients",
            "saliency": "Saliency", "occlusion": "Occlusion"}.get(method, method.replace("_", " "))


def heatmap_flags(hm, res=None, card=None, sanity: dict | None = None) -> list[str]:
    """Reasons (one line each) not to trust heat map ``hm`` of result ``res``; [] when none.

    ``sanity`` is ``{method: {"passed", "final_spearman", "threshold"}}`` (default: the card's
    recorded ``sanity.json``)."""
    # imported here: sanity imports torch, the viewer starts without it
    from .sanity import THRESHOLD, not_checked_note, recorded_sanity

    out: list[str] = []
    method = str(getattr(hm, "method", "") or "")
    rec = (sanity if sanity is not None else (recorded_sanity(card) if card is not None else {})).get(method)
    if rec and not rec.get("passed", True):
        out.append(f"{_title(method)} failed the weight-randomisation sanity check of "
                   f"{getattr(card, 'id', 'this model')} (Spearman {rec.get('final_spearman', float('nan')):.2f}, "
                   f"limit {rec.get('threshold', THRESHOLD)}): it may show image structure, not what "
                   "the model learned")
    elif sanity is None and card is not None:  # a verdict of other weights is not this model's
        stale = not_checked_note(card, method)
        if stale:
            out.append(stale)
    f = (getattr(hm, "faithfulness", None) or {}).get("faithfulness")
    if f is not None and f < 0:
        out.append(f"negative faithfulness ({f:+.2f}): removing the pixels it ranks highest changes the "
                   "score less than removing random pixels")
    er = getattr(res, "explanation_region", None) if res is not None else None
    if er and not er.get("error"):
        share = (er.get("fraction_inside_by_heatmap") or {}).get(getattr(hm, "label", None))
        if share is None and er.get("heatmap") == getattr(hm, "label", None):
            share = er.get("fraction_inside")
        q = er.get("quality") or {}
        region_ok = not (q.get("checked") and not q.get("passed"))
        if share is not None and share < MOSTLY_OUTSIDE_BELOW and region_ok:
            chance = er.get("region_fraction_of_image")
            out.append(f"mostly outside the {er.get('name', 'region')}: {100 * share:.0f}% of its positive "
                       f"attribution lies inside"
                       + (f" (they cover {100 * chance:.0f}% of the image)" if chance is not None else ""))
    return out


def flagged_text(h: dict) -> str | None:
    """One line for a results.json heat map whose ``flags`` are set (``apply_trust_checks``):
    "the Grad-CAM map of pneumonia is flagged: <reasons>"; None when it is not flagged."""
    flags = h.get("flags") if isinstance(h, dict) else None
    if not isinstance(flags, list) or not flags:
        return None
    return (f"the {_title(str(h.get('method') or ''))} map of {h.get('label')} is flagged (the viewer "
            f"hides it): {'; '.join(str(f) for f in flags)}")
