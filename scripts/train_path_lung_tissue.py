#!/usr/bin/env python
"""Train ``weights/path-lung-tissue``: lung adenocarcinoma / benign lung / squamous cell
carcinoma on 224x224 H&E tiles.

Data: ``pathology/lc25000_lung_subset`` (1,500 JPEG tiles, 500 per class; labels.csv).
LC25000 tiles are rotated / zoomed / flipped copies of 250 originals per class and carry no
slide or patient id, so copies of one original are grouped first with
:mod:`imaging_assist.near_duplicates` (log-polar registration + pixel check, union-find).
The split is grouped and stratified, 70 / 15 / 15, seed 0: no group is in two splits.
Metrics carry 95 % CIs from a **cluster bootstrap over groups** (copies of one original are
not independent samples).  Temperature scaling is fitted on validation and folded into the
last layer.

Input: RGB 0..255 -> ``scale_range`` 0..1 -> per-channel ``normalize``; the same card steps
run for JPEG tiles (``analyze TILE.jpg``) and for slide tiles (``analyze SLIDE``; the slide
tiler hands RGB in 0..1, which the slide path maps back to 0..255 before the card's steps,
see ``imaging_assist/slides/analysis.py``).

    python scripts/train_path_lung_tissue.py [--epochs N] [--device cuda]
"""

from __future__ import annotations

import argparse
import csv
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

import _training as T
from imaging_assist import evaluation as E
from imaging_assist.training.cards import split_duplicates_limitation

MODEL_ID = "path-lung-tissue"
LABELS = ["adenocarcinoma", "benign", "squamous_cell_carcinoma"]
ARCH = {"library": "monai", "name": "ResNet",
        "kwargs": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128],
                   "spatial_dims": 2, "n_input_channels": 3, "num_classes": 3,
                   "conv1_t_size": 7, "conv1_t_stride": 2}}
# Channel mean/std of the LC25000 lung tiles (measured on every 5th tile, rounded).
MEAN, STD = [0.73, 0.545, 0.915], [0.17, 0.195, 0.13]
INPUT = {"channels": 3, "size": [224, 224], "axis_order": "row_col",
         "intensity": [{"type": "scale_range", "a_min": 0, "a_max": 255, "b_min": 0, "b_max": 1,
                        "clip": True},
                       {"type": "normalize", "mean": MEAN, "std": STD}]}
# Pixel size the model expects on slides.  NOT published for LC25000 (see SLIDE["mpp_note"]).
TILE_MPP = 0.7
SLIDE = {
    "tile_px": 224, "mpp": TILE_MPP, "mpp_is_assumption": True,
    "mpp_note": "LC25000 does not state the magnification or pixel size of its tiles (the data set "
                "paper, arXiv:1912.12142, gives 768x768 originals from a microscope camera; the "
                "training mirror holds them resized to 224x224). 0.7 µm/px at 224 px is an "
                "estimate from red blood cells (about 7.5 µm across, 10-12 px in the tiles), "
                "i.e. a 157 µm field per tile. Slide results depend on this assumption.",
    "tissue_threshold": 0.5,
}
# The card's sentence on test tiles with a copy in training, built from split_duplicates.json
# (scripts/check_split_duplicates.py); the opening is what that audit found.
SPLIT_DUPLICATES = {"cause": "The registration grouping misses copies zoomed about 1.3-1.7x"}


def base_card() -> dict:
    return {
        "schema_version": 1, "id": MODEL_ID,
        "name": "Lung H&E tile type: adenocarcinoma / benign / squamous cell carcinoma (small ResNet, 224²)",
        "version": "1.0.0", "task": "classification", "modality": ["SM"],
        "body_part": "LUNG", "spatial_dims": 2, "architecture": ARCH, "input": INPUT,
        "output": {"activation": "softmax"}, "labels": LABELS, "gradcam_layer": "layer4",
        "not_for_clinical_use": True, "slide": SLIDE,
    }


