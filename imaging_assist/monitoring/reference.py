"""The drift monitor's training reference: what the model's inputs and outputs looked like on
its own held-out validation images, measured through the SAME path every logged run takes
(``run_model`` -> :func:`.log.row_from_result`), so a logged run and a reference image are
summarised by identical code.

Stored as ``monitor_reference.json`` in the model folder (shipped models: ``weights/<id>/``;
fine-tuned candidates: their own folder), with the alert thresholds the monitor applies
(:data:`DEFAULT_THRESHOLDS`; a site overrides them in ``config_dir()/monitor.json``).

Fit (writes the file; reads images only):

    python -m imaging_assist.monitoring.reference --model cxr-pneumonia \\
        --data ../shared/data/cxr/pneumonia_kermany --split validation
    python -m imaging_assist.monitoring.reference --model us-breast \\
        --data ../shared/data/ultrasound/breast_busi --split validation
    python -m imaging_assist.monitoring.reference --model path-lung-tissue \\
        --data ../shared/data/pathology/lc25000_lung_subset --split validation
    python -m imaging_assist.monitoring.reference --model cxr-lung-seg \\
        --data ../shared/data/cxr/lung_masks_jsrt --split validation
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..jsonvalues import is_number

REFERENCE_FILE = "monitor_reference.json"
# Numeric per-run statistics compared with the reference (columns of the runs table).
INPUT_STATS = ("ood_score", "int_mean", "int_std", "int_p50")
OUTPUT_STATS = ("score",)
# Alert rules (each stated with its reason; docs/monitoring.md):
DEFAULT_THRESHOLDS = {
    # a distribution alerts when BOTH the two-sample KS test rejects "same distribution as the
    # reference" at ks_p AND the population stability index shows a material shift (>= psi;
    # 0.2 is the usual "significant shift" line of credit-risk practice): the p-value alone
    # alerts on trivial shifts in big windows, PSI alone is noisy in small ones.
    "ks_p": 0.001, "psi": 0.2, "psi_bins": 10,
    # rates (positive rate, OOD-flag rate) alert when an exact binomial test against the
    # reference rate rejects at rate_p AND the difference is at least rate_diff.
    "rate_p": 0.001, "rate_diff": 0.10,
    # categorical metadata (manufacturer, modality): PSI over categories >= psi
    # windows with fewer runs than this are shown but never alert (too noisy)
    "min_n": 30,
    # agreement with readers: alert when the upper 95% Wilson bound is below this
    "agreement_min": 0.80,
    # reader-confirmed performance: alert when the AUC's upper 95% bound is below the card's
    # reference AUC minus this margin
    "auc_margin": 0.05,
}
# what a threshold may be (checked when a reference or monitor.json is read); whole numbers for
# the two counts; psi_bins is capped (it sizes arrays)
_THRESHOLD_RANGES = {"ks_p": (0, 1), "psi": (0, math.inf), "psi_bins": (2, 1000), "rate_p": (0, 1),
                     "rate_diff": (0, 1), "min_n": (0, math.inf), "agreement_min": (0, 1), "auc_margin": (0, 1)}


def reference_path(card) -> Path | None:
    return None if card.folder is None else Path(card.folder) / REFERENCE_FILE


def load_reference(card) -> dict | None:
    p = reference_path(card)
    if p is None or not p.is_file():
        return None
    refit = "refit it with python -m imaging_assist.monitoring.reference"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{p} cannot be read ({e}); {refit}") from None
    if not isinstance(d, dict):
        raise UserError(f"{p} is not a monitor reference (no JSON object); {refit}")
    if d.get("model_id") != card.id:
        raise UserError(f"{p} is the reference of model {str(d.get('model_id'))[:80]!r}, not {card.id!r}")
    why = _reference_problem(d)
    if why:
        raise UserError(f"{p}: {why}; {refit}")
    _checked_thresholds(d.get("thresholds"), str(p))
    return d


def _reference_problem(d: dict) -> str | None:
    """What the drift monitor would trip over in a reference (None: nothing): checked on
    reading, so that a damaged file is one line here instead of an exception mid-report."""
    vals = d.get("values")
    if not isinstance(vals, dict):
        return "no 'values' object"
    for k, v in vals.items():  # (type() rather than _real: thousands of values per list)
        if not isinstance(v, list) or not all(type(x) in (int, float) and -1e308 < x < 1e308 for x in v):
            return f"values {k[:40]!r} is not a list of finite numbers"
    cats = d.get("categories") or {}
    if not isinstance(cats, dict) or not all(
            isinstance(c, dict) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in c.values())
            for c in cats.values()):
        return "categories must map each name to {category: count}"
    rates = d.get("rates") or {}
    if not isinstance(rates, dict) or not all(r is None or is_number(r, 0, 1) for r in rates.values()):
        return "rates must be numbers from 0 to 1 (or null)"
    if d.get("auc") is not None and not is_number(d["auc"], 0, 1):
        return "auc must be a number from 0 to 1 (or null)"
    return None


def _checked_thresholds(t, where: str) -> dict:
    """A ``thresholds`` object (of a reference or monitor.json) checked on reading: a one-line
    UserError naming ``where`` for an unknown key or a value of the wrong type or range."""
    if t is None:
        return {}
    if not isinstance(t, dict):
        raise UserError(f"{where}: 'thresholds' is not an object")
    out = {}
    for k, v in t.items():
        if k not in _THRESHOLD_RANGES:
            raise UserError(f"{where}: unknown threshold {k[:40]!r} (known: {', '.join(DEFAULT_THRESHOLDS)})")
        lo, hi = _THRESHOLD_RANGES[k]
        whole = isinstance(DEFAULT_THRESHOLDS[k], int)
        if not is_number(v, lo, hi) or (whole and v != int(v)):
            raise UserError(f"{where}: threshold {k} must be {'a whole number' if whole else 'a number'} "
                            f"from {lo} to {hi}, not {str(v)[:40]!r}")
        out[k] = int(v) if whole else v
    return out


def thresholds(reference: dict | None) -> dict:
    """Defaults <- the reference file's ``thresholds`` <- the site's ``config_dir()/monitor.json``
    (each checked: one-line UserError for a wrong key, type or range)."""
    from ..userdirs import config_dir

    t = dict(DEFAULT_THRESHOLDS)
    if reference:
        t.update(_checked_thresholds(reference.get("thresholds"), "the monitor reference"))
    site = config_dir() / "monitor.json"
    if site.is_file():
        try:
            d = json.loads(site.read_text(encoding="utf-8")) or {}
            site_t = d.get("thresholds")
        except (OSError, ValueError, RecursionError, AttributeError) as e:
            raise UserError(f"{site} cannot be read ({e})") from None
        t.update(_checked_thresholds(site_t, str(site)))
    return t


def reference_unit(card) -> dict:
    """What one reference value describes.  A slide model's reference is fitted on its tile
    images (one row = one tile-sized image); a whole-slide run's row summarises many tiles, so
    the monitor does not compare slide rows with it (drift.monitor_model says so)."""
    if isinstance(card.raw.get("slide"), dict):
        return {"unit": "tile", "unit_note": "one value per tile image run through run_model (the data set's "
                "tile-sized images, not whole slides); whole-slide runs (log kind 'slide') are not compared "
                "with it"}
    return {"unit": "image", "unit_note": "one value per image run through run_model"}


def reference_from_rows(rows: list[dict], card, data: str, auc: float | None = None) -> dict:
    """The reference block from per-image rows (:func:`.log.row_from_result`)."""
    def vals(k):
        return [round(float(r[k]), 6) for r in rows if r.get(k) is not None and np.isfinite(r[k])]

    def cats(k):
        out: dict[str, int] = {}
        for r in rows:
            c = r.get(k) or "(none)"
            out[c] = out.get(c, 0) + 1
        return out

    pos = [r["positive"] for r in rows if r.get("positive") is not None]
    flagged = [r["ood_flagged"] for r in rows if r.get("ood_flagged") is not None]
    w = (card.weights or [None])[0]
    return {
        "model_id": card.id, "model_version": card.version,
        "weights_sha256": getattr(w, "sha256", None),
        # the OOD statistics the reference scores were computed with (a refit makes them stale)
        "ood_sha256": (card.ood or {}).get("sha256") if isinstance(getattr(card, "ood", None), dict) else None,
        "data": data, "n": len(rows), **reference_unit(card),
        "fitted": _dt.date.today().isoformat(),
        "fitted_by": "python -m imaging_assist.monitoring.reference (run_model + log.row_from_result)",
        "values": {k: vals(k) for k in INPUT_STATS + OUTPUT_STATS},
        "categories": {"manufacturer": cats("manufacturer"), "modality": cats("modality")},
        "rates": {"positive": float(np.mean(pos)) if pos else None,
                  "ood_flagged": float(np.mean(flagged)) if flagged else None},
        "auc": auc,
        "thresholds": dict(DEFAULT_THRESHOLDS),
    }


def fit(model, images: list[Path], data_text: str, labels: list[int] | None = None,
        progress=None) -> dict:
    """Run ``model`` on ``images`` (not logged) and build the reference."""
    from ..evaluation import roc_auc
    from ..inference import RunOptions, read_image, run_model
    from .log import paused, row_from_result

    rows = []
    with paused():
        for i, p in enumerate(images):
            vol = read_image(p)
            res = run_model(model, vol, RunOptions(device="cpu"))
            rows.append(row_from_result(model, vol, res, pseudonymise=False))
            if progress:
                progress(i + 1, len(images))
    auc = None
    if labels is not None:
        sc = [r["score"] for r in rows]
        auc = round(float(roc_auc(labels, sc)), 4)
    return reference_from_rows(rows, model.card, data_text, auc)


def _split_files(card, data: Path, split: str) -> tuple[list[Path], list[int] | None]:
    """Files of one split of the card folder's ``predictions.csv`` (the training scripts' split);
    cxr-lung-seg's predictions.csv lists only its test images, so its split is recomputed by the
    training code's own ``jsrt_split`` (same seed, same rows)."""
    if card.id == "cxr-lung-seg":
        return _jsrt_files(data, split), None
    pc = Path(card.folder) / "predictions.csv"
    if not pc.is_file():
        raise UserError(f"{pc} is missing: no split to fit the reference on")
    files, labels = [], []
    pos_label = next((lab for lab in card.thresholds), None)
    with pc.open(newline="") as f:
        for r in csv.DictReader(f):
            if (r.get("split") or r.get("set")) != split:
                continue
            files.append(data / r["file"])
            if "label" in r and pos_label is not None:
                labels.append(int(r["label"] == pos_label))
    if not files:
        raise UserError(f"no rows with split {split!r} in {pc}")
    return files, (labels if len(labels) == len(files) and len(set(labels)) == 2 else None)


