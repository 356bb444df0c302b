"""The explanation sanity check's file, ``sanity.json`` in a model's folder (written by
``scripts/check_explanations.py`` / ``check_nodule_explanations.py``; its verdicts are read by
:mod:`imaging_assist.explain.sanity`): reading it, and whether it was made with the card's
weights (``weights_sha256``).  Here rather than in ``explain`` so that ``models verify``
(:func:`imaging_assist.models.loaders.verify`) can check it without the models package
importing explain."""

from __future__ import annotations

SANITY_FILE = "sanity.json"


def recorded_doc(card) -> dict:
    """The parsed ``sanity.json`` of a card's folder; {} when absent or unreadable."""
    import json

    folder = getattr(card, "folder", None)
    if folder is None:
        return {}
    p = folder / SANITY_FILE
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def weights_state(card, doc: dict) -> tuple[str, str | None, str | None]:
    """("ok" | "none" | "other", recorded weights sha256, the card's) of a sanity.json: was it
    made with this card's weights (:func:`imaging_assist.validation.ood.weights_hash_status`)?"""
    from .ood import WEIGHTS_KEY, weights_hash_status

    rec = doc.get(WEIGHTS_KEY)
    status, have = weights_hash_status(card, rec)
    return status, rec if isinstance(rec, str) else None, have


def verify_sanity(card) -> tuple[bool, str | None, str | None, str] | None:
    """``models verify``: (ok, the card's weights sha256, the one sanity.json names, message);
    None without a sanity.json.  Never a failure (the weights are fine; only the explanation
    check is stale): ok with a message when the file is of other weights or has no hash."""
    doc = recorded_doc(card)
    if not doc:
        return None
    status, rec, have = weights_state(card, doc)
    if status == "other":
        return True, have, rec, (f"{SANITY_FILE} was made with other weights (sha256 {str(rec)[:12]}…, "
                                 f"these are {str(have)[:12]}…): its explanation checks are shown as not "
                                 "checked for these weights; rerun scripts/check_explanations.py")
    if status == "none":
        from .ood import NO_WEIGHTS_HASH

        return True, have, None, (f"{SANITY_FILE} {NO_WEIGHTS_HASH}: cannot tell whether its explanation "
                                  "checks are of these weights; rerun scripts/check_explanations.py to record it")
    return True, have, rec, "ok"
