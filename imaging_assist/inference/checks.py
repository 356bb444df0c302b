"""The trust checks every result item gets before it is written (issue 14), shared by
``analyze``, ``batch`` and the demo so a result is the same whichever runs it: a research
override recorded (decisions withheld), the decision with the card's independent test-split
figures, the segmentation quality checks and the explanation region's checks."""

from __future__ import annotations


def apply_trust_checks(d: dict, res, card, overridden: list[str], region_card=None) -> None:
    """Issue 14: a research override is recorded and withholds decisions; classifications get
    the ``decision`` with the card's independent test-split figures; segmentations the
    card's ``quality`` checks (imaging_assist.inference.quality).  ``region_card``: the card of
    the explanation region's segmenter when the caller has it (else the registry's)."""
    from .quality import attach_quality
    from ..models.operating_point import apply_decision

    withheld = ""
    if overridden:
        d["research_override"] = {"reasons": overridden,
                                  "note": "run with --research-override although the model card "
                                          "does not fit: research only, decisions withheld"}
        d["warnings"] = list(d.get("warnings") or []) + [
            "research override: the model card does not fit (" + "; ".join(overridden) + ")"]
        withheld = "research override: the model card does not fit this series"
    if "probabilities" in d:
        apply_decision(d, card, withheld)
    if getattr(res, "label_map", None) is not None:
        attach_quality(d, res.label_map, card)
    er = d.get("explanation_region")
    if isinstance(er, dict) and getattr(res, "region_map", None) is not None:
        from .quality import attach_region_quality
        from ..models.registry import Registry

        seg = region_card
        try:
            if seg is None or seg.id != er.get("model"):
                seg = Registry().get(er.get("model")).card
        except Exception:  # noqa: BLE001 - the region already ran; no checks without its card
            seg = None
        attach_region_quality(d, res.region_map, seg)