def _jsrt_files(data: Path, split: str) -> list[Path]:
    from ..training import jsrt_split

    names = {"train": 0, "validation": 1, "test": 2}
    if split not in names:
        raise UserError(f"split {split!r} is not one of {', '.join(names)}")
    lc = Path(data) / "labels.csv"
    if not lc.is_file():
        raise UserError(f"{lc} is missing: give --data the JSRT folder (cxr/lung_masks_jsrt)")
    rows = list(csv.DictReader(lc.open(newline="", encoding="utf-8")))
    sp, _ = jsrt_split(rows, seed=0)
    return [Path(data) / r["file"] for r, k in zip(rows, sp) if k == names[split]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, type=Path, help="folder the predictions.csv files are relative to")
    ap.add_argument("--split", default="validation")
    a = ap.parse_args(argv)
    from ..models.registry import Registry

    model = Registry().load(a.model)
    files, labels = _split_files(model.card, a.data, a.split)
    if model.card.id == "cxr-lung-seg":
        text = (f"{a.split} split of JSRT (training.jsrt_split, seed 0, the training script's split; one image per "
                f"patient) ({len(files)} images)")
    else:
        text = f"{a.split} split of {model.card.folder.name}/predictions.csv ({len(files)} images)"
    if reference_unit(model.card)["unit"] == "tile":
        text += ("; tile images, no patient ids (the split is by near-duplicate group of the training script), "
                 "so the reference describes tiles, not patients or slides")
    ref = fit(model, files, text, labels,
              progress=lambda i, n: print(f"\r{i}/{n}", end="", file=sys.stderr))
    out = reference_path(model.card)
    out.write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}: n={ref['n']}, rates={ref['rates']}, auc={ref['auc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
