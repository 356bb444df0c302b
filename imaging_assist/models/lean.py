"""Leave out what MONAI's package import loads but no shipped network uses.

``import monai`` loads, through its optional imports, torchvision (with torch._dynamo) and
scipy.signal, none of which a MONAI network, the card transforms or the engine use: about
1.3 s of MONAI's 3.0 s (``python -X importtime`` here; docs/scaling.md), paid by every batch
worker and every ``imaging-assist analyze`` before its first image.  Not matplotlib.pyplot
(0.2 s): Captum's explanations import it.

Only for a process that is about to load networks and then ends (a batch worker, the command
line's ``analyze``), never for one that may load any model later (the viewer, a test run):
the modules stay absent for the life of the process.
"""

from __future__ import annotations

import sys

#: Marked absent by :func:`lean_imports` (nothing in imaging_assist imports them).
LEAN_ABSENT = ("torchvision", "scipy.signal")


def lean_imports(model_ids, explain: bool = False) -> bool:
    """Mark :data:`LEAN_ABSENT` absent when no network of ``model_ids`` (ids or model folders,
    as ``Registry.get`` takes them; and, when ``explain``, no lung-region model of their
    explanations) needs them; returns whether it did.  Never raises: a model the registry
    cannot give leaves everything importable (the caller's own use of it says what is wrong).

    A ``None`` entry in ``sys.modules`` is Python's documented way to make an import fail
    (ModuleNotFoundError); MONAI's ``optional_import`` then leaves the parts built on them
    unusable, none of which a MONAI network or the card transforms use.  Done only when every
    model is a MONAI network in safetensors (not a torchvision one, not a bundle), and only in
    a process that has not imported MONAI or any of them yet; tests/test_batch.py and
    tests/test_startup_costs.py check the outputs equal those of a process that has them."""
    if "monai" in sys.modules or any(m in sys.modules for m in LEAN_ABSENT):
        return False
    from .registry import Registry

    try:
        reg = Registry()
        cards = [reg.get(m).card for m in model_ids]
        if explain:
            cards += [reg.get(c.explanation_region.model).card for c in cards if c.explanation_region is not None]
    except Exception:  # noqa: BLE001 - unknown, broken or unreadable: not this shortcut's to report
        return False
    if not cards:
        return False
    for card in cards:
        if card.format != "safetensors" or (card.architecture or {}).get("library") != "monai":
            return False
    for m in LEAN_ABSENT:
        sys.modules[m] = None
    return True
