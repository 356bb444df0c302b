#!/usr/bin/env python
"""Train ``weights/cxr-pneumonia``: NORMAL vs PNEUMONIA on frontal paediatric chest X-rays.

Data: ``cxr/pneumonia_kermany`` (224x224 grey JPEGs; labels.csv).

Splits (no patient in two of them):
* the images of the original ``train`` split are divided by patient, stratified by label,
  70 / 15 / 15 into train / validation / test ("patient-split test");
* the original ``test`` split is reported as its own test set (the split papers compare on,
  and harder), restricted to the persons with no image in training or validation.  The
  person numbers (``person123_bacteria_456``) are ONE numbering across both original splits
  (the image numbers never repeat between them and rise with the person number in both), so
  147 persons of the original test split also have images in the original train split: the
  whole original test split is not "other patients".  Its figures, whole, are in metrics.json
  (``details.original_test_all``) and in a limitation, never quoted beside a decision.

The operating threshold is chosen on validation for sensitivity >= 0.95; temperature
scaling is fitted on validation and folded into the last layer.

    python scripts/train_cxr_pneumonia.py [--epochs N] [--device cuda]
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import torch
import torch.nn.functional as F

import _training as T
from imaging_assist import evaluation as E

MODEL_ID = "cxr-pneumonia"
LABELS = ["normal", "pneumonia"]
ARCH = {"library": "monai", "name": "ResNet",
        "kwargs": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128],
                   "spatial_dims": 2, "n_input_channels": 1, "num_classes": 2,
                   "conv1_t_size": 7, "conv1_t_stride": 2}}
INPUT = {"channels": 1, "size": [224, 224], "axis_order": "row_col",
         "intensity": [{"type": "percentile", "lower": 0.5, "upper": 99.5},
                       {"type": "normalize", "mean": [0.5], "std": [0.25]}],
         "invert_monochrome1": True, "dicom_values": "display"}


def base_card() -> dict:
    return {
        "schema_version": 1, "id": MODEL_ID,
        "name": "Pneumonia on frontal paediatric chest X-ray (small ResNet, 224²)",
        "version": "1.0.0", "task": "classification", "modality": ["CR", "DX"],
        "body_part": "CHEST", "spatial_dims": 2, "architecture": ARCH, "input": INPUT,
        "output": {"activation": "softmax"}, "labels": LABELS, "gradcam_layer": "layer4",
        # how much of the heat map's positive mass lies inside the lungs (docs/model_card.md)
        "explanation_region": {"model": "cxr-lung-seg", "labels": ["right_lung", "left_lung"], "name": "lungs"},
        "not_for_clinical_use": True,
    }


def main(argv=None) -> int:
    ap = T.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[1]), 18, 64, 3e-3)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-measure the weights already in the model folder (no training)")
    args = ap.parse_args(argv)
    dev, out = T.start(args, MODEL_ID)
    src = T.DATA / "cxr" / "pneumonia_kermany"
    rows, paths = T.read_rows(src)
    y = np.array([LABELS.index(r["label"].lower()) for r in rows])
    # the split of the original train split is made on these labels (unchanged since the
    # shipped weights were trained); a person across the two original splits is the same person
    groups = np.array([f"{r['source_split']}:{r['patient_id']}" for r in rows])
    person = np.array([r["patient_id"] for r in rows])
    orig = np.array([r["source_split"] for r in rows])
    split = np.full(len(rows), 3)  # 3 = original test split, persons never trained on
    tr = orig == "train"
    split[tr] = T.grouped_split(groups[tr], y[tr], (0.70, 0.15, 0.15), seed=args.seed)
    fitted = set(person[(split == 0) | (split == 1)])  # trained on, or threshold/temperature
    split[(orig == "test") & np.isin(person, list(fitted))] = 4  # 4 = original test, seen persons
    for k in (0, 1):  # no person of training or validation in another split (the two test sets may share)
        assert not (set(person[split == k]) & set(person[(split != k) & (split != 4)])), "patient in two splits"
    names = {0: "train", 1: "validation", 2: "test", 3: "original_test", 4: "original_test_seen"}
    counts = {names[k]: {"images": int((split == k).sum()),
                         "patients": int(len(set(person[split == k]))),
                         "pneumonia": int(((split == k) & (y == 1)).sum()),
                         "normal": int(((split == k) & (y == 0)).sum())} for k in range(5)}
    whole = orig == "test"
    counts["original_test_all"] = {"images": int(whole.sum()), "patients": int(len(set(person[whole]))),
                                   "pneumonia": int((whole & (y == 1)).sum()), "normal": int((whole & (y == 0)).sum())}
    groups = person  # intervals resample persons (the same person across the original splits)
    print("splits:", counts, flush=True)

    card = base_card()
    mc = T.card_for_training(card)
    x = T.preprocess_all(mc, paths, MODEL_ID)
    yt = torch.from_numpy(y)
    itr, iva = np.nonzero(split == 0)[0], np.nonzero(split == 1)[0]

    from imaging_assist.models.architectures import build_network

    net = build_network(ARCH, MODEL_ID)

    def augment(xb, yb, g):
        xb = T.random_affine(xb, g, rot_deg=10, scale=(0.9, 1.12), shift=0.06)
        return T.random_intensity(xb, g, contrast=0.2, brightness=0.2), yb

    def evaluate(n):
        lo = T.predict(n, x[iva], dev)
        p = torch.softmax(lo, 1)[:, 1].numpy()
        return {"val_loss": float(F.cross_entropy(lo, yt[iva])), "val_auc": E.roc_auc(y[iva], p),
                "score": E.roc_auc(y[iva], p) - 0.01 * float(F.cross_entropy(lo, yt[iva]))}

    if args.evaluate_only:
        # Re-measure the shipped weights: same splits, same code.
        info, train_s, temp, train_device = T.load_shipped(net, out)
    else:
        log = T.Log(out / "training_log.csv")
        t0 = time.perf_counter()
        info = T.fit(net, x[itr], yt[itr], loss_fn=F.cross_entropy, augment=augment, evaluate=evaluate,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                     device=dev, log=log, seed=args.seed, time_limit_s=args.time_limit)
        train_s = time.perf_counter() - t0
        train_device = T.device_text(dev)
        T.plot_log(log, out / "training_log.png", f"{MODEL_ID}: training", ["val_auc"])
        net.cpu()
        temp = T.fit_temperature(T.predict(net, x[iva], torch.device("cpu")), yt[iva])
        T.fold_temperature(net.fc, temp)
    prob = torch.softmax(T.predict(net, x, torch.device("cpu")), 1)[:, 1].numpy()

    # rounded DOWN to the 4 decimals the card stores, and every number computed with that
    # value: the app decides with the card's threshold, so sensitivity can only go up
    thr = float(np.floor(E.threshold_for_sensitivity(y[iva], prob[iva], 0.95) * 1e4) / 1e4)
    vs, vsp = E.sens_spec(y[iva], prob[iva], thr)
    metrics, details, curves, ss_hows = [], {}, {}, {}
    seen = counts["original_test_seen"]
    for k, label in ((2, "test"), (3, "original_test"), (1, "validation"), (5, "original_test_all")):
        m = (split == k) if k != 5 else whole
        yy, pp, gg = y[m], prob[m], groups[m]
        what = {2: f"patient-split test ({counts['test']['patients']} patients of the original train split)",
                # (the word "validation" marks a set the operating point never quotes: not used here)
                3: (f"original Kermany test split, the {counts['original_test']['patients']} persons never trained on "
                    f"(its {seen['patients']} persons with images in the model's fitting splits left out)"),
                1: "validation split (threshold and temperature were fitted here)",
                5: "whole original Kermany test split (papers' figure; some of its persons were trained on)"}[k]
        auc = E.roc_auc(yy, pp)
        # Patients have several images (1,047 of them here): every interval resamples patients
        auc_ci = E.bootstrap_ci(E.roc_auc, yy, pp, clusters=gg, strata=yy, seed=1)
        se, sp = E.sens_spec(yy, pp, thr)
        se_ci, sp_ci, ss_how = E.sens_spec_ci(yy, pp, thr, clusters=gg, seed=2)
        ss_hows.setdefault(ss_how, []).append(label.replace("_", " "))
        rel = E.reliability(yy, pp)
        ece_ci = E.bootstrap_ci(lambda a, b: E.reliability(a, b).ece, yy, pp, clusters=gg, seed=4, n_boot=500)
        acc = float(((pp >= thr) == yy).mean())
        new = [E.metric("AUC", auc, auc_ci, m.sum(), what, "pneumonia"),
                    E.metric("sensitivity", se, se_ci, m.sum(), what + f", threshold {thr:.4f}", "pneumonia"),
                    E.metric("specificity", sp, sp_ci, m.sum(), what + f", threshold {thr:.4f}", "pneumonia"),
                    E.metric("ECE", rel.ece, ece_ci, m.sum(), what + ", 10 bins", "pneumonia")]
        if k != 5:  # the whole original split: metrics.json's details only, never beside a decision
            metrics += new
        details[label] = {"n": int(m.sum()), "patients": int(len(set(gg))), "auc": auc, "auc_ci95": auc_ci,
                          "sensitivity": se, "sensitivity_ci95": se_ci, "specificity": sp,
                          "specificity_ci95": sp_ci, "ece_ci95": ece_ci, "accuracy": acc, "ece": rel.ece,
                          "reliability": rel.__dict__,
                          "confusion_matrix": {"labels": LABELS, "rows_true_cols_predicted":
                                               E.confusion_matrix(yy, (pp >= thr).astype(int), 2)}}
        if k in (2, 3):
            fpr, tpr, _ = E.roc_curve(yy, pp)
            curves[label.replace("_", " ")] = (fpr, tpr, auc)
            T.plot_reliability(rel, out / f"reliability_{label}.png", f"{MODEL_ID} — {label.replace('_', ' ')}")
    T.plot_roc(curves, out / "roc.png", f"{MODEL_ID}: ROC (threshold from validation)")

    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "patient", "label", "p_pneumonia"])
        for i in np.nonzero(split > 0)[0]:
            w.writerow([rows[i]["file"], names[int(split[i])], groups[i], LABELS[y[i]], f"{prob[i]:.6f}"])

    t = details["test"]
    o = details["original_test"]
    oa = details["original_test_all"]
    card.update({
        "thresholds": {"pneumonia": {
            "threshold": thr, "sensitivity": round(vs, 4), "specificity": round(vsp, 4),
            "data": f"validation split, {counts['validation']['images']} images; chosen for sensitivity >= 0.95"}},
        "metrics": metrics,
        "metrics_ci": "every interval: percentile cluster bootstrap resampling whole patients "
                      "(imaging_assist.evaluation.bootstrap_ci; many patients have several images), AUC "
                      "stratified by label, 2,000 resamples; ECE 500 unstratified; sensitivity and specificity: "
                      + "; ".join(f"{h} ({', '.join(v)})" for h, v in ss_hows.items()),
        "data": {
            "training": f"Kermany et al. 2018 paediatric chest X-rays (Guangzhou Women and Children's Medical Center, "
                        f"patients aged 1-5), 224x224 grey JPEG mirror in shared/data/cxr/pneumonia_kermany: "
                        f"{counts['train']['images']} images of {counts['train']['patients']} patients from the original train split",
            "validation": f"{counts['validation']['images']} images / {counts['validation']['patients']} patients "
                          f"of the original train split (patient-disjoint; threshold + temperature)",
            "test": f"patient-split test: {counts['test']['images']} images / {counts['test']['patients']} patients; "
                    f"original test split, persons never trained on: {counts['original_test']['images']} images / "
                    f"{counts['original_test']['patients']} persons (of {counts['original_test_all']['images']} / "
                    f"{counts['original_test_all']['patients']})",
            "splits": counts,
            "split_rule": "original train split divided 70/15/15 by patient (patient_id), stratified by label, seed 0; "
                          "original test split as a second test set without the persons that also have images in "
                          "training or validation (the person numbers run across both original splits)",
        },
        "license": "Weights: BSD-2-Clause (this project). Training data licence: unknown in the mirror used "
                   "(the original Mendeley Data record, doi:10.17632/rscbjbr9sj.2, is commonly listed as CC BY 4.0)",
        "intended_use": "Research, teaching and software demonstration: shows where a small CNN sees signs of "
                        "pneumonia on a frontal paediatric chest X-ray. NOT FOR CLINICAL USE: not a diagnosis, "
                        "not validated on any population.",
        "limitations": [
            "Trained only on paediatric (1-5 years) anterior-posterior radiographs from one hospital (Kermany et al. 2018); PA and "
            "lateral views, adults, "
            "other scanners, portable/ICU films and post-processing differ and will shift the scores.",
            f"On the original test split (persons never trained on) AUC is {o['auc']:.3f} and specificity at the "
            f"operating threshold {o['specificity']:.2f} (sensitivity {o['sensitivity']:.2f}); expect many false "
            "positives on normal films.",
            f"The whole original Kermany test split, the figure papers quote, gives AUC {oa['auc']:.3f} (specificity "
            f"{oa['specificity']:.2f}, sensitivity {oa['sensitivity']:.2f}), but {seen['patients']} of its "
            f"{counts['original_test_all']['patients']} persons also have images in training or validation (the data "
            "set's person numbers run across its splits), so it is not an independent test of this model.",
            "Images were 224x224 with aspect ratio not kept (squashed) in the training mirror; inputs are resized the "
            "same way, so fine detail is lost.",
            "Bacterial and viral pneumonia are one class; other opacities (effusion, atelectasis, masses, "
            "devices) were not in the training data and may be called pneumonia.",
            "Labels come from the data set (no radiologist re-read here); the data set's labels are known to be noisy.",
        ],
        "training": {"script": "scripts/train_cxr_pneumonia.py", "seed": args.seed, "device": train_device,
                     "epochs": info["epochs_run"], "best_epoch": info["best_epoch"],
                     "batch_size": args.batch_size, "max_lr": args.lr, "optimizer": "AdamW, one-cycle",
                     "augmentation": "rotation ±10°, scale 0.9-1.12, shift ±6%, contrast/brightness ±20%",
                     "temperature": round(temp, 4), "train_seconds": round(train_s, 1)},
        "files": {"metrics": "metrics.json", "training_log": "training_log.csv", "training_plot": "training_log.png",
                  "predictions": "predictions.csv", "roc": "roc.png",
                  "reliability": ["reliability_test.png", "reliability_original_test.png"]},
    })
    if args.evaluate_only:  # keep the card fields this script does not write
        card = T.keep_card_fields(card, out)
    from imaging_assist.models.build import save_model_folder

    save_model_folder(out, card, net)
    T.fit_ood(MODEL_ID, out)  # issue 14: OOD statistics of these weights (scripts/fit_ood.py)
    T.write_json(out / "metrics.json", {"model": MODEL_ID, "positive_label": "pneumonia",
                                        "threshold": card["thresholds"]["pneumonia"], "metrics": metrics,
                                        "details": details, "splits": counts, "training": card["training"]})
    print(f"test AUC {t['auc']:.4f} {t['auc_ci95']}, original test AUC {o['auc']:.4f} {o['auc_ci95']}; "
          f"threshold {thr:.4f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
