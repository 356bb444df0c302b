"""The trust checks every result item gets before it is written (issue 14), shared by
``analyze``, ``batch`` and the demo so a result is the same whichever runs it: a research
override recorded (decisions withheld), the decision with the card's independent test-split
figures, the segmentation quality checks and the explanation region's checks."""

from __future__ import annotations

OVERRIDE_WITHHELD = "research override: the model card does not fit this series"


def withhold_overridden(res, overridden: list[str]) -> str:
    """A research override withholds the result's decisions (``res.decisions``, which the
    viewer's feedback box reads) and its prediction-log row's (logged at run time, before the
    override was applied: it was logged positive); returns the reason, "" without an override."""
    if not overridden:
        return ""
    from ..monitoring.log import withhold_logged
    from ..validation.ood import withhold

    withhold(getattr(res, "decisions", None), OVERRIDE_WITHHELD)
    withhold_logged(res)
    return OVERRIDE_WITHHELD


def apply_trust_checks(d: dict, res, card, overridden: list[str], match_warnings=()) -> None:
    """Issue 14: a research override is recorded and withholds decisions; classifications get
    the ``decision`` with the card's independent test-split figures; segmentations the
    card's ``quality`` checks (imaging_assist.inference.quality); an explanation region's checks
    were made where it was measured (explain.regions).  ``match_warnings``: what the card asks
    for that could not be checked on this input (``models.matching.match_card(...).warnings``)."""
    from .quality import attach_quality
    from ..models.operating_point import apply_decision

    withheld = ""
    if overridden:
        d["research_override"] = {"reasons": overridden,
                                  "note": "run with --research-override although the model card "
                                          "does not fit: research only, decisions withheld"}
        d["warnings"] = list(d.get("warnings") or []) + [
            "research override: the model card does not fit (" + "; ".join(overridden) + ")"]
        withheld = withhold_overridden(res, overridden)
    # fits, but something the card asks for could not be checked: said (the pipeline already says
    # that a plain image has no modality).  Here, not in each caller: the viewer's exports left it out
    said = " ".join(d.get("warnings") or [])
    extra = [w for w in match_warnings if not (w.startswith("plain image") and "modality" in said)]
    if extra:
        d["warnings"] = list(d.get("warnings") or []) + extra
    if "probabilities" in d:
        apply_decision(d, card, withheld)
    if getattr(res, "label_map", None) is not None:
        attach_quality(d, res.label_map, card)
    hms = d.get("heatmaps")
    if isinstance(hms, list) and getattr(res, "heatmaps", None):
        # the engine's verdict on each map (explain/flags.py), written with it: the viewer hid a
        # flagged map and said why, while analyze, batch and the report showed it unremarked
        from ..explain.flags import heatmap_flags

        for h, hm in zip(hms, res.heatmaps):
            if isinstance(h, dict) and (h.get("label"), h.get("method")) == (hm.label, hm.method):
                h["flags"] = heatmap_flags(hm, res, card)
