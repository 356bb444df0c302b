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


# --------------------------------------------------------------------------- near-duplicates
_CHECK_CMD = "scripts/check_split_duplicates.py"
_SPLIT_WORDS = {"train": "training", "validation": "validation", "test": "test"}
_NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _words(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _fig(f: dict, key: str, old: dict, label: str | None = None) -> str:
    """'0.913 (0.851-0.968) instead of 0.900': a figure without the listed images, its
    interval, and the whole test split's figure (split_duplicates.json, 3 decimals)."""
    v, ci, was = ((f[key], f[key + "_ci95"], old[key]) if label is None else
                  (f[key][label], f[key + "_ci95"][label], old[key][label]))
    return f"{v:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) instead of {was:.3f}"


def split_duplicates_limitation(out: Path, model_id: str, test: dict, *, data_set: str = "",
                                cause: str = "", focus: str | None = None) -> str:
    """The card's limitation sentence on near-duplicate images across the splits, built from
    ``out/split_duplicates.json`` (written by scripts/check_split_duplicates.py from the
    model's predictions.csv).  One function for the training scripts and
    tests/test_small_fixes_s24.py, so a retrain writes the sentence the shipped card has.

    ``test``: the test split's figures of these weights (``n``, ``macro_auc``, ``accuracy``).
    The JSON quotes the predictions it was run on; when they are not these (a retrain: the
    check runs after training, on the new predictions.csv) or the file is missing, the
    sentence says the check is to be run (and the script prints why) instead of quoting
    figures of other weights.  Layouts of the JSON:

    * BUSI-like (``test_images_with_cross_label_twin``): one frame stored under two labels;
      ``data_set`` names the data set, ``focus`` the class whose AUC is quoted too;
    * LC25000 (``test_tiles_with_copy_in_training``): test tiles with a copy in training;
      ``cause`` is the sentence's opening (why the grouping missed them)."""
    import sys

    f = Path(out) / "split_duplicates.json"
    todo = (f"Near-duplicate images across the splits were not checked for these weights: run python "
            f"{_CHECK_CMD} {model_id}, then this training script with --evaluate-only")
    if not f.is_file():
        print(f"note: {f} is missing: {todo}", file=sys.stderr, flush=True)
        return todo + "."
    d = json.loads(f.read_text(encoding="utf-8"))
    old = d["test_figures"]
    if (old["n"], old["macro_auc"], old["accuracy"]) != (int(test["n"]), round(float(test["macro_auc"]), 4),
                                                        round(float(test["accuracy"]), 4)):
        print(f"warning: {f} is from other predictions (test n/macro AUC/accuracy {old['n']}/{old['macro_auc']}/"
              f"{old['accuracy']}, these weights {test['n']}/{float(test['macro_auc']):.4f}/"
              f"{float(test['accuracy']):.4f}): {todo}", file=sys.stderr, flush=True)
        return todo + " (split_duplicates.json is from earlier predictions)."
    source = f"({_CHECK_CMD}, split_duplicates.json)."
    if "test_images_with_cross_label_twin" in d:
        twins = d["test_images_with_cross_label_twin"]
        c = d["counts"]
        if not twins:
            return (f"No test image has a near-duplicate under another label ({c['cross_label_pairs']} such pairs "
                    f"in {data_set}, {c['cross_split_pairs']} across splits) {source}")
        new = d["test_figures_without_cross_label_twins"]
        by_split = c["cross_label_pairs_by_split"]
        in_test = by_split.get("test", 0)
        if 2 * in_test == len(twins):  # both images of each such pair are test images
            what = ("One frame is" if in_test == 1 else f"{_words(in_test).capitalize()} frames are") + \
                   " in the test split twice under two labels"
        else:
            what = f"{_words(len(twins)).capitalize()} test images have a near-duplicate under another label"
        elsewhere = [f"{n} in {_SPLIT_WORDS.get(s, s)}" for s, n in by_split.items() if s != "test"]
        across = "none" if c["cross_split_pairs"] == 0 else str(c["cross_split_pairs"])
        names = " / ".join(Path(t).stem for t in twins)
        figs = [f"the test macro AUC is {_fig(new, 'macro_auc', old)}"]
        if focus:
            figs.append(f"{focus} AUC {_fig(new, 'auc', old, focus)}")
        figs.append(f"accuracy {_fig(new, 'accuracy', old)}")
        return (f"{what} ({names}; {c['cross_label_pairs']} such pairs in {data_set}, "
                + ", ".join(elsewhere + [f"{across} across splits"])
                + f"): without the {_words(len(twins))} " + ", ".join(figs) + f" {source}")
    leaked = d["test_tiles_with_copy_in_training"]
    val = d.get("validation_tiles_with_copy_in_training", [])
    if not leaked:
        return f"No test tile has a copy in training ({len(val)} validation tiles do) {source}"
    new = d["test_figures_without_leaked_tiles"]
    also = f" (and {len(val)} validation tiles)" if val else ""
    return (f"{cause}: {len(leaked)} of the {old['n']} test tiles{also} have a copy in training "
            f"({d['counts']['confirmed_pairs']} pairs confirmed by eye, each verified by registration); "
            f"without the {len(leaked)} the test macro AUC is {_fig(new, 'macro_auc', old)}, "
            f"accuracy {_fig(new, 'accuracy', old)} {source}")
