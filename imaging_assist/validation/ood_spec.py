"""The card's ``ood`` block: its methods and its checks (:func:`check_spec`).

Kept apart from :mod:`.ood` so that reading a model card does not import torch: the batch
driver and ``imaging-assist models`` read cards only (torch's import is about 1.1 s, measured
with ``python -X importtime``); the scoring itself lives in :mod:`.ood`.
"""

from __future__ import annotations

from ..jsonvalues import is_number

METHODS = ("mahalanobis", "knn")


def check_spec(spec: dict, where: str = "ood") -> list[str]:
    """Problems of a card's ``ood`` block, as short field-named phrases (empty: fine)."""
    p = []
    if not isinstance(spec, dict):
        return [f"{where}: must be an object"]
    if spec.get("method") not in METHODS:
        p.append(f"{where}.method: must be one of {', '.join(METHODS)}")
    f = spec.get("file")
    if not isinstance(f, str) or not f or "/" in f or "\\" in f or f.startswith("."):
        p.append(f"{where}.file: must be a plain file name beside the card")
    sha = spec.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        p.append(f"{where}.sha256: must be 64 lowercase hex digits")
    if not is_number(spec.get("threshold")):
        p.append(f"{where}.threshold: must be a finite number")
    layers = spec.get("layers")
    if not (isinstance(layers, list) and 0 < len(layers) <= 8
            and all(isinstance(x, str) and 0 < len(x) <= 200 for x in layers)):
        p.append(f"{where}.layers: must list 1-8 layer names")
    if "k" in spec and not (isinstance(spec["k"], int) and 1 <= spec["k"] <= 1000):
        p.append(f"{where}.k: must be an integer 1-1000")
    return p
