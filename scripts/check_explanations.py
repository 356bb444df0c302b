#!/usr/bin/env python
"""Weight-randomisation sanity check (Adebayo et al. 2018) of every explanation method on
every shipped model, on a few real images each; writes ``weights/<id>/sanity.json``.

The app reads that file and warns when a method failed on the model in use
(``imaging_assist.explain.sanity.sanity_warning``); ``tests/test_shipped_models.py``
recomputes the first image and compares.

    python scripts/check_explanations.py [ID ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

# three real images per model (relative to ../shared/data): held-out test images where the
# training script's split is known, otherwise simply images of the model's kind
IMAGES = {
    "cxr-pneumonia": ["cxr/pneumonia_kermany/test/PNEUMONIA/person100_bacteria_475.jpeg",
                      "cxr/pneumonia_kermany/test/PNEUMONIA/person10_virus_35.jpeg",
                      "cxr/pneumonia_kermany/test/NORMAL/IM-0001-0001.jpeg"],
    "cxr-lung-seg": ["cxr/lung_masks_covid_generalblockchain/images/{0}",
                     "cxr/lung_masks_nlm_tb_subset/images/{0}",
                     "cxr/lung_masks_jsrt/images/JPCLN001.png"],
    "us-breast": ["ultrasound/breast_busi/malignant/malignant_002.jpg",
                  "ultrasound/breast_busi/benign/benign_001.jpg",
                  "ultrasound/breast_busi/normal/{0}"],
    "path-lung-tissue": ["pathology/lc25000_lung_subset/tiles/lung_aca/{0}",
                         "pathology/lc25000_lung_subset/tiles/lung_n/{0}",
                         "pathology/lc25000_lung_subset/tiles/lung_scc/{0}"],
}
METHODS = ("gradcam", "integrated_gradients", "saliency", "occlusion")


def resolve(rel: str) -> Path:
    """``{0}`` = the first image (by name) of that folder."""
    if "{0}" not in rel:
        return DATA / rel
    folder = (DATA / rel).parent
    imgs = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                  and "mask" not in p.name)
    return imgs[0]


def check(model_id: str, n_images: int = 3) -> dict:
    from imaging_assist.explain.sanity import THRESHOLD
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import model_input
    from imaging_assist.models.loaders import sha256_file
    from imaging_assist.models.registry import Registry
    from imaging_assist.validation.ood import WEIGHTS_KEY

    model = Registry().load(model_id)
    images = [resolve(r) for r in IMAGES[model_id]][:n_images]
    out = {"model": model_id, "threshold": THRESHOLD, "test": "cascading randomisation top-down, "
           "Spearman rank correlation of |attribution| trained vs fully randomised < threshold",
           "images": [str(p.relative_to(DATA)) for p in images], "methods": {},
           # the weights checked: a retrained model's old verdicts show as "not checked for these weights"
           WEIGHTS_KEY: sha256_file(model.card.folder / model.card.weights[0].file)}
    xs = [model_input(model.card, read_image(p))[None].float() for p in images]
    out["methods"] = method_results(model_id, model, xs, {m: None for m in METHODS})
    return out


def method_results(model_id: str, model, xs, configs: dict) -> dict:
    """{method: passed, worst final Spearman, per input} of the cascading randomisation test over
    the preprocessed inputs ``xs``; ``configs``: method -> its ExplainConfig (None: the default).
    Shared with scripts/check_nodule_explanations.py."""
    from imaging_assist.explain.sanity import THRESHOLD, check_model

    methods = {}
    for m, cfg in configs.items():
        t = time.perf_counter()
        per = []
        for x in xs:
            for rep in check_model(model, x, m, cfg=cfg):
                per.append({"final_spearman": rep.final_spearman, "passed": rep.passed,
                            "note": rep.note, "steps": rep.steps})
        finite = [r["final_spearman"] for r in per if r["final_spearman"] is not None]
        worst = max(finite) if finite else None
        methods[m] = {"passed": bool(per) and all(r["passed"] for r in per), "final_spearman": worst,
                      "threshold": THRESHOLD, "per_image": per, "seconds": round(time.perf_counter() - t, 1)}
        print(f"{model_id} {m}: worst Spearman {worst if worst is None else round(worst, 3)} -> "
              f"{'passed' if methods[m]['passed'] else 'FAILED'}", flush=True)
    return methods


def main(argv=None) -> int:
    from imaging_assist.explain.sanity import SANITY_FILE
    from imaging_assist.models.registry import project_weights_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("ids", nargs="*")
    args = ap.parse_args(argv)
    ids = args.ids or sorted(p.parent.name for p in project_weights_dir().glob("*/model.json"))
    summary = {}
    for mid in ids:
        res = check(mid)
        (project_weights_dir() / mid / SANITY_FILE).write_text(json.dumps(res, indent=2) + "\n")
        summary[mid] = {m: r["passed"] for m, r in res["methods"].items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
