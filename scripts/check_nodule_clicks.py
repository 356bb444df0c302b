#!/usr/bin/env python
"""Clicks that are not on a nodule, in a real scan: how often does the nodule workflow still
report one?  (The segmenter's card measures it on the LIDC crops; this is the whole-scan check.)

On the real LIDC-IDRI-0001 slab (``ct/lidc_idri_0001_slab``, 16 slices of 2.5 mm; patient
LIDC-IDRI-0001 is in the models' test split), ``--n`` clicks of each kind of
``_ct_nodule_data.NEG_KINDS`` (on a bright structure inside the lung, or in the parenchyma 2-4 mm
beside one: ``negative_candidates``, the rule the training script's negatives use) at least
``FAR_MM`` from the slab's nodule and deep in the lung (at least 75 % of a 3-slice x 20 mm box
darker than -600 HU, so the hilum, mediastinum and chest wall are left out, and inside the body
outline, so the air around the chest is too), fixed seed.  Each
click goes through the whole workflow (:func:`imaging_assist.nodules.analysis.analyze_at`, the
shipped models): ``reported`` = a nodule mask came back, ``reported_not_flagged`` = and the OOD
statistics did not flag the window, ``reported_without_any_warning`` = and no warning at all came
with it (no OOD flag, not elongated, not at the window's edge), ``refused_shape`` = refused by a vessel rule (elongation,
axis ratio).

Writes ``weights/ct-nodule-seg/slab_clicks.json``; the last stdout line is one JSON object.

    .venv/bin/python scripts/check_nodule_clicks.py [--n 40] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ct_nodule_data as D  # noqa: E402
import _training as T  # noqa: E402

SLAB = T.DATA / "ct" / "lidc_idri_0001_slab"
SLAB_NODULE_LPS = np.array([56.20840547, 86.34341278, -115.8675792])  # labels.csv, LIDC-IDRI-0001_R_1
FAR_MM = 25.0


def main(argv=None) -> int:
    from scipy import ndimage

    from imaging_assist.dicom import load_series, scan
    from imaging_assist.nodules.analysis import analyze_at
    from imaging_assist.nodules.models import SEG_ID

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="clicks of each kind")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    vol = load_series(scan(str(SLAB)).all_series()[0])
    a = np.asarray(vol.array, np.float32)
    box = [max(1, int(round(s / sp))) for s, sp in zip((7.5, 20.0, 20.0), vol.spacing[::-1])]
    deep = ndimage.uniform_filter((a < -600).astype(np.float32), size=box) >= 0.75
    # inside the body (its outline per slice: tissue above -500 HU, holes filled, so the lungs are
    # inside): the box rule alone also passes the air around the chest (26 of 100 "beside" clicks
    # of the earlier runs were outside the body)
    deep &= np.stack([ndimage.binary_fill_holes(s > -500.0) for s in a])
    cand = D.negative_candidates(vol, np.zeros(a.shape, bool))
    rng = np.random.default_rng(args.seed)
    out = {"slab": "ct/lidc_idri_0001_slab (LIDC-IDRI-0001, test split)", "far_from_nodule_mm": FAR_MM,
           "seed": args.seed, "models": None, "kinds": {}}
    for kind in D.NEG_KINDS:
        pts = np.argwhere(cand[kind] & deep)
        lps = np.array([vol.index_to_lps(i, j, k) for k, j, i in pts], float)
        keep = np.linalg.norm(lps - SLAB_NODULE_LPS, axis=1) >= FAR_MM
        lps = lps[keep]
        pick = rng.choice(len(lps), min(args.n, len(lps)), replace=False)
        res = [analyze_at(vol, lps[q], "X", explain=False) for q in pick]
        out["models"] = res[0].models
        rep = [r for r in res if r.found]
        out["kinds"][kind] = {"clicks": len(res), "reported": len(rep),
                              "reported_not_flagged": sum(1 for r in rep if not r.ood.get("flagged")),
                              "reported_without_any_warning": sum(1 for r in rep if not r.warnings),
                              "refused_shape": sum(1 for r in res if not r.found and ("elongated" in r.reason
                                                                                    or "longer than wide" in r.reason)),
                              "refused_air": sum(1 for r in res if not r.found and "in air outside the body" in r.reason),
                              "median_reported_volume_mm3": (round(float(np.median([r.volume_mm3 for r in rep])), 0)
                                                             if rep else None)}
        print(kind, out["kinds"][kind], flush=True)
    tot = {k: sum(v[k] for v in out["kinds"].values())
           for k in ("clicks", "reported", "reported_not_flagged", "reported_without_any_warning")}
    out["total"] = tot
    if not args.no_write:
        T.write_json(T.ROOT / "weights" / SEG_ID / "slab_clicks.json", out)
    print(json.dumps({"clicks": tot["clicks"], "reported": tot["reported"],
                      "reported_not_flagged": tot["reported_not_flagged"],
                      "reported_without_any_warning": tot["reported_without_any_warning"], "models": out["models"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
