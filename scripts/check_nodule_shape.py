"""Elongation of the LIDC nodules (reference masks of ``lidc_nodule_vois``), the basis of the
vessel rule in imaging_assist/nodules/analysis.py (MAX_ELONGATION, WARN_ELONGATION).

Elongation = largest / smallest principal standard deviation (mm) of a mask's voxels
(``analysis.elongation``).  Prints the percentiles; the last line is one JSON object.

    .venv/bin/python scripts/check_nodule_shape.py [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from imaging_assist.nodules.analysis import MAX_ELONGATION, WARN_ELONGATION, elongation  # noqa: E402


def main() -> None:
    import nibabel as nib

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                   "data", "ct", "lidc_nodule_vois"))
    a = ap.parse_args()
    vals = []
    for r in csv.DictReader(open(os.path.join(a.data, "labels.csv"))):
        img = nib.load(os.path.join(a.data, r["mask"]))
        m = np.asarray(img.dataobj) > 0
        if m.sum() < 2:
            continue
        sp = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)  # (x, y, z) mm
        vals.append(elongation(np.transpose(m, (2, 1, 0)), tuple(sp)))
    v = np.array(vals)
    pct = {str(p): round(float(np.percentile(v, p)), 3) for p in (50, 90, 95, 99, 99.5, 100)}
    out = {"n": int(len(v)), "percentiles": pct,
           "share_above_warn": round(float((v > WARN_ELONGATION).mean()), 4),
           "share_above_max": round(float((v > MAX_ELONGATION).mean()), 4),
           "warn_elongation": WARN_ELONGATION, "max_elongation": MAX_ELONGATION}
    print(f"{len(v)} nodules; elongation percentiles {pct}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
