#!/usr/bin/env python
"""Train ``weights/cxr-lung-seg``: right and left lung fields on frontal chest X-rays.

Data: ``cxr/lung_masks_jsrt`` (217 JSRT radiographs, 224x224 grey PNG, label maps with
150 = right lung (the image's left side), 200 = left lung, 250 = heart).  It is the largest
of the three lung-mask sets in ``../shared/data/cxr`` and the only one with every image at
the same (clean, PA, non-squashed) geometry.  JSRT has one radiograph per patient, so each
image is its own group; the split is 70 / 15 / 15 by image (= by patient), seed 0.

A MONAI 2D UNet, softmax over background / right lung / left lung (label map value = index),
DiceCE loss, augmentation with rotation / scale / aspect / shift (no flips: left and right
matter) and contrast / brightness / gamma.  The best epoch on the validation mean Dice is
kept.

Test metrics (JSRT test split, through the engine's ``run_model``, i.e. exactly what a user
gets): Dice per lung and their mean, 95% Hausdorff distance in pixels (and in mm derived from
JSRT's 2048² originals at 0.175 mm, i.e. 1.6 mm per pixel at 224²), all with bootstrap 95% CIs
over patients (``evaluation.bootstrap_ci`` with the patient ids as clusters: JSRT and the NLM
sets have one image per patient, so that is the per-image bootstrap; the COVID-19 set has
100 images of 73 patients, resampled by patient).  External tests (never trained on, evaluated on each mask's own grid):
``lung_masks_covid_generalblockchain`` (labels 1 right, 2 left) and
``lung_masks_nlm_tb_subset`` (one union mask: Dice of the union).

    python scripts/train_cxr_lung_seg.py [--epochs N] [--device cuda] [--time-limit S] [--evaluate-only]

``--evaluate-only`` re-measures the shipped weights (no training; the card's training block is
kept as it was).
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np

import _training as T
from imaging_assist import evaluation as E
# augmentation, loss, validation and measuring: the package's training code (one code path
# with ``imaging-assist finetune --model cxr-lung-seg``)
from imaging_assist.training.segmentation import (augment_2d, dice_ce_loss, jsrt_split, mean_ci, per_lung,
                                                  read_label_png, run_on_files, validation_by_dice)

MODEL_ID = "cxr-lung-seg"
LABELS = ["background", "right_lung", "left_lung"]
JSRT_VALUES = {150: 1, 200: 2}  # stored pixel value -> label index (250 = heart -> background)
MM_PER_PX_224 = 2048 * 0.175 / 224  # JSRT originals: 2048 px at 0.175 mm -> 1.6 mm per pixel at 224²
ARCH = {"library": "monai", "name": "UNet",
        "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 3,
                   "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2],
                   "num_res_units": 2, "norm": "batch"}}
INPUT = {"channels": 1, "size": [224, 224], "axis_order": "row_col",
         "intensity": [{"type": "percentile", "lower": 0.5, "upper": 99.5},
                       {"type": "normalize", "mean": [0.5], "std": [0.25]}],
         "invert_monochrome1": True, "dicom_values": "display"}


def base_card() -> dict:
    return {
        "schema_version": 1, "id": MODEL_ID,
        "name": "Lung fields on frontal chest X-ray (right / left lung, 2D UNet, 224²)",
        "version": "1.0.0", "task": "segmentation", "modality": ["CR", "DX"],
        "body_part": "CHEST", "spatial_dims": 2, "architecture": ARCH, "input": INPUT,
        "output": {"activation": "softmax"}, "labels": LABELS,
        "inference": {"blend": "constant", "overlap": 0.0},
        "not_for_clinical_use": True,
    }


def paediatric_check(model, n_per_class: int = 40, seed: int = 0) -> dict:
    """No masks exist for the paediatric Kermany films (the pneumonia model's data), so only
    plausibility is measured there: how often a lung falls apart (largest piece < 80% of it,
    the check ``explain.regions`` warns about) or both lungs cover < 15% of the image."""
    from imaging_assist.explain.regions import largest_piece_share

    src = T.DATA / "cxr" / "pneumonia_kermany"
    rows = [r for r in csv.DictReader((src / "labels.csv").open()) if r["source_split"] == "test"]
    rng = np.random.default_rng(seed)
    out = {}
    for lab in ("NORMAL", "PNEUMONIA"):
        rr = [r for r in rows if r["label"] == lab]
        pick = [rr[i] for i in rng.choice(len(rr), n_per_class, replace=False)]
        labs = run_on_files(model, [src / r["file"] for r in pick])
        cover = np.array([(a > 0).mean() for a in labs])
        frag = np.array([min((largest_piece_share(a[None] == k) or 0.0) for k in (1, 2)) < 0.8 for a in labs])
        out[lab.lower()] = {"n": n_per_class, "fragmented": round(float(frag.mean()), 3),
                            "cover_below_15pct": round(float((cover < 0.15).mean()), 3),
                            "either": round(float((frag | (cover < 0.15)).mean()), 3),
                            "median_cover": round(float(np.median(cover)), 3)}
    return out


def main(argv=None) -> int:
    ap = T.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[1]), 40, 8, 3e-3)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-measure the weights already in the model folder (no training)")
    args = ap.parse_args(argv)
    dev, out = T.start(args, MODEL_ID)
    t_all = time.perf_counter()

    src = T.DATA / "cxr" / "lung_masks_jsrt"
    rows, paths = T.read_rows(src)
    mpaths = [src / r["label_mask"] for r in rows]
    split, groups = jsrt_split(rows, seed=args.seed)
    assert len(set(groups)) == len(groups), "JSRT: one image per patient expected"
    nodule = np.array([r["nodule_state"] not in ("", "non-nodule") for r in rows]).astype(int)
    for k in range(3):
        assert not (set(groups[split == k]) & set(groups[split != k])), "patient in two splits"
    names = {0: "train", 1: "validation", 2: "test"}
    counts = {names[k]: {"images": int((split == k).sum()), "patients": int(len(set(groups[split == k]))),
                         "with_nodule": int(((split == k) & (nodule == 1)).sum())} for k in range(3)}
    print("splits:", counts, flush=True)

    card = base_card()
    mc = T.card_for_training(card)
    x = T.preprocess_all(mc, paths, MODEL_ID)
    y = T.read_masks(mpaths, tuple(INPUT["size"]), JSRT_VALUES)
    itr, iva, ite = (np.nonzero(split == k)[0] for k in range(3))

    from imaging_assist.models.architectures import build_network

    net = build_network(ARCH, MODEL_ID)
    loss_fn = dice_ce_loss()
    augment = augment_2d  # rotation, scale, shift, aspect, gamma, contrast/brightness; no flips
    evaluate = validation_by_dice(x[iva], y[iva], loss_fn, dev, {1: "right", 2: "left"})

    old_training = None
    if args.evaluate_only:
        # Re-measure the shipped weights: same splits, same code; the training record is kept.
        import json

        from safetensors.torch import load_file

        old_training = json.loads((out / "model.json").read_text())["training"]
        net.load_state_dict(load_file(str(out / "model.safetensors")))
        info, train_s = {"epochs_run": None, "best_epoch": None}, 0.0
    else:
        log = T.Log(out / "training_log.csv")
        t0 = time.perf_counter()
        info = T.fit(net, x[itr], y[itr], loss_fn=loss_fn, augment=augment, evaluate=evaluate,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                     device=dev, log=log, seed=args.seed, time_limit_s=args.time_limit)
        train_s = time.perf_counter() - t0
        T.plot_log(log, out / "training_log.png", f"{MODEL_ID}: training",
                   ["val_dice", "val_dice_right", "val_dice_left"])
    net.cpu().eval()

    # ---------------------------------------------------------------- test (engine path)
    from imaging_assist.models.loaders import LoadedModel

    model = LoadedModel(mc, net, "state_dict")
    te = time.perf_counter()
    metrics, details, pred_rows = [], {}, []

    # JSRT test split: 224² images, the model grid is the image grid.
    labs = run_on_files(model, [paths[i] for i in ite])
    truth = [read_label_png(mpaths[i], JSRT_VALUES) for i in ite]
    per = {k: [per_lung(a, b, k) for a, b in zip(labs, truth)] for k in (1, 2)}
    d_r = np.array([v[0] for v in per[1]])
    d_l = np.array([v[0] for v in per[2]])
    h_r = np.array([v[1] for v in per[1]])
    h_l = np.array([v[1] for v in per[2]])
    d_mean = (d_r + d_l) / 2
    h_mean = (h_r + h_l) / 2
    what = (f"JSRT patient-split test ({len(ite)} images = {len(ite)} patients), engine run_model "
            "at the image's own 224² grid")
    jsrt = {}
    for name, vals, lab, seed in (("Dice", d_mean, "mean of right and left lung", 1),
                                  ("Dice", d_r, "right_lung", 2), ("Dice", d_l, "left_lung", 3),
                                  ("HD95_px", h_mean, "mean of right and left lung", 4),
                                  ("HD95_px", h_r, "right_lung", 5), ("HD95_px", h_l, "left_lung", 6)):
        v, ci, n = mean_ci(vals, seed, clusters=groups[ite])  # one image per patient (asserted above)
        metrics.append(E.metric(name, v, ci, n, what, lab))
        jsrt[f"{name}:{lab}"] = {"value": v, "ci95": ci, "n": n}
        if name == "HD95_px":
            metrics.append(E.metric("HD95_mm", v * MM_PER_PX_224, (ci[0] * MM_PER_PX_224, ci[1] * MM_PER_PX_224),
                                    n, what + "; derived: px x 1.6 mm (JSRT 2048² at 0.175 mm shown at 224²)",
                                    lab, digits=3))
    for i, a, b, c, dd, e in zip(ite, d_r, d_l, h_r, h_l, d_mean):
        pred_rows.append([rows[i]["file"], "jsrt_test", f"{a:.5f}", f"{b:.5f}", f"{c:.3f}", f"{dd:.3f}", ""])
    worst = sorted(zip(d_mean, [rows[i]["file"] for i in ite]))[:3]
    details["jsrt_test"] = {"n": int(len(ite)), "metrics": jsrt,
                            "hd95_undefined": {"right_lung": int(np.isnan(h_r).sum()),
                                               "left_lung": int(np.isnan(h_l).sum()),
                                               "why": "lung missing from the prediction; HD95 n is lower"},
                            "worst_mean_dice": [{"file": f, "dice": round(float(v), 4)} for v, f in worst]}
    print(f"JSRT test: Dice {d_mean.mean():.4f} (right {d_r.mean():.4f}, left {d_l.mean():.4f}), "
          f"HD95 {np.nanmean(h_mean):.2f} px", flush=True)

    # External 1: COVID-19 image collection (labels 1 right, 2 left), other sizes.
    csrc = T.DATA / "cxr" / "lung_masks_covid_generalblockchain"
    crow = list(csv.DictReader((csrc / "labels.csv").open()))
    labs = run_on_files(model, [csrc / r["image"] for r in crow])
    truth = [read_label_png(csrc / r["label_mask"], {1: 1, 2: 2}) for r in crow]
    cov = {}
    cpid = np.array([r["patient_id"] for r in crow])  # 100 images of 73 patients: resampled by patient
    for k, lname in ((1, "right_lung"), (2, "left_lung")):
        has = np.array([(b == k).any() for b in truth])
        have = [(a, b) for a, b, h in zip(labs, truth, has) if h]
        v, ci, n = mean_ci([E.dice(a == k, b == k) for a, b in have], 10 + k, clusters=cpid[has])
        cov[f"Dice:{lname}"] = {"value": v, "ci95": ci, "n": n}
        metrics.append(E.metric("Dice", v, ci, n, "external: lung_masks_covid_generalblockchain (COVID-19 image "
                                "data collection, PA/AP, mostly COVID-19; images where this lung is annotated), "
                                "each image's own grid", lname))
    union = [E.dice(a > 0, b > 0) for a, b in zip(labs, truth)]
    v, ci, n = mean_ci(union, 13, clusters=cpid)
    cov["Dice:union"] = {"value": v, "ci95": ci, "n": n}
    metrics.append(E.metric("Dice", v, ci, n, f"external: lung_masks_covid_generalblockchain, both lungs as one "
                            f"mask; {len(crow)} images of {len(set(cpid))} patients, CI resampled by patient",
                            "lungs (union)"))
    for r, a, b in zip(crow, labs, truth):
        pred_rows.append([r["image"], "covid_generalblockchain",
                          f"{E.dice(a == 1, b == 1):.5f}" if (b == 1).any() else "",
                          f"{E.dice(a == 2, b == 2):.5f}" if (b == 2).any() else "", "", "",
                          f"{E.dice(a > 0, b > 0):.5f}"])
    ratio = {lname: round(float(np.median([(a == k).sum() / (b == k).sum() for a, b in zip(labs, truth)
                                            if (b == k).any()])), 3)
             for k, lname in ((1, "right_lung"), (2, "left_lung"))}
    details["external_covid_generalblockchain"] = {"n": len(crow), "metrics": cov,
                                                   "median_area_ratio_predicted_over_annotated": ratio}
    print(f"COVID external: union Dice {v:.4f}", flush=True)

    # External 2: NLM TB (Shenzhen + Montgomery), union mask only.
    nsrc = T.DATA / "cxr" / "lung_masks_nlm_tb_subset"
    nrow = list(csv.DictReader((nsrc / "labels.csv").open()))
    npid = np.array([r["patient_id"] for r in nrow])
    assert len(set(npid)) == len(npid), "NLM TB: one image per case expected"
    labs = run_on_files(model, [nsrc / r["file"] for r in nrow])
    truth = [read_label_png(nsrc / r["mask"], {255: 1}) for r in nrow]
    union = np.array([E.dice(a > 0, b > 0) for a, b in zip(labs, truth)])
    hd = np.array([E.hausdorff95(a > 0, b > 0) for a, b in zip(labs, truth)])
    nlm = {}
    v, ci, n = mean_ci(union, 20, clusters=npid)
    nlm["Dice:union"] = {"value": v, "ci95": ci, "n": n}
    metrics.append(E.metric("Dice", v, ci, n, "external: lung_masks_nlm_tb_subset (Shenzhen + Montgomery, all "
                            "TB-abnormal; one union mask per image), each image's own grid (shorter side 256)",
                            "lungs (union)"))
    for src_name in ("Shenzhen", "Montgomery"):
        m = np.array([r["source"] == src_name for r in nrow])
        if m.sum() >= 3:
            v2, ci2, n2 = mean_ci(union[m], 21 if src_name == "Shenzhen" else 22, clusters=npid[m])
            nlm[f"Dice:union:{src_name}"] = {"value": v2, "ci95": ci2, "n": n2}
            metrics.append(E.metric("Dice", v2, ci2, n2, f"external: lung_masks_nlm_tb_subset, {src_name} only",
                                    "lungs (union)"))
    vh, cih, nh = mean_ci(hd, 23, clusters=npid)
    nlm["HD95_px:union"] = {"value": vh, "ci95": cih, "n": nh}
    metrics.append(E.metric("HD95_px", vh, cih, nh, "external: lung_masks_nlm_tb_subset, union mask, pixels of the "
                            "256-short-side images (no spacing known)", "lungs (union)", digits=3))
    for r, a, b, h in zip(nrow, labs, truth, hd):
        pred_rows.append([r["file"], "nlm_tb_subset", "", "", "", "", f"{E.dice(a > 0, b > 0):.5f}"])
    details["external_nlm_tb_subset"] = {"n": len(nrow), "metrics": nlm}
    print(f"NLM external: union Dice {v:.4f}", flush=True)
    paed = paediatric_check(model)
    details["paediatric_kermany_plausibility"] = paed
    print(f"paediatric plausibility: {paed}", flush=True)
    eval_s = time.perf_counter() - te

    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "set", "dice_right_lung", "dice_left_lung", "hd95_px_right_lung",
                    "hd95_px_left_lung", "dice_union"])
        w.writerows(pred_rows)

    jd = details["jsrt_test"]["metrics"]
    card.update({
        "metrics": metrics,
        "metrics_ci": "95% CIs: percentile bootstrap of the mean over patients (imaging_assist.evaluation."
                      "bootstrap_ci, 2,000 resamples, patient ids as clusters). JSRT and the NLM TB set have one "
                      "image per patient, so this is the per-image bootstrap; the COVID-19 set (100 images of 73 "
                      "patients) is resampled by patient.",
        "data": {
            "training": f"JSRT (Shiraishi et al., AJR 2000), 224x224 grey PNG copy with right/left lung and heart "
                        f"label maps in shared/data/cxr/lung_masks_jsrt (the largest clean lung-mask set there; "
                        f"the masks match the SCR annotations of van Ginneken et al. 2006, origin not confirmed): "
                        f"{counts['train']['images']} images",
            "validation": f"{counts['validation']['images']} JSRT images (patient-disjoint; epoch selection)",
            "test": f"JSRT: {counts['test']['images']} images; external: lung_masks_covid_generalblockchain "
                    f"({len(crow)} images), lung_masks_nlm_tb_subset ({len(nrow)} images)",
            "splits": counts,
            "split_rule": "JSRT has one radiograph per patient, so each image is its own group; 70/15/15 by "
                          "image (= by patient), stratified by nodule / no nodule, seed 0. The two external "
                          "sets were never used for training or model selection.",
        },
        "license": "Weights: BSD-2-Clause (this project). Training data licence: unknown (JSRT copy from a "
                   "course repository; the JSRT database itself is distributed by the Japanese Society of "
                   "Radiological Technology under its own terms)",
        "intended_use": "Research, teaching and software demonstration: outlines the right and left lung fields "
                        "on a PA chest X-ray (trained on PA films only; AP films untested), reports their areas, "
                        "and tells whether a chest X-ray classifier's heat map falls inside the lungs. NOT FOR "
                        "CLINICAL USE.",
        "limitations": [
            "Trained on 152 JSRT PA films of adults from Japanese hospitals, digitised film downsampled to 224x224; "
            "other populations, children, portable AP/ICU films, lateral views and other detectors were not in "
            "the training data.",
            "The whole image is resized to 224x224 (aspect ratio not kept) and the label map is resampled back to "
            "the input's grid: fine borders are at about 1/224 of the field of view (1.6 mm for a 36 cm film).",
            "Fails often on paediatric films (the cxr-pneumonia model's population): on Kermany test films "
            f"({paed['normal']['n']} normal + {paed['pneumonia']['n']} pneumonia, random, seed 0; no masks there, so only "
            f"plausibility was checked) a lung fell apart (largest piece < 80%) or the lungs covered < 15% of the "
            f"image on {paed['normal']['either']:.0%} of normal and {paed['pneumonia']['either']:.0%} of pneumonia "
            "films. The heat map's share 'inside the lungs' is then meaningless; results warn when a lung is "
            "fragmented, but a small, whole, wrong mask is not detected.",
            "Lung fields follow the annotation convention of the masks (SCR-like: the part of the lung behind the "
            "heart and below the diaphragm dome is NOT included).",
            "Opaque lungs (consolidation, effusion, collapse) are under-segmented: the model outlines aerated "
            "lung. On the external COVID-19 set the predicted area is a median "
            f"{ratio['right_lung']:.0%} (right) and {ratio['left_lung']:.0%} (left) of the annotated one; those "
            "annotations also include the lung behind the heart. So a classifier heat map on a dense "
            "consolidation can count as 'outside the lungs' in the explanation-region fraction.",
            "No post-processing: small islands outside the lungs can occur and raise HD95.",
            "'right_lung' is the patient's right, i.e. the image's left side on a standard PA view; a film "
            "stored mirrored will have its labels swapped.",
            "Areas are in mm² only when the DICOM pixel spacing is known; for plain images they are pixels.",
        ],
        "training": {"script": "scripts/train_cxr_lung_seg.py", "seed": args.seed, "device": T.device_text(dev),
                     "epochs": info["epochs_run"], "best_epoch": info["best_epoch"],
                     "batch_size": args.batch_size, "max_lr": args.lr, "optimizer": "AdamW, one-cycle",
                     "loss": "monai.losses.DiceCELoss (softmax, one-hot, background included)",
                     "augmentation": "rotation ±10°, scale 0.85-1.15, aspect ±12%, shift ±8%, gamma e^±0.3, "
                                     "contrast/brightness ±20%; no flips",
                     "epochs_planned": args.epochs, "time_limit_s": args.time_limit,
                     "train_seconds": round(train_s, 1), "evaluation_seconds": round(eval_s, 1),
                     "total_seconds": round(time.perf_counter() - t_all, 1)},
        "files": {"metrics": "metrics.json", "training_log": "training_log.csv", "training_plot": "training_log.png",
                  "predictions": "predictions.csv"},
    })
    if old_training is not None:
        card["training"] = old_training
    if args.evaluate_only:  # keep the card fields this script does not write
        card = T.keep_card_fields(card, out)
    from imaging_assist.models.build import save_model_folder

    save_model_folder(out, card, net)
    T.fit_ood(MODEL_ID, out)  # issue 14: OOD statistics of these weights (scripts/fit_ood.py)
    T.write_json(out / "metrics.json", {"model": MODEL_ID, "metrics": metrics, "details": details,
                                        "splits": counts, "mm_per_px_jsrt_224": MM_PER_PX_224,
                                        "training": card["training"]})
    print(f"test Dice {jd['Dice:mean of right and left lung']['value']:.4f} "
          f"{jd['Dice:mean of right and left lung']['ci95']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
