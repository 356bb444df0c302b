#!/usr/bin/env python
"""Validation and test AUC of several runs of a classifier's training script, and of the
average of their probabilities, from each run's ``predictions.csv`` (columns ``split``,
``label``, ``p_malignant`` or ``p_<positive>``): how far runs differ by their seed alone, and
what averaging them would give.  Nothing is chosen here.

    python scripts/compare_predictions.py RUN_DIR [RUN_DIR ...] [--positive malignant]

Last stdout line: one JSON object {"runs": {dir: {split: auc}}, "mean_of_runs": {split: auc}}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imaging_assist import evaluation as E  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--positive", default="malignant")
    args = ap.parse_args(argv)
    probs, labels, splits = [], None, None
    for d in args.runs:
        rows = list(csv.DictReader((d / "predictions.csv").open()))
        key = f"p_{args.positive}"
        if labels is None:
            labels = np.array([r["label"] == args.positive for r in rows], int)
            splits = np.array([r["split"] for r in rows])
            files = [r.get("file") for r in rows]
        elif [r.get("file") for r in rows] != files:
            raise SystemExit(f"{d}: predictions.csv lists other images than {args.runs[0]}")
        probs.append(np.array([float(r[key]) for r in rows]))
    names = sorted(set(str(s) for s in splits))
    out = {"runs": {str(d): {s: round(E.roc_auc(labels[splits == s], p[splits == s]), 4) for s in names}
                    for d, p in zip(args.runs, probs)}}
    mean = np.mean(probs, 0)
    out["mean_of_runs"] = {s: round(E.roc_auc(labels[splits == s], mean[splits == s]), 4) for s in names}
    for d, r in out["runs"].items():
        print(d, r)
    print("mean of the runs' probabilities", out["mean_of_runs"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