# --------------------------------------------------------------------------- grouping
def near_duplicate_groups(rows, src, labels) -> tuple[np.ndarray, dict]:
    """Group index per tile (cached in .cache/training)."""
    from PIL import Image

    from imaging_assist.near_duplicates import group_near_duplicates

    T.CACHE.mkdir(parents=True, exist_ok=True)
    f = T.CACHE / "lc25000_lung_groups_v1.json"
    files = [r["file"] for r in rows]
    if f.exists():
        d = json.loads(f.read_text())
        if d["files"] == files:
            return np.array(d["groups"]), d["stats"]
    t = time.perf_counter()
    ims = [np.asarray(Image.open(src / r["file"]).convert("RGB")) for r in rows]
    g = group_near_duplicates(ims, labels)
    ncc = [m.ncc for m in g.matches]
    stats = {"method": "imaging_assist.near_duplicates.group_near_duplicates (log-polar NCC candidates, "
                       "high-pass pixel NCC >= 0.2 after registration, union-find; only tiles of one class compared)",
             "verified_pairs": len(g.matches), "rejected_candidates": len(g.rejected),
             "min_verified_ncc": round(min(ncc), 4) if ncc else None,
             "max_rejected_ncc": round(max((m.ncc for m in g.rejected), default=float("nan")), 4),
             "seconds": round(time.perf_counter() - t, 1)}
    f.write_text(json.dumps({"files": files, "groups": g.groups.tolist(), "stats": stats}))
    return g.groups, stats


# --------------------------------------------------------------------------- augmentation
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_M = torch.tensor(MEAN).view(1, 3, 1, 1)
_S = torch.tensor(STD).view(1, 3, 1, 1)


