"""Agreement of the density impression (imaging_assist/nodules/measure.py) with the LIDC readers'
majority ``texture`` rating on every crop of ``lidc_nodule_vois`` (reference masks).

texture 1-2 (non-solid / non-solid-mixed) -> ground-glass, 3 (part-solid) -> part-solid,
4-5 (solid-mixed / solid) -> solid.  Prints the confusion table and, as the last line, one JSON
object.  The cut-offs in measure.py were chosen on these same crops (no held-out split: it
is an impression, reported as such), so the figures describe the fit, not a validation.

    .venv/bin/python scripts/check_nodule_density.py [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from imaging_assist.nodules.measure import core_mask, density_impression  # noqa: E402

CLASSES = ("ground-glass", "part-solid", "solid")
FROM_TEXTURE = {1: "ground-glass", 2: "ground-glass", 3: "part-solid", 4: "solid", 5: "solid"}


def main() -> None:
    import nibabel as nib

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                   "data", "ct", "lidc_nodule_vois"))
    a = ap.parse_args()
    rows = list(csv.DictReader(open(os.path.join(a.data, "labels.csv"))))
    table = np.zeros((3, 3), int)  # [reference, impression]
    for r in rows:
        img = np.asarray(nib.load(os.path.join(a.data, r["file"])).dataobj)
        msk = np.asarray(nib.load(os.path.join(a.data, r["mask"])).dataobj) > 0
        if not msk.any():
            continue
        # NIfTI (x, y, z) -> the engine's [k, j, i] so the erosion is in-plane as in measure.py
        img, msk = np.moveaxis(img, 2, 0), np.moveaxis(msk, 2, 0)
        _, imp = density_impression(img[core_mask(msk)])
        table[CLASSES.index(FROM_TEXTURE[int(r["texture"])]), CLASSES.index(imp)] += 1
    print("reference (rows) x impression (columns):", ", ".join(CLASSES))
    for c, row in zip(CLASSES, table):
        print(f"{c:>13}", " ".join(f"{v:5d}" for v in row))
    n = int(table.sum())
    recall = {c: round(float(table[i, i] / max(1, table[i].sum())), 3) for i, c in enumerate(CLASSES)}
    print(json.dumps({"n": n, "agreement": round(float(np.trace(table) / n), 3), "recall": recall,
                      "table": table.tolist(), "classes": list(CLASSES)}))


if __name__ == "__main__":
    main()
