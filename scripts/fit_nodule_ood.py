#!/usr/bin/env python
"""Fit and measure the OOD statistics of the two CT nodule models (issue 21 with issue 14's code).

The same method as every other shipped model (:mod:`imaging_assist.validation.ood`:
Mahalanobis distance of per-channel mean/std features of the card's layers, Ledoit-Wolf
covariance; threshold = :func:`~imaging_assist.validation.ood.conformal_threshold` on the
validation windows), on the models' own input: windows cut at each LIDC nodule centre
(``_ct_nodule_data``; train split for the fit, validation for the threshold, test for the
in-distribution flag rate).  Measured against:

* ``ct_head``: windows at 40 random points inside the head phantom CT (another body part);
* ``slab_no_nodule``: windows at 60 random points of the real LIDC-IDRI-0001 slab at least 25 mm
  from its nodule (lung, chest wall, mediastinum, air: chest CT without a nodule at the point).

Writes ``weights/<id>/ood.safetensors`` and the card's ``ood`` block (sha256, threshold, AUROCs).

    python scripts/fit_nodule_ood.py [ct-nodule-malignancy] [ct-nodule-seg]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ct_nodule_data as D  # noqa: E402
import _training as T  # noqa: E402

from imaging_assist.nodules import window as W  # noqa: E402
from imaging_assist.validation import ood as O  # noqa: E402

LAYERS = {"ct-nodule-malignancy": ["layer3", "layer4"],
          "ct-nodule-seg": ["model.1.submodule.1.submodule.0", "model.1.submodule.1.submodule.1.submodule"]}
SLAB_NODULE_LPS = np.array([56.20840547, 86.34341278, -115.8675792])


def _load_series(folder: Path):
    from imaging_assist.dicom import load_series, scan

    return load_series(scan(str(folder)).image_series()[0])


def _random_windows(vol, n: int, seed: int, avoid=None, min_dist=25.0, body_hu=None) -> list:
    """Windows at random voxel centres (kept: away from ``avoid``; inside HU > ``body_hu``)."""
    rng = np.random.default_rng(seed)
    out, tries = [], 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        k, j, i = (int(rng.integers(0, s)) for s in vol.array.shape)
        if body_hu is not None and vol.array[k, j, i] < body_hu:
            continue
        p = vol.index_to_lps(i, j, k)
        if avoid is not None and np.linalg.norm(p - avoid) < min_dist:
            continue
        out.append(W.cut_window(vol, p))
    return out


def auroc(id_s, ood_s) -> float:
    from imaging_assist.evaluation import roc_auc

    return round(float(roc_auc(np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))], np.r_[id_s, ood_s])), 4)


def fit(model_id: str) -> dict:
    from imaging_assist.models.registry import Registry
    from imaging_assist.nodules.models import design

    model = Registry().load(model_id)
    net = model.network.eval()
    des = design(model)
    layers = LAYERS[model_id]
    rows = D.read_rows()
    split = D.split_rows(rows)
    img, val, _ = D.load_cubes(rows)
    x = torch.from_numpy(W.channels_from_arrays(D.central(img).astype(np.float32), D.central(val), des))
    feats = {k: O.extract_features(net, x[split == k], layers, batch_size=32) for k in range(3)}
    stats = O.fit_mahalanobis(feats[0])
    sc = {D.SPLIT_NAMES[k]: O.score(stats, feats[k], "mahalanobis") for k in range(3)}
    thr, info = O.conformal_threshold(sc["validation"])
    sets = {"ct_head": _random_windows(_load_series(T.DATA / "dicom" / "ct_head_phantom_philips"
                                                    / "series202_STD_BRAIN_1MM_iDose"), 40, 1, body_hu=-300),
            "slab_no_nodule": _random_windows(_load_series(T.DATA / "ct" / "lidc_idri_0001_slab"), 60, 2,
                                              avoid=SLAB_NODULE_LPS)}
    other = {}
    for name, wins in sets.items():
        xo = torch.from_numpy(np.stack([W.model_channels(w, des) for w in wins]))
        other[name] = O.score(stats, O.extract_features(net, xo, layers, batch_size=32), "mahalanobis")
    folder = model.card.folder
    from safetensors.torch import save_file

    f = folder / O.STATS_FILE
    from imaging_assist.models.loaders import sha256_file

    # the weights fitted on, in the file itself: statistics of other weights are refused on load
    save_file({k: v.contiguous() for k, v in stats.items()}, str(f),
              metadata={"model": model_id, O.WEIGHTS_KEY: sha256_file(folder / model.card.weights[0].file)})
    block = {"method": "mahalanobis", "layers": layers, "file": O.STATS_FILE,
             "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "threshold": round(thr, 6),
             "threshold_rule": O.threshold_rule_text(info),
             "features": "per channel spatial mean and standard deviation of each layer's activations",
             "fitted_on": f"training split, {int((split == 0).sum())} nodule windows, shipped weights, "
                          f"the engine's window ({des} design)",
             "auroc_per_set": {k: auroc(sc["test"], v) for k, v in other.items()},
             "flagged_in_distribution_test": round(float((sc["test"] > thr).mean()), 4),
             "flagged_per_set": {k: round(float((v > thr).mean()), 4) for k, v in other.items()},
             "n": {"train": int((split == 0).sum()), "validation": int((split == 1).sum()),
                   "id_test": int((split == 2).sum()), **{k: len(v) for k, v in other.items()}},
             "measured_by": "scripts/fit_nodule_ood.py (ct_head: windows at random points inside the head phantom "
                            "CT; slab_no_nodule: random points of the LIDC-IDRI-0001 slab >= 25 mm from its nodule)"}
    card_file = folder / "model.json"
    card = json.loads(card_file.read_text())
    card["ood"] = block
    card_file.write_text(json.dumps(card, indent=2) + "\n")
    print(model_id, json.dumps({k: block[k] for k in ("threshold", "auroc_per_set", "flagged_in_distribution_test",
                                                       "flagged_per_set")}), flush=True)
    return block


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("ids", nargs="*", default=list(LAYERS))
    args = ap.parse_args(argv)
    for mid in args.ids or list(LAYERS):
        fit(mid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