def stain_jitter(x: torch.Tensor, g: torch.Generator, alpha=0.3, beta=0.08, bright=0.1):
    """HED colour augmentation (Tellez et al. 2018) on normalised inputs: back to RGB 0..1,
    optical density, colour deconvolution (H, E, DAB), per-image scale x(1 ± alpha) and
    shift ± beta of each stain, back to RGB, brightness ± bright, normalised again."""
    n = x.shape[0]
    rgb = (x * _S + _M).clamp(0, 1)
    od = -torch.log((rgb * 255 + 1) / 256)
    hed = torch.einsum("nchw,cd->ndhw", od, _HED_FROM_RGB)
    a = 1 + (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * alpha
    b = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * beta
    od = torch.einsum("nchw,cd->ndhw", hed * a + b, _RGB_FROM_HED).clamp(min=0)
    rgb = ((256 * torch.exp(-od) - 1) / 255).clamp(0, 1)
    rgb = (rgb * (1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * bright)).clamp(0, 1)
    return (rgb - _M) / _S


# --------------------------------------------------------------------------- metrics
def main(argv=None) -> int:
    ap = T.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[1]), 30, 32, 3e-3)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-measure the weights already in the model folder (no training; the near-duplicate "
                         "groups are read from its predictions.csv, which lists every tile with its group)")
    args = ap.parse_args(argv)
    dev, out = T.start(args, MODEL_ID)
    src = T.DATA / "pathology" / "lc25000_lung_subset"
    rows, paths = T.read_rows(src)
    y = np.array([LABELS.index(r["label"]) for r in rows])
    t0 = time.perf_counter()
    if args.evaluate_only:
        # the groups the shipped split was made from (regrouping takes ~8 min on 2 cores)
        old = {r["file"]: r["group"] for r in csv.DictReader((out / "predictions.csv").open())}
        groups = np.array([old[r["file"]] for r in rows])
        gidx = np.unique(groups, return_inverse=True)[1]
        gstats = {k: v for k, v in json.loads((out / "model.json").read_text())["data"]["near_duplicates"].items()
                  if k not in ("groups_per_class", "largest_group")}
    else:
        gidx, gstats = near_duplicate_groups(rows, src, y)
        groups = np.array([f"g{v}" for v in gidx])
    per_class = {LABELS[c]: int(len(set(groups[y == c]))) for c in range(3)}
    gstats["groups_per_class"] = per_class
    gstats["largest_group"] = int(np.bincount(gidx).max())
    print(f"near-duplicate groups per class: {per_class} ({time.perf_counter() - t0:.0f} s)", flush=True)
    split = T.grouped_split(groups, y, (0.70, 0.15, 0.15), seed=args.seed)
    for k in range(3):
        assert not (set(groups[split == k]) & set(groups[split != k])), "group in two splits"
    names = {0: "train", 1: "validation", 2: "test"}
    counts = {names[k]: {"tiles": int((split == k).sum()), "groups": int(len(set(groups[split == k]))),
                         **{lab: int(((split == k) & (y == i)).sum()) for i, lab in enumerate(LABELS)}}
              for k in range(3)}
    print("splits:", counts, flush=True)

    card = base_card()
    mc = T.card_for_training(card)
    x = T.preprocess_all(mc, paths, MODEL_ID)
    yt = torch.from_numpy(y)
    itr, iva = np.nonzero(split == 0)[0], np.nonzero(split == 1)[0]

    from imaging_assist.models.architectures import build_network

    net = build_network(ARCH, MODEL_ID)

    def augment(xb, yb, g):
        xb = T.random_affine(xb, g, rot_deg=15, scale=(0.9, 1.15), shift=0.05, flip_h=True,
                             flip_v=True, rot90=True)
        return stain_jitter(xb, g), yb

    def evaluate(n):
        lo = T.predict(n, x[iva], dev)
        p = torch.softmax(lo, 1).numpy()
        mauc = E.macro_auc(y[iva], p)[0]
        loss = float(F.cross_entropy(lo, yt[iva]))
        return {"val_loss": loss, "val_macro_auc": mauc, "val_acc": float((p.argmax(1) == y[iva]).mean()),
                "score": mauc + float((p.argmax(1) == y[iva]).mean()) - 0.05 * loss}

    if args.evaluate_only:
        info, train_s, temp, train_device = T.load_shipped(net, out)
    else:
        log = T.Log(out / "training_log.csv")
        t0 = time.perf_counter()
        info = T.fit(net, x[itr], yt[itr], loss_fn=F.cross_entropy, augment=augment, evaluate=evaluate,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                     device=dev, log=log, seed=args.seed, time_limit_s=args.time_limit)
        train_s = time.perf_counter() - t0
        train_device = T.device_text(dev)
        T.plot_log(log, out / "training_log.png", f"{MODEL_ID}: training", ["val_macro_auc", "val_acc"])

        net.cpu()
        temp = T.fit_temperature(T.predict(net, x[iva], torch.device("cpu")), yt[iva])
        T.fold_temperature(net.fc, temp)
    prob = torch.softmax(T.predict(net, x, torch.device("cpu")), 1).numpy()

    metrics, details, curves = [], {}, {}
    for k in (2, 1):
        label = names[k]
        m = split == k
        yy, pp, gg = y[m], prob[m], groups[m]
        what = {2: f"grouped test split: {m.sum()} tiles / {counts['test']['groups']} near-duplicate groups "
                   "(LC25000; optimistic, see limitations)",
                1: "validation split (temperature fitted and epoch chosen here)"}[k]
        what_ci = what + "; 95% CI: cluster bootstrap over groups"
        mauc, aucs = E.macro_auc(yy, pp)
        acc = float((pp.argmax(1) == yy).mean())
        rel = E.top_label_ece(yy, pp)
        # cluster bootstrap over near-duplicate groups, stratified by class (E.bootstrap_ci)
        mauc_ci = E.bootstrap_ci(lambda a, b: E.macro_auc(a, b)[0], yy, pp, clusters=gg, strata=yy, seed=1)
        acc_ci = E.bootstrap_ci(lambda a, b: float((b.argmax(1) == a).mean()), yy, pp, clusters=gg, strata=yy,
                                seed=2)
        ece_ci = E.bootstrap_ci(lambda a, b: E.top_label_ece(a, b).ece, yy, pp, clusters=gg, strata=yy, seed=3,
                                n_boot=500)
        metrics.append(E.metric("macro AUC", mauc, mauc_ci, m.sum(), what_ci))
        for c, lab in enumerate(LABELS):
            ci = E.bootstrap_ci(lambda a, b, _c=c: E.roc_auc(a == _c, b[:, _c]), yy, pp, clusters=gg, strata=yy,
                                seed=10 + c)
            metrics.append(E.metric("AUC", aucs[c], ci, m.sum(), what_ci + ", one vs rest", lab))
        metrics += [E.metric("accuracy", acc, acc_ci, m.sum(), what_ci + ", argmax"),
                    E.metric("ECE", rel.ece, ece_ci, m.sum(), what_ci + ", top label, 10 bins")]
        cm = E.confusion_matrix(yy, pp.argmax(1), 3)
        details[label] = {"n": int(m.sum()), "groups": int(len(set(gg))), "macro_auc": mauc,
                          "macro_auc_ci95": mauc_ci, "auc_per_class": dict(zip(LABELS, aucs)),
                          "accuracy": acc, "accuracy_ci95": acc_ci, "ece_top_label": rel.ece,
                          "ece_ci95": ece_ci, "reliability": rel.__dict__,
                          "confusion_matrix": {"labels": LABELS, "rows_true_cols_predicted": cm}}
        if k == 2:
            for c, lab in enumerate(LABELS):
                fpr, tpr, _ = E.roc_curve(yy == c, pp[:, c])
                curves[lab.replace("_", " ")] = (fpr, tpr, aucs[c])
            T.plot_reliability(rel, out / "reliability_test.png", f"{MODEL_ID} — test (top label)")
    T.plot_roc(curves, out / "roc.png", f"{MODEL_ID}: one-vs-rest ROC, grouped test split")
    if metrics[0]["name"] != "macro AUC":
        raise AssertionError("first metric must be the test macro AUC")

    # Out-of-distribution smoke check: colorectal tissue (Kather 2016), no lung labels.
    kather = sorted((T.DATA / "pathology" / "kather2016_crc_texture_samples" / "tiles").glob("*.jpg"))
    ood = {}
    ood_text = "Colorectal tissue (Kather 2016 samples) gets confident lung-class probabilities: the model has " \
               "no 'other tissue' output."
    if kather:
        xk = T.preprocess_all(mc, kather, MODEL_ID + "_kather")
        pk = torch.softmax(T.predict(net, xk, torch.device("cpu")), 1).numpy()
        ood = {p.name: {lab: round(float(v), 4) for lab, v in zip(LABELS, row)} for p, row in zip(kather, pk)}
        ood_max = float(pk.max(1).mean())
        calls = {lab: int((pk.argmax(1) == i).sum()) for i, lab in enumerate(LABELS)}
        ood_text = (f"Out of domain, colorectal H&E (the {len(kather)} Kather 2016 sample tiles: tumour, stroma, "
                    f"lymphocytes, debris, mucosa, fat, empty glass) is still forced into the three lung classes "
                    f"({', '.join(f'{v} {k}' for k, v in calls.items())}; mean top probability {ood_max:.2f}): "
                    "high probabilities say nothing about whether the tissue is lung at all.")
        print(f"Kather 2016 colorectal (out of domain): {calls}, mean top probability {ood_max:.3f}", flush=True)

    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "group", "label"] + [f"p_{lab}" for lab in LABELS])
        for i in range(len(rows)):
            w.writerow([rows[i]["file"], names[int(split[i])], groups[i], LABELS[y[i]]]
                       + [f"{v:.6f}" for v in prob[i]])

    t = details["test"]
    card.update({
        "metrics": metrics,
        "metrics_ci": "every interval: percentile cluster bootstrap resampling whole near-duplicate groups "
                      "(imaging_assist.evaluation.bootstrap_ci), stratified by class, 2,000 resamples (ECE 500): "
                      "copies of one original are not independent samples",
        "data": {
            "training": f"LC25000 lung subset (Borkowski et al. 2019, arXiv:1912.12142; one US centre), 224x224 "
                        f"H&E JPEG tiles in shared/data/pathology/lc25000_lung_subset: {counts['train']['tiles']} "
                        f"tiles in {counts['train']['groups']} near-duplicate groups",
            "validation": f"{counts['validation']['tiles']} tiles / {counts['validation']['groups']} groups "
                          "(group-disjoint; epoch choice + temperature)",
            "test": f"{counts['test']['tiles']} tiles / {counts['test']['groups']} groups (group-disjoint)",
            "splits": counts,
            "split_rule": "tiles grouped as copies of one original (rotation/zoom/flip registration, see "
                          "imaging_assist/near_duplicates.py); groups split 70/15/15 stratified by class, seed 0",
            "near_duplicates": gstats,
        },
        "license": "Weights: BSD-2-Clause (this project). Training data licence: unknown (LC25000 as mirrored; "
                   "the original release states it is freely available for AI research)",
        "intended_use": "Research, teaching and software demonstration of tiled slide inference: marks H&E lung "
                        "tiles that look like adenocarcinoma, squamous cell carcinoma or benign lung in the style "
                        "of the LC25000 images. NOT FOR CLINICAL USE: not a diagnosis, not validated on any "
                        "slide set.",
        "limitations": [
            "Metrics are OPTIMISTIC: LC25000 tiles are rotated/zoomed/flipped copies of only 250 originals per "
            "class from a single source, with no patient or slide ids. Copies were grouped by image registration "
            "(no group straddles splits), but different originals may still come from the same patient or slide, "
            "and every image shares one lab's staining, scanner/camera and selection. Expect much lower accuracy "
            "on other labs' slides.",
            "The registration may also split one original into two groups, which can then sit in different splits: "
            "it found " + ", ".join(f"{n} groups of {lab}" for lab, n in per_class.items()) + " in 500 tiles per class, "
            "where 500 random copies of 250 originals (20 copies each) cover about 220 +- 5 originals.",
            "A test AUC of 1.0 comes with the interval [1.0, 1.0]: no error on these tiles; the bootstrap cannot "
            "widen a perfect score, which is not certainty.",
            "Must NOT be used to diagnose, subtype or grade lung cancer, to decide on treatment, to screen "
            "slides, or on tissue other than lung H&E (colon, lymph node, cytology, frozen sections, IHC).",
            "Three classes only: other tumours (small-cell, large-cell, metastases, mesothelioma), "
            "inflammation, necrosis, mucus, blood, cartilage, glass and artefacts are forced into one of the three "
            "classes; high probabilities on such tissue are meaningless.",
            f"Slide pixel size is an ASSUMPTION ({TILE_MPP} µm/px at 224 px): LC25000 does not state its "
            "magnification. Tiles of a slide are resampled to this size; if the assumption is wrong, tissue is "
            "seen at the wrong scale.",
            "Training tiles were hand-picked, in-focus fields of typical morphology; whole-slide tiles (edges, "
            "folds, blur, pen marks, mixed tissue) are out of distribution.",
            ood_text,
            split_duplicates_limitation(out, MODEL_ID, t, **SPLIT_DUPLICATES),
        ],
        "training": {"script": "scripts/train_path_lung_tissue.py", "seed": args.seed, "device": train_device,
                     "epochs": info["epochs_run"], "best_epoch": info["best_epoch"],
                     "batch_size": args.batch_size, "max_lr": args.lr, "optimizer": "AdamW, one-cycle",
                     "augmentation": "90° turns, flips, rotation ±15°, scale 0.9-1.15, shift ±5%; HED stain "
                                     "jitter (each stain x(1±0.3) ± 0.08 OD, 'HED-strong'), brightness ±10%",
                     "temperature": round(temp, 4), "train_seconds": round(train_s, 1)},
        "files": {"metrics": "metrics.json", "training_log": "training_log.csv", "training_plot": "training_log.png",
                  "predictions": "predictions.csv", "roc": "roc.png", "reliability": ["reliability_test.png"]},
    })
    if args.evaluate_only:  # keep the card fields this script does not write
        card = T.keep_card_fields(card, out)
    from imaging_assist.models.build import save_model_folder

    save_model_folder(out, card, net)
    T.fit_ood(MODEL_ID, out)  # issue 14: OOD statistics of these weights (scripts/fit_ood.py)
    T.write_json(out / "metrics.json", {"model": MODEL_ID, "metrics": metrics, "details": details,
                                        "splits": counts, "near_duplicates": gstats, "training": card["training"],
                                        "out_of_domain_kather2016_colorectal": ood})
    print(f"test macro AUC {t['macro_auc']:.4f} {t['macro_auc_ci95']}, accuracy {t['accuracy']:.4f} "
          f"{t['accuracy_ci95']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
