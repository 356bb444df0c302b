"""Model-card helpers of the training scripts: write a card keeping hand-added blocks, a card
for preprocessing before weights exist, the shipped weights for ``--evaluate-only``."""

from __future__ import annotations

import json
from pathlib import Path


# card blocks written by hand or by other scripts (population/quality_checks: issue 14); a
# retrain or --evaluate-only that rebuilds model.json keeps them instead of dropping them
_KEPT_CARD_BLOCKS = ("population", "quality_checks", "ood")


def write_json(path: Path, obj) -> None:
    path = Path(path)
    if path.name == "model.json" and isinstance(obj, dict) and path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        for k in _KEPT_CARD_BLOCKS:
            if k not in obj and isinstance(old, dict) and k in old:
                obj[k] = old[k]
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def card_for_training(card: dict):
    """A validated ModelCard from a card dict that has no weights yet (for preprocessing)."""
    from ..models.card import validate_card

    d = {"license": "-", "intended_use": "-", "data": {"training": "-", "validation": "-"}, **card,
         "format": "safetensors", "weights": [{"file": "model.safetensors", "sha256": "0" * 64}]}
    return validate_card(d, None)


def load_shipped(net, out: Path) -> tuple[dict, float, float, str]:
    """``--evaluate-only``: the shipped weights of ``out`` into ``net`` (temperature already
    folded in) and what the card recorded of their training:
    (info for the card, train seconds, temperature, device text)."""
    from safetensors.torch import load_file

    old = json.loads((Path(out) / "model.json").read_text())["training"]
    net.load_state_dict(load_file(str(Path(out) / "model.safetensors")))
    net.eval()
    info = {"epochs_run": old["epochs"], "best_epoch": old["best_epoch"]}
    return info, old["train_seconds"], old["temperature"], old["device"]


def keep_card_fields(card: dict, out: Path) -> dict:
    """``--evaluate-only``: the new card with every top-level field of the shipped card that
    the script does not write (e.g. ``population``, ``quality_checks`` added by hand or by
    other tools) kept, in the shipped card's order, so the card changes only where the
    measurement changed."""
    f = Path(out) / "model.json"
    if not f.is_file():
        return card
    old = json.loads(f.read_text())
    skip = {"format", "weights"}  # written by save_model_folder
    new = {k: (card[k] if k in card else old[k]) for k in old if k not in skip and (k in card or k in old)}
    new.update({k: v for k, v in card.items() if k not in new})
    return new
