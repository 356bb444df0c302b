#!/usr/bin/env python
"""Train ``weights/us-breast``: benign / malignant / normal on breast ultrasound (BUSI).

Data: ``ultrasound/breast_busi`` (687 grey JPEGs, shorter side 256, various aspect ratios;
labels.csv; one merged tumour mask per image, empty for normal images).

Splits: BUSI has no patient ids but several images per patient and known near-duplicates
(the same frame, with or without calliper marks, sometimes under two labels).  The images
are first grouped with :mod:`imaging_assist.near_duplicates` (log-polar registration limited
to near-identity transforms: rotation <= 10 deg, zoom <= e^0.25, no flip, since ultrasound
frames are not turned or mirrored; verified by high-pass pixel NCC >= 0.2; union-find over
all 687 images, across labels).  The grouping is cached in
``weights/us-breast/near_duplicate_groups.csv`` (re-used when the file list matches).  Whole
groups are split 70 / 15 / 15 into train / validation / test, stratified by the group's first
label (seed 0).  Frames of one patient that differ by a shift or another probe position are
not found, so the test metrics may still be optimistic.  Confidence intervals resample whole
groups (cluster bootstrap).

Network: a small MONAI ResNet on the whole image resized to 224x224 (the card's input block,
run through the engine's own preprocessing).  During training only, a 1x1-convolution
"auxiliary head" on layer2/3/4 predicts the tumour mask at 28x28 (deep supervision with the
BUSI masks: it teaches the network where the lesion is).  The head is dropped afterwards;
the shipped network is the plain ResNet of the card.

The epoch is chosen on validation macro AUC; temperature scaling is fitted on validation
and folded into the last layer.  An operating threshold for "malignant" (one-vs-rest) is
chosen on validation for sensitivity >= 0.90.

    python scripts/train_us_breast.py [--epochs N] [--time-limit S] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import _training as T
from imaging_assist import evaluation as E
from imaging_assist.training.cards import split_duplicates_limitation

MODEL_ID = "us-breast"
LABELS = ["benign", "malignant", "normal"]
SIZE = 224
SEG = 28  # auxiliary mask resolution (layer2 grid at 224 input)
ARCH = {"library": "monai", "name": "ResNet",
        "kwargs": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128],
                   "spatial_dims": 2, "n_input_channels": 1, "num_classes": 3,
                   "conv1_t_size": 7, "conv1_t_stride": 2}}
INPUT = {"channels": 1, "size": [SIZE, SIZE], "axis_order": "row_col",
         "intensity": [{"type": "percentile", "lower": 0.5, "upper": 99.5},
                       {"type": "normalize", "mean": [0.5], "std": [0.25]}],
         "invert_monochrome1": True}
MEAN, STD = 0.5, 0.25


def base_card() -> dict:
    return {
        "schema_version": 1, "id": MODEL_ID,
        "name": "Breast ultrasound: benign / malignant / normal (small ResNet, 224²)",
        "version": "1.0.0", "task": "classification", "modality": ["US"],
        "body_part": "BREAST", "spatial_dims": 2, "architecture": ARCH, "input": INPUT,
        "output": {"activation": "softmax"}, "labels": LABELS, "gradcam_layer": "layer4",
        "not_for_clinical_use": True,
    }


class AuxSeg(nn.Module):
    """Training-time wrapper: ``forward`` gives the ResNet's logits; in training mode it
    also keeps ``self.seg`` (N, 1, 28, 28) mask logits from 1x1 convolutions on layer2-4."""

    def __init__(self, net: nn.Module, widths: list[int]):
        super().__init__()
        self.net = net
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in widths[1:])
        self._feats: dict[str, torch.Tensor] = {}
        self.seg = None
        for name in ("layer2", "layer3", "layer4"):
            getattr(net, name).register_forward_hook(self._keep(name))

    def _keep(self, name):
        def hook(_m, _i, out):
            self._feats[name] = out
        return hook

    def forward(self, x):
        logits = self.net(x)
        if self.training:
            seg = 0
            for h, name in zip(self.heads, ("layer2", "layer3", "layer4")):
                seg = seg + F.interpolate(h(self._feats[name]), size=(SEG, SEG), mode="bilinear",
                                          align_corners=False)
            self.seg = seg
        self._feats.clear()
        return logits


GROUPS_CSV = "near_duplicate_groups.csv"
GROUPING = {"max_angle_deg": 10.0, "allow_flip": False, "max_log_zoom": 0.25, "ncc_threshold": 0.2}
# The card's sentence on the frame under two labels in test, built from split_duplicates.json
# (scripts/check_split_duplicates.py): the data set named and the class whose AUC is quoted.
SPLIT_DUPLICATES = {"data_set": "BUSI", "focus": "malignant"}


def near_duplicate_groups(rows, src, out) -> tuple[np.ndarray, dict]:
    """Group name per image (``u<k>``), cached in ``out/near_duplicate_groups.csv`` (+ .json
    with how it was made and how long it took); recomputed when the file list changed."""
    from PIL import Image

    from imaging_assist.near_duplicates import group_near_duplicates

    files = [r["file"] for r in rows]
    f, fj = out / GROUPS_CSV, out / GROUPS_CSV.replace(".csv", ".json")
    if f.is_file() and fj.is_file():
        cached = list(csv.DictReader(f.open()))
        stats = json.loads(fj.read_text())
        if [r["file"] for r in cached] == files and stats.get("params") == GROUPING:
            return np.array([r["group"] for r in cached]), stats
    t = time.perf_counter()
    # squashed to 224x224 grey: near-duplicates share the frame geometry, so this is the same
    # resampling for both copies, and log_polar needs a centred, square-ish image
    ims = [np.asarray(Image.open(src / r["file"]).convert("L").resize((224, 224), Image.BILINEAR), np.float32)
           for r in rows]
    g = group_near_duplicates(ims, None, **GROUPING)
    secs = time.perf_counter() - t
    names = np.array([f"u{k}" for k in g.groups])
    sizes = np.bincount(g.groups)
    labels = np.array([r["label"] for r in rows])
    mixed = sum(1 for k in range(g.n_groups) if len(set(labels[g.groups == k])) > 1)
    stats = {"method": "imaging_assist.near_duplicates.group_near_duplicates on 224x224 grey copies, all labels "
                       "compared; log-polar NCC candidates (>= 0.35, 12 per image) limited to near-identity "
                       "transforms, high-pass pixel NCC >= 0.2 after registration, union-find",
             "params": GROUPING, "images": len(rows), "groups": int(g.n_groups),
             "groups_with_more_than_one_image": int((sizes > 1).sum()),
             "images_in_such_groups": int(sizes[sizes > 1].sum()), "largest_group": int(sizes.max()),
             "groups_with_two_labels": int(mixed), "verified_pairs": len(g.matches),
             "rejected_candidates": len(g.rejected), "seconds": round(secs, 1)}
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "group"])
        w.writerows(zip(files, labels, names))
    fj.write_text(json.dumps(stats, indent=2) + "\n")
    print("near-duplicate groups:", stats, flush=True)
    return names, stats


def augment_us(x, masks, g, *, rot=12.0, scale=(0.85, 1.2), shift=0.08):
    """Affine (+ horizontal flip) on image and mask together, then gamma, contrast /
    brightness and multiplicative, spatially correlated ("speckle-like") noise."""
    x, m = T.random_affine(x, g, rot_deg=rot, scale=scale, shift=shift, flip_h=True, masks=masks)
    n = x.shape[0]
    v = (x * STD + MEAN).clamp(0, 1)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.35)
    v = v ** gamma
    amp = torch.rand(n, 1, 1, 1, generator=g) * 0.25
    noise = torch.randn(n, 1, SIZE // 3, SIZE // 3, generator=g)
    noise = F.interpolate(noise, size=x.shape[-2:], mode="bilinear", align_corners=False)
    v = v * (1 + amp * noise)
    x = (v - MEAN) / STD
    x = T.random_intensity(x, g, contrast=0.2, brightness=0.2)
    return x, m


def main(argv=None) -> int:
    ap = T.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[1]), 90, 32, 3e-3)
    ap.add_argument("--aux-weight", type=float, default=0.5, help="weight of the mask loss (0: off)")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-measure the weights already in the model folder (no training)")
    args = ap.parse_args(argv)
    dev, out = T.start(args, MODEL_ID)
    src = T.DATA / "ultrasound" / "breast_busi"
    rows, paths = T.read_rows(src)
    y = np.array([LABELS.index(r["label"].lower()) for r in rows])
    groups, gstats = near_duplicate_groups(rows, src, out)  # no patient ids: near-duplicate groups
    split = T.grouped_split(groups, y, (0.70, 0.15, 0.15), seed=args.seed)
    for k in range(3):
        assert not (set(groups[split == k]) & set(groups[split != k])), "group in two splits"
    names = {0: "train", 1: "validation", 2: "test"}
    counts = {names[k]: {"images": int((split == k).sum()), "groups": int(len(set(groups[split == k]))),
                         **{lab: int(((split == k) & (y == i)).sum()) for i, lab in enumerate(LABELS)}}
              for k in range(3)}
    print("splits:", counts, flush=True)

    card = base_card()
    mc = T.card_for_training(card)
    x = T.preprocess_all(mc, paths, MODEL_ID)
    masks = T.read_masks([src / r["mask_file"] for r in rows], (SIZE, SIZE), {255: 1}).to(torch.uint8)
    yt = torch.from_numpy(y)
    itr, iva = np.nonzero(split == 0)[0], np.nonzero(split == 1)[0]

    from imaging_assist.models.architectures import build_network

    net = build_network(ARCH, MODEL_ID)
    model = AuxSeg(net, ARCH["kwargs"]["block_inplanes"])
    # Class weights ~ 1/sqrt(frequency) on the training split (benign is 2-3x the others).
    freq = np.bincount(y[itr], minlength=3) / len(itr)
    cw = torch.tensor((1 / np.sqrt(freq)) / (1 / np.sqrt(freq)).mean(), dtype=torch.float32)
    print("class weights:", [round(float(c), 3) for c in cw], flush=True)

    # The loop (T.fit) hands augment the targets only, so the training "targets" are row
    # numbers into the training split; augment turns them into label + 28x28 mask fraction.
    x_tr, y_tr, m_tr = x[itr], yt[itr], masks[itr]

    def augment(xb, ib, g):
        xb, mb = augment_us(xb, m_tr[ib], g)
        frac = F.avg_pool2d(mb[:, None].float(), SIZE // SEG).flatten(1)
        return xb, torch.cat([y_tr[ib, None].float(), frac], 1)

    def loss_fn(logits, target):
        lab = target[:, 0].long()
        loss = F.cross_entropy(logits, lab, weight=cw.to(logits.device))
        if args.aux_weight > 0:
            m = target[:, 1:].view(-1, 1, SEG, SEG)
            loss = loss + args.aux_weight * F.binary_cross_entropy_with_logits(model.seg, m)
        return loss

    def evaluate(n):
        lo = T.predict(n, x[iva], dev)
        mauc, per = E.macro_auc(y[iva], torch.softmax(lo, 1).numpy())
        vl = float(F.cross_entropy(lo, yt[iva]))
        return {"val_loss": vl, "val_macro_auc": mauc,
                **{f"val_auc_{lab}": a for lab, a in zip(LABELS, per)},
                "score": mauc - 0.01 * vl}

    cpu = torch.device("cpu")
    if args.evaluate_only:
        # Re-measure the shipped weights: same splits, same code.
        info, train_s, temp, train_device = T.load_shipped(net, out)
    else:
        log = T.Log(out / "training_log.csv")
        t0 = time.perf_counter()
        info = T.fit(model, x_tr, torch.arange(len(itr)), loss_fn=loss_fn, augment=augment, evaluate=evaluate,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, device=dev, log=log, seed=args.seed,
                     time_limit_s=args.time_limit)
        train_s = time.perf_counter() - t0
        train_device = T.device_text(dev)
        T.plot_log(log, out / "training_log.png", f"{MODEL_ID}: training",
                   ["val_macro_auc"] + [f"val_auc_{lab}" for lab in LABELS])
        net = model.net.cpu().eval()  # the auxiliary mask head is dropped here
        temp = T.fit_temperature(T.predict(net, x[iva], cpu), yt[iva])
        T.fold_temperature(net.fc, temp)
    # Probabilities rounded as written to predictions.csv, so every number can be recomputed.
    prob = np.round(torch.softmax(T.predict(net, x, cpu), 1).numpy().astype(np.float64), 6)

    mal = LABELS.index("malignant")
    # rounded down to the 4 decimals the card keeps, so the card's threshold gives these numbers
    thr = math.floor(E.threshold_for_sensitivity(y[iva] == mal, prob[iva, mal], 0.90) * 1e4) / 1e4
    vs, vsp = E.sens_spec(y[iva] == mal, prob[iva, mal], thr)

    def macro(a, b):
        return E.macro_auc(a, b)[0]

    def acc_fn(a, b):
        return float((b.argmax(1) == a).mean())

    metrics, details, curves, ss_hows = [], {}, {}, {}
    for k, label in ((2, "test"), (1, "validation")):
        m = split == k
        yy, pp, gg = y[m], prob[m], groups[m]
        n = int(m.sum())
        ng = len(set(gg))
        what = {2: f"test split ({n} images / {ng} near-duplicate groups, split by group; no patient ids, "
                   f"see limitations)",
                1: f"validation split ({n} images / {ng} groups; epoch, temperature and threshold were chosen "
                   f"here)"}[k]
        mauc, per = E.macro_auc(yy, pp)
        # every interval: cluster bootstrap over near-duplicate groups (E.bootstrap_ci)
        mauc_ci = E.bootstrap_ci(macro, yy, pp, clusters=gg, strata=yy, seed=1)
        per_ci = [E.bootstrap_ci(E.roc_auc, yy == c, pp[:, c], clusters=gg, strata=yy, seed=10 + c)
                  for c in range(3)]
        acc = acc_fn(yy, pp)
        acc_ci = E.bootstrap_ci(acc_fn, yy, pp, clusters=gg, strata=yy, seed=2)
        rel = E.top_label_ece(yy, pp)
        ece_ci = E.bootstrap_ci(lambda a, b: E.top_label_ece(a, b).ece, yy, pp, clusters=gg, seed=3, n_boot=500)
        se, sp = E.sens_spec(yy == mal, pp[:, mal], thr)
        se_ci, sp_ci, ss_how = E.sens_spec_ci(yy == mal, pp[:, mal], thr, clusters=gg, seed=4)
        ss_hows.setdefault(ss_how, []).append(label)
        metrics.append(E.metric("macro AUC", mauc, mauc_ci, n, what + ", one-vs-rest AUC averaged over the 3 classes"))
        metrics += [E.metric("AUC", per[c], per_ci[c], n, what + ", one-vs-rest", LABELS[c]) for c in range(3)]
        metrics += [E.metric("accuracy", acc, acc_ci, n, what + ", top label (argmax)"),
                    E.metric("ECE", rel.ece, ece_ci, n, what + ", top-label confidence, 10 bins"),
                    E.metric("sensitivity", se, se_ci, n, what + f", malignant vs rest, threshold {thr:.4f}",
                             "malignant"),
                    E.metric("specificity", sp, sp_ci, n, what + f", malignant vs rest, threshold {thr:.4f}",
                             "malignant")]
        details[label] = {
            "n": n, "macro_auc": mauc, "macro_auc_ci95": mauc_ci,
            "auc": dict(zip(LABELS, per)), "auc_ci95": dict(zip(LABELS, per_ci)),
            "accuracy": acc, "accuracy_ci95": acc_ci, "ece_top_label": rel.ece, "ece_ci95": ece_ci,
            "malignant_threshold": {"threshold": thr, "sensitivity": se, "specificity": sp,
                                    "sensitivity_ci95": se_ci, "specificity_ci95": sp_ci},
            "reliability_top_label": rel.__dict__,
            "confusion_matrix": {"labels": LABELS, "rows_true_cols_predicted_argmax":
                                 E.confusion_matrix(yy, pp.argmax(1), 3)},
        }
        if k == 2:
            for c in range(3):
                fpr, tpr, _ = E.roc_curve(yy == c, pp[:, c])
                curves[f"{LABELS[c]} vs rest"] = (fpr, tpr, per[c])
            T.plot_reliability(rel, out / "reliability_test.png", f"{MODEL_ID} — test, top label")
    T.plot_roc(curves, out / "roc.png", f"{MODEL_ID}: test ROC, one-vs-rest")

    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "group", "label"] + [f"p_{lab}" for lab in LABELS])
        for i in np.nonzero(split > 0)[0]:
            w.writerow([rows[i]["file"], names[int(split[i])], groups[i], LABELS[y[i]]]
                       + [f"{p:.6f}" for p in prob[i]])

    t = details["test"]
    cm = t["confusion_matrix"]["rows_true_cols_predicted_argmax"]
    card.update({
        "thresholds": {"malignant": {
            "threshold": thr, "sensitivity": round(vs, 4), "specificity": round(vsp, 4),
            "data": f"validation split, {counts['validation']['images']} images "
                    f"({counts['validation']['malignant']} malignant); malignant vs benign+normal, "
                    f"chosen for sensitivity >= 0.90"}},
        "metrics": metrics,
        "metrics_ci": "every interval: percentile cluster bootstrap resampling whole near-duplicate groups "
                      "(imaging_assist.evaluation.bootstrap_ci; stratified by label, 2,000 resamples; ECE 500 "
                      "unstratified); sensitivity/specificity: "
                      + "; ".join(f"{h} ({', '.join(v)})" for h, v in ss_hows.items()),
        "data": {
            "training": f"BUSI breast ultrasound (Al-Dhabyani et al. 2020, Baheya Hospital, Cairo; women aged "
                        f"25-75; LOGIQ E9 scanners), grey JPEG copy in shared/data/ultrasound/breast_busi "
                        f"(687 of the 780 images, shorter side 256): {counts['train']['images']} training images "
                        f"({counts['train']['benign']} benign, {counts['train']['malignant']} malignant, "
                        f"{counts['train']['normal']} normal), with their tumour masks (used only for an "
                        f"auxiliary training loss)",
            "validation": f"{counts['validation']['images']} images (epoch choice, temperature, threshold)",
            "test": f"{counts['test']['images']} images ({counts['test']['benign']} benign, "
                    f"{counts['test']['malignant']} malignant, {counts['test']['normal']} normal)",
            "splits": counts,
            "split_rule": f"BUSI has no patient ids: the {gstats['images']} images were grouped into "
                          f"{gstats['groups']} near-duplicate groups ({gstats['groups_with_more_than_one_image']} "
                          f"with more than one image, largest {gstats['largest_group']}; "
                          f"{gstats['groups_with_two_labels']} hold images under two labels) by image registration "
                          f"(imaging_assist/near_duplicates.py, cached in {GROUPS_CSV}); whole groups were split "
                          "70/15/15, stratified by the group's first label, seed 0, so no group is in two splits. "
                          "Other images of the same patient (another probe position, a shifted crop) are not "
                          "found that way and can be in more than one split, so the test metrics may still be "
                          "optimistic.",
            "near_duplicates": gstats,
        },
        "license": "Weights: BSD-2-Clause (this project). Training data licence: unknown (none stated in the "
                   "mirror used; BUSI, doi:10.1016/j.dib.2019.104863, is distributed for research use)",
        "intended_use": "Research, teaching and software demonstration: sorts a B-mode breast ultrasound image "
                        "into benign lesion / malignant lesion / no lesion and shows where the network looked. "
                        "NOT FOR CLINICAL USE: not a diagnosis, not validated on any population or scanner.",
        "limitations": [
            "No patient ids exist in BUSI: the split is by near-duplicate group (copies of one frame, found by "
            "registration), but other images of one patient may still be in both training and test. The test "
            "metrics are possibly optimistic.",
            f"Small data: {counts['test']['images']} test images ({counts['test']['malignant']} malignant, "
            f"{counts['test']['normal']} normal), hence the wide confidence intervals.",
            "One hospital, one scanner family (GE LOGIQ E9), one population (Egyptian women 25-75). Other "
            "scanners, presets, probes, elastography/Doppler overlays and other populations were not seen.",
            f"Benign vs malignant is the hard part: on test (argmax), {cm[1][0] + cm[1][2]} of {sum(cm[1])} malignant "
            f"images were missed ({cm[1][0]} called benign, {cm[1][2]} normal), {cm[0][1]} of {sum(cm[0])} benign "
            f"images were called malignant and {cm[0][2]} normal, and {cm[2][0]} of {sum(cm[2])} normal images "
            "benign.",
            "The whole frame is resized to 224x224 without keeping the aspect ratio; small lesions lose detail. "
            "Some BUSI images carry calliper marks or text that a network may learn as a shortcut.",
            f"The 'malignant' operating threshold ({thr:.4f}, chosen on validation for sensitivity >= 0.90) flags "
            f"many non-malignant images: on test sensitivity {t['malignant_threshold']['sensitivity']:.2f}, "
            f"specificity {t['malignant_threshold']['specificity']:.2f}.",
            "Trained from scratch (no pretrained weights) on about 480 images.",
            "The BI-RADS category is not predicted; 'normal' means no lesion in the frame, not a normal breast.",
        ],
        "training": {"script": "scripts/train_us_breast.py", "seed": args.seed, "device": train_device,
                     "epochs": info["epochs_run"], "best_epoch": info["best_epoch"],
                     "batch_size": args.batch_size, "max_lr": args.lr, "weight_decay": args.weight_decay,
                     "optimizer": "AdamW, one-cycle",
                     "loss": f"cross-entropy with class weights 1/sqrt(frequency) {[round(float(c), 3) for c in cw]} "
                             f"+ {args.aux_weight} x BCE of a training-only 28x28 tumour-mask head on "
                             "layer2-4 (dropped before saving)",
                     "augmentation": "rotation ±12°, scale 0.85-1.2, shift ±8%, horizontal flip, gamma "
                                     "exp(±0.35), multiplicative correlated noise (≤25%), contrast/brightness ±20%",
                     "selection": "epoch with the best validation macro AUC - 0.01 x validation loss",
                     "temperature": round(temp, 4), "train_seconds": round(train_s, 1)},
        "files": {"metrics": "metrics.json", "training_log": "training_log.csv", "training_plot": "training_log.png",
                  "predictions": "predictions.csv", "roc": "roc.png", "reliability": ["reliability_test.png"],
                  "near_duplicate_groups": [GROUPS_CSV, GROUPS_CSV.replace(".csv", ".json")]},
    })
    sanity = out / "sanity.json"  # written by scripts/check_explanations.py (run after training)
    if sanity.is_file():
        sm = json.loads(sanity.read_text())["methods"]
        bad = {k: v["final_spearman"] for k, v in sm.items() if not v["passed"]}
        card["limitations"].append(
            "Explanations: weight-randomisation sanity check (scripts/check_explanations.py, 3 images): "
            + ("all methods passed." if not bad else
               "failed for " + ", ".join(f"{k} (worst Spearman {v:.2f})" for k, v in bad.items())
               + "; these maps may not depend on what the network learned"
               + (", prefer " + ", ".join(k for k, v in sm.items() if v["passed"]) + "."
                  if any(v["passed"] for v in sm.values()) else ".")))
    # last, as on the shipped card (issue s24: a retrain keeps the sentence session 23 added)
    card["limitations"].append(split_duplicates_limitation(out, MODEL_ID, t, **SPLIT_DUPLICATES))
    if args.evaluate_only:  # keep the card fields this script does not write
        card = T.keep_card_fields(card, out)
    from imaging_assist.models.build import save_model_folder

    save_model_folder(out, card, net)
    T.fit_ood(MODEL_ID, out)  # issue 14: OOD statistics of these weights (scripts/fit_ood.py)
    T.write_json(out / "metrics.json", {"model": MODEL_ID, "labels": LABELS,
                                        "threshold": card["thresholds"]["malignant"], "metrics": metrics,
                                        "details": details, "splits": counts, "training": card["training"]})
    print(f"test macro AUC {t['macro_auc']:.4f} {t['macro_auc_ci95']}, per class "
          f"{ {k: round(v, 4) for k, v in t['auc'].items()} }, accuracy {t['accuracy']:.3f}, "
          f"ECE {t['ece_top_label']:.3f}; train {train_s:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
