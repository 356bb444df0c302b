#!/usr/bin/env python
"""Weight-randomisation sanity check (Adebayo et al. 2018) of every explanation method on the
two CT nodule models, like ``scripts/check_explanations.py`` for the image models, on three
real patient-split TEST nodules (windows cut at their ``labels.csv`` centres, the engine's
input); writes ``weights/<id>/sanity.json`` in the same format (plus the window centres).

Occlusion uses an 8-voxel (8 mm) cube moved by 8 voxels (64 occlusions per window) to stay
within minutes on two CPU cores; the other methods use the app's defaults.  The segmenter
(a 3D UNet, explained per structure as Seg-Grad-CAM of its region) is checked on the first
nodule only: its integrated-gradients and occlusion cascades cost many minutes per window on
two shared cores.

    python scripts/check_nodule_explanations.py [ct-nodule-malignancy] [ct-nodule-seg]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ct_nodule_data as D  # noqa: E402
import _training as T  # noqa: E402
from check_explanations import method_results  # noqa: E402

from imaging_assist.nodules import window as W  # noqa: E402

METHODS = ("gradcam", "integrated_gradients", "saliency", "occlusion")
# test nodules: the first malignant, the first benign, the first with a crop of < 5 slices
N_IMAGES = {"ct-nodule-malignancy": 3, "ct-nodule-seg": 1}


def configs():
    from imaging_assist.explain.methods import ExplainConfig

    return {m: ExplainConfig(m, occlusion_window=8, occlusion_stride=8) if m == "occlusion" else ExplainConfig(m)
            for m in METHODS}


def sample_rows(n: int = 3) -> list[dict]:
    rows = D.read_rows()
    split = D.split_rows(rows)
    test = [r for r, s in zip(rows, split) if s == 2]
    pick = [next(r for r in test if r["malignant"] == "1"), next(r for r in test if r["malignant"] == "0")]
    for r in test:
        if r not in pick and W.volume_from_nifti(D.SRC / r["file"]).array.shape[0] < 5:
            pick.append(r)
            break
    return pick[:n]


def model_x(model, r) -> torch.Tensor:
    from imaging_assist.nodules.models import design

    win = W.cut_window(W.volume_from_nifti(D.SRC / r["file"]), D.centre(r))
    return torch.from_numpy(W.model_channels(win, design(model)))[None]


def check(model_id: str) -> dict:
    from imaging_assist.explain.sanity import THRESHOLD
    from imaging_assist.models.loaders import sha256_file
    from imaging_assist.models.registry import Registry
    from imaging_assist.validation.ood import WEIGHTS_KEY

    model = Registry().load(model_id)
    rows = sample_rows(N_IMAGES[model_id])
    out = {"model": model_id, "threshold": THRESHOLD, "test": "cascading randomisation top-down, "
           "Spearman rank correlation of |attribution| trained vs fully randomised < threshold",
           "images": [str((D.SRC / r["file"]).relative_to(T.DATA)) for r in rows],
           "points_lps": [D.centre(r).round(4).tolist() for r in rows],
           "configs": {m: c.params() for m, c in configs().items()}, "methods": {},
           # the weights checked: a retrained model's old verdicts show as "not checked for these weights"
           WEIGHTS_KEY: sha256_file(model.card.folder / model.card.weights[0].file)}
    xs = [model_x(model, r) for r in rows]
    out["methods"] = method_results(model_id, model, xs, configs())
    return out


def main(argv=None) -> int:
    from imaging_assist.explain.sanity import SANITY_FILE
    from imaging_assist.models.registry import project_weights_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("ids", nargs="*")
    args = ap.parse_args(argv)
    for mid in args.ids or ["ct-nodule-malignancy", "ct-nodule-seg"]:
        res = check(mid)
        (project_weights_dir() / mid / SANITY_FILE).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
