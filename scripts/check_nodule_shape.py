"""Shape of the LIDC nodules (reference masks of ``lidc_nodule_vois``), the basis of the two
vessel rules in imaging_assist/nodules/analysis.py:

* elongation = largest / smallest principal standard deviation (mm) of a mask's voxels
  (``analysis.elongation``; MAX_ELONGATION, WARN_ELONGATION);
* axis ratio = long / short axis diameter on the slice of largest area (Fleischner's
  diameters, ``imaging_assist.nodules.measure.measure`` on the mask read by the engine's
  ``volume_from_nifti``; MAX_AXIS_RATIO, WARN_AXIS_RATIO).

Prints the percentiles; the last line is one JSON object.

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

from imaging_assist.nodules.analysis import (MAX_AXIS_RATIO, MAX_ELONGATION, WARN_AXIS_RATIO,  # noqa: E402
                                             WARN_ELONGATION, elongation)
from imaging_assist.nodules.measure import measure  # noqa: E402
from imaging_assist.nodules.window import volume_from_nifti  # noqa: E402


def main() -> None:
    import nibabel as nib

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                   "data", "ct", "lidc_nodule_vois"))
    a = ap.parse_args()
    vals, ratios = [], []
    for r in csv.DictReader(open(os.path.join(a.data, "labels.csv"))):
        img = nib.load(os.path.join(a.data, r["mask"]))
        m = np.asarray(img.dataobj) > 0
        if m.sum() < 2:
            continue
        sp = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)  # (x, y, z) mm
        vals.append(elongation(np.transpose(m, (2, 1, 0)), tuple(sp)))
        vm = volume_from_nifti(os.path.join(a.data, r["mask"]))
        mm = measure(np.asarray(vm.array) > 0, vm)
        ratios.append(mm.long_axis_mm / mm.short_axis_mm if mm.short_axis_mm > 0 else np.inf)
    v, q = np.array(vals), np.array(ratios)
    pct = {str(p): round(float(np.percentile(v, p)), 3) for p in (50, 90, 95, 99, 99.5, 100)}
    qpct = {str(p): round(float(np.percentile(q, p)), 3) for p in (50, 90, 95, 99, 99.5, 100)}
    out = {"n": int(len(v)), "percentiles": pct,
           "share_above_warn": round(float((v > WARN_ELONGATION).mean()), 4),
           "share_above_max": round(float((v > MAX_ELONGATION).mean()), 4),
           "warn_elongation": WARN_ELONGATION, "max_elongation": MAX_ELONGATION,
           "axis_ratio_percentiles": qpct,
           "axis_ratio_share_above_warn": round(float((q > WARN_AXIS_RATIO).mean()), 4),
           "axis_ratio_share_above_max": round(float((q > MAX_AXIS_RATIO).mean()), 4),
           "warn_axis_ratio": WARN_AXIS_RATIO, "max_axis_ratio": MAX_AXIS_RATIO}
    print(f"{len(v)} nodules; elongation percentiles {pct}")
    print(f"long / short axis ratio percentiles {qpct}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
