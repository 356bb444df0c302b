#!/usr/bin/env python
"""Train ``weights/ct-nodule-seg``: the nodule in a 32 mm window around a clicked point (LIDC).

Data: ``ct/lidc_nodule_vois`` (869 crops of 485 patients in HU, nodule masks; see
``_ct_nodule_data.py``).  Split 70/15/15 by patient (stratified by the readers' majority
``malignant``, seed 0), the same split as ``train_ct_nodule_malignancy.py``.

Input: :mod:`imaging_assist.nodules.window` (1 mm isotropic, 32³, LPS axes, two HU windows
times the validity + the validity).  ``--design full`` (shipped): the whole cube, validity =
inside the crop; ``--design common``: only the box every crop holds (measured for the
comparison in docs/ct_nodules_models.md; it truncates nodules larger than the box).
A MONAI 3D UNet, softmax background / nodule, loss = CE + soft Dice on the valid voxels only
(outside a crop the truth is unknown), augmentation = click jitter +-4 mm, flips, in-plane
transposition, random narrowing of the validity.  ``--negatives lung`` (default) adds clicks that
are not on the nodule (on or beside a vessel in the lung, >= 7 mm from it; target = the nodule
only: ``_ct_nodule_data.load_negative_cubes``); the validation and test crops' such clicks give
the card's ``false_nodule_rate`` and ``negatives.csv``.

Test metrics are measured on each crop's own voxel grid (the engine's path: window ->
:func:`imaging_assist.nodules.models.nodule_mask` -> ``to_source_grid``) against the crop's
mask: Dice, relative volume error, HD95 in mm, 95% CIs by cluster bootstrap over patients.

    python scripts/train_ct_nodule_seg.py [--epochs N] [--time-limit S] [--design full|common] [--negatives lung|none]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import _ct_nodule_data as D
import _training as T
from imaging_assist import evaluation as E
from imaging_assist.nodules import window as W

MODEL_ID = "ct-nodule-seg"
LABELS = ["background", "nodule"]
READOUT_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
ARCH = {"library": "monai", "name": "UNet",
        "kwargs": {"spatial_dims": 3, "in_channels": 3, "out_channels": 2,
                   "channels": [12, 24, 48, 96], "strides": [2, 2, 2],
                   "num_res_units": 1, "norm": "batch"}}


def seg_loss(logits, target, w):
    ce = (F.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum().clamp(min=1)
    p = torch.softmax(logits, 1)[:, 1]
    t = target.float()
    dims = (1, 2, 3)
    inter = (p * t * w).sum(dims)
    den = (p * w).sum(dims) + (t * w).sum(dims)
    dice = 1 - (2 * inter + 1) / (den + 1)
    return ce + dice.mean()


def false_nodules(net, nimg, nval, nsplit, nkind, nrow, npt, rows, readout, design) -> list[dict]:
    """The validation and test crops' negative clicks (D.load_negative_cubes, the central window =
    cut_window at the click) read like a real click's first pass: the card's read-out, the component
    within models.SEED_RADIUS_MM (models.nodule_mask), the workflow's shape rules on the window
    (analysis.shape_refusal), then back on the crop's grid (models.source_mask) and measured there,
    the axis-ratio rule (analysis.axis_refusal).  ``reported``: the workflow would call it a nodule."""
    from imaging_assist.nodules.analysis import axis_refusal, shape_refusal
    from imaging_assist.nodules.measure import measure
    from imaging_assist.nodules.models import flip_average, nodule_mask, source_mask

    keep = np.nonzero(nsplit > 0)[0]
    ci, cv = D.central(nimg[keep]).astype(np.float32), D.central(nval[keep])
    x = torch.from_numpy(W.channels_from_arrays(ci, cv, design))
    with torch.no_grad():
        p = torch.cat([flip_average(net, x[s:s + 8], readout["tta"])[:, 1] for s in range(0, len(x), 8)]).numpy()
    out = []
    for n, q in enumerate(keep):
        r = rows[nrow[q]]
        win = W.Window(image=ci[n], valid=cv[n], affine=W.window_affine(npt[q]), center_lps=npt[q])
        pn = p[n] * W.design_valid(win, design)
        comp = nodule_mask(pn, win, readout["mask_threshold"])
        reason = shape_refusal(comp, win)[0] if comp.any() else "no component"
        if reason is None:
            vol = W.volume_from_nifti(D.SRC / r["file"])
            mask = source_mask(pn, comp, win, vol, readout["mask_threshold"], readout["source_grid"])
            if not mask.any():
                reason = "between the voxel centres"
            else:
                mm = measure(mask, vol)
                reason = axis_refusal(mm.long_axis_mm, mm.short_axis_mm)[0]
        out.append({"file": r["file"], "split": D.SPLIT_NAMES[int(nsplit[q])], "patient": r["patient_id"],
                    "kind": D.NEG_KINDS[int(nkind[q])], **{f"lps_{a}": float(v) for a, v in zip("xyz", npt[q])},
                    "component_voxels": int(comp.sum()), "reported": int(reason is None)})
    return out


def phantom_limitation(out: Path) -> str:
    """The card's statement of the size bias, with the figures scripts/check_nodule_phantom.py
    measured (its phantom_sizes.json in the model folder; run it after training)."""
    f = Path(out) / "phantom_sizes.json"
    try:
        ph = json.loads(f.read_text())
        lo, hi = ph["long_axis_excess_mm"]
        vlo, vhi = ph["volume_ratio"]
        d = [x["true_diameter_mm"] for x in ph["spheres"]]
        figs = (f"on solid spheres of {min(d):g}-{max(d):g} mm the long axis reads {lo:.1f}-{hi:.1f} mm longer than "
                f"the diameter and the volume {vlo:.1f}-{vhi:.1f} times the sphere's")
    except (OSError, ValueError, KeyError, TypeError):
        figs = "run scripts/check_nodule_phantom.py for the figures"
    return ("Sizes follow the LIDC readers' outlines, which lie outside the nodule's edge (their consensus masks "
            "hold lung around it), not the object: " + figs + " (scripts/check_nodule_phantom.py, "
            "phantom_sizes.json), and the mean HU of a small solid nodule is pulled towards the lung (4-5 mm solid "
            "spheres read part-solid). Compare sizes with sizes from this software, not with Fleischner or Lung-RADS "
            "size thresholds measured by hand.")


def main(argv=None) -> int:
    ap = T.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[1]), 12, 16, 3e-3)
    ap.add_argument("--design", choices=W.INPUT_DESIGNS, default="full")
    ap.add_argument("--evaluate-only", action="store_true")
    ap.add_argument("--negatives", choices=("lung", "none"), default="lung",
                    help="lung: train also on clicks beside the nodule (on or beside vessels in the lung, "
                         "target = the nodule only; _ct_nodule_data.load_negative_cubes); none: nodule clicks only")
    ap.add_argument("--init-seed", type=int, default=None,
                    help="seed of the weights and batches (default --seed); the split always uses --seed")
    args = ap.parse_args(argv)
    dev, out = T.start(args, MODEL_ID)
    rows = D.read_rows()
    split = D.split_rows(rows, args.seed)
    groups = np.array([r["patient_id"] for r in rows])
    img, val, msk = D.load_cubes(rows)
    cimg, cval, cmsk = (D.central(a) for a in (img, val, msk))
    itr, iva = np.nonzero(split == 0)[0], np.nonzero(split == 1)[0]
    # clicks that are not on a nodule: trained on (train split's crops, --negatives lung) and
    # measured (validation and test crops') by how often the workflow would still report a nodule
    nimg, nval, nmsk, nrow, nkind, npt = D.load_negative_cubes(rows, args.seed)
    if not len(nrow):
        raise SystemExit("no crop has a lung vessel far enough from its nodule for a negative click "
                         "(_ct_nodule_data.negative_candidates): check the data folder")
    nsplit = split[nrow]
    print("negative clicks:", {D.SPLIT_NAMES[k]: int((nsplit == k).sum()) for k in range(3)}, flush=True)
    if args.negatives == "lung" and not args.evaluate_only:
        tr_neg = np.nonzero(nsplit == 0)[0]
        itr = np.concatenate([itr, len(img) + np.arange(len(tr_neg))])
        img, val, msk = (np.concatenate([a, b[tr_neg]]) for a, b in ((img, nimg), (val, nval), (msk, nmsk)))
    counts = {D.SPLIT_NAMES[k]: {"nodules": int((split == k).sum()), "patients": int(len(set(groups[split == k])))}
              for k in range(3)}
    print("splits:", counts, flush=True)

    from imaging_assist.models.architectures import build_network

    init_seed = args.seed if args.init_seed is None else args.init_seed
    T.set_seed(init_seed)  # == the state T.start left when init_seed == seed
    net = build_network(ARCH, MODEL_ID)
    xva = torch.from_numpy(W.channels_from_arrays(cimg[iva].astype(np.float32), cval[iva], args.design))

    def augment(xb, yb, g):
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        ids = yb.numpy()
        bi, bv, bm = D.augment_batch(img[ids], val[ids], msk[ids], rng)
        x = torch.from_numpy(W.channels_from_arrays(bi, bv, args.design))
        vt = torch.from_numpy(x[:, 2].numpy() > 0.5)
        return x, torch.stack([torch.from_numpy(bm >= 0.5).long(), vt.long()], 1)

    def loss_fn(logits, y):
        return seg_loss(logits, y[:, 0], y[:, 1].float())

    def evaluate(n):
        lo = T.predict(n, xva, dev, 32)
        pm = (torch.softmax(lo, 1)[:, 1].numpy() >= 0.5)
        v = xva[:, 2].numpy() > 0.5
        d = [E.dice(p & vv, (t >= 0.5) & vv) for p, t, vv in zip(pm, cmsk[iva], v)]
        return {"val_dice": float(np.mean(d)), "score": float(np.mean(d))}

    if args.evaluate_only:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(out / "model.safetensors")))
        old = json.loads((out / "model.json").read_text())["training"]
        info = {"epochs_run": old["epochs"], "best_epoch": old["best_epoch"]}
        args.negatives = str(old.get("negatives", "none")).split(":")[0]
        train_s, train_device = old["train_seconds"], old["device"]
    else:
        log = T.Log(out / "training_log.csv")
        t0 = time.perf_counter()
        ids = torch.from_numpy(itr)
        info = T.fit(net, ids, ids, loss_fn=loss_fn, augment=augment, evaluate=evaluate,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                     device=dev, log=log, seed=init_seed, time_limit_s=args.time_limit)
        train_s = time.perf_counter() - t0
        train_device = T.device_text(dev)
        T.plot_log(log, out / "training_log.png", f"{MODEL_ID}: training ({args.design} window)", ["val_dice"])
    net.cpu().eval()

    # ---- how the output is read (TTA, threshold, mask or probability onto the crop's grid): every
    # combination measured on the VALIDATION crops' own grids, the best one kept; the test split is
    # then measured once with it (never used to choose)
    from imaging_assist.nodules.models import TTA_MODES, flip_average, nodule_mask, source_mask

    keep = np.nonzero(split > 0)[0]
    xk = torch.from_numpy(W.channels_from_arrays(cimg[keep].astype(np.float32), cval[keep], args.design))
    prob = {mode: torch.cat([flip_average(net, xk[s:s + 8], mode)[:, 1] for s in range(0, len(xk), 8)]).numpy()
            for mode in TTA_MODES}
    crops = {}

    def crop(i):
        if i not in crops:
            r = rows[i]
            vol = W.volume_from_nifti(D.SRC / r["file"])
            crops[i] = (vol, W.volume_from_nifti(D.SRC / r["mask"]).array > 0, W.cut_window(vol, D.centre(r)))
        return crops[i]

    def predicted(n, i, ro):
        vol, truth, win = crop(i)
        p = prob[ro["tta"]][n] * W.design_valid(win, args.design)
        m = nodule_mask(p, win, ro["mask_threshold"])
        return source_mask(p, m, win, vol, ro["mask_threshold"], ro["source_grid"]), truth, vol

    selection = []
    for mode in TTA_MODES:
        for thr in READOUT_THRESHOLDS:
            for grid in ("mask", "probability"):
                ro = {"tta": mode, "mask_threshold": thr, "source_grid": grid}
                d = [E.dice(*predicted(n, i, ro)[:2]) for n, i in enumerate(keep) if split[i] == 1]
                selection.append({**ro, "val_dice": round(float(np.mean(d)), 5)})
                print(f"  validation read-out {ro}: Dice {np.mean(d):.4f}", flush=True)
    best = max(selection, key=lambda r: r["val_dice"])  # first of equals: the simpler read-out
    readout = {k: best[k] for k in ("tta", "mask_threshold", "source_grid")}
    print("chosen on validation:", best, flush=True)
    # the segmenter's confidence (mean probability inside the nodule, models.confidence) on the
    # validation nodules: below the conformal threshold (the OOD statistics' rule, at most 5% of
    # future nodules flagged with 90% confidence) a click is flagged and its decision withheld
    from imaging_assist.nodules.models import confidence
    from imaging_assist.validation.ood import conformal_threshold, threshold_rule_text

    confs = {}
    for n, i in enumerate(keep):
        win = crop(i)[2]
        p = prob[readout["tta"]][n] * W.design_valid(win, args.design)
        confs[i] = confidence(p, nodule_mask(p, win, readout["mask_threshold"]))
    unsure = [1.0 - confs[i] if np.isfinite(confs[i]) else 1.0 for i in keep if split[i] == 1]
    thr_u, info_u = conformal_threshold(unsure)
    readout["min_confidence"] = {"threshold": round(1.0 - thr_u, 4), "score": "mean segmenter probability "
                                 "inside the nodule (models.confidence)", "rule": threshold_rule_text(info_u),
                                 **{k: info_u[k] for k in ("n", "rank", "validation_flagged", "confidence")}}
    print("confidence threshold:", readout["min_confidence"], flush=True)
    neg = false_nodules(net, nimg, nval, nsplit, nkind, nrow, npt, rows, readout, args.design)
    recs = []
    for n, i in enumerate(keep):
        r = rows[i]
        pred, truth, vol = predicted(n, i, readout)
        vox = float(np.prod(vol.spacing))
        sp = (vol.spacing[2], vol.spacing[1], vol.spacing[0])
        vt, vp = truth.sum() * vox, pred.sum() * vox
        recs.append({"file": r["file"], "split": D.SPLIT_NAMES[int(split[i])], "patient": r["patient_id"],
                     "dice": E.dice(pred, truth), "volume_true_mm3": vt, "volume_pred_mm3": vp,
                     "volume_error_pct": 100.0 * (vp - vt) / vt if vt > 0 else float("nan"),
                     "hd95_mm": E.hausdorff95(pred, truth, sp), "diameter_mm": float(r["diameter_mm"]),
                     "confidence": confs[i]})
    for name, rr in (("predictions.csv", recs), ("negatives.csv", neg)):
        with (out / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rr[0]))
            w.writeheader()
            for rec in rr:
                w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in rec.items()})
    metrics, details = [], {}
    for sname in ("test", "validation"):
        rs = [x for x in recs if x["split"] == sname]
        cl = np.array([x["patient"] for x in rs])
        what = ("patient-split test" if sname == "test" else "validation split (best epoch chosen here)") + \
            f" ({len(set(cl))} patients), on each crop's own grid"
        det = {"n": len(rs), "patients": int(len(set(cl)))}
        for key, name, absval in (("dice", "Dice", False), ("volume_error_pct", "volume_error_pct", False),
                                  ("volume_error_pct", "abs_volume_error_pct", True), ("hd95_mm", "HD95_mm", False)):
            v = np.array([x[key] for x in rs], float)
            v = np.abs(v) if absval else v
            ok = np.isfinite(v)
            fn = np.median if key != "dice" else np.mean
            val_ = float(fn(v[ok]))
            ci = E.bootstrap_ci(lambda a: float(fn(a)), v[ok], clusters=cl[ok], seed=len(metrics) + 1)
            label = {"dice": "mean", "volume_error_pct": "median", "hd95_mm": "median"}[key]
            metrics.append(E.metric(name, val_, ci, int(ok.sum()), what + f", {label} per nodule"
                                    + ("" if ok.all() else f"; {int((~ok).sum())} undefined (empty mask) left out"),
                                    "nodule"))
            det[name] = {"value": val_, "ci95": ci, "undefined": int((~ok).sum())}
        details[sname] = det
        nr = [x for x in neg if x["split"] == sname]
        acc = np.array([x["reported"] for x in nr], float)
        ncl = np.array([x["patient"] for x in nr])
        ci = E.bootstrap_ci(lambda a: float(np.mean(a)), acc, clusters=ncl, seed=len(metrics) + 1)
        metrics.append(E.metric("false_nodule_rate", float(acc.mean()), ci, len(acc),
                                f"{'patient-split test' if sname == 'test' else 'validation split'}: clicks on or "
                                f"beside a vessel in the lung >= {D.NEG_VESSEL_MM:g} mm from the crop's nodule "
                                f"({len(set(ncl))} patients); share the workflow would still report as a nodule "
                                "(first pass: models.nodule_mask, analysis.shape_refusal, analysis.axis_refusal)",
                                "nodule"))
        det["false_nodule_rate"] = {"value": float(acc.mean()), "ci95": ci, "n": len(acc),
                                    **{k: float(np.mean([x["reported"] for x in nr if x["kind"] == k] or [np.nan]))
                                       for k in D.NEG_KINDS}}
    card = {
        "schema_version": 1, "id": MODEL_ID,
        "name": "Lung nodule segmentation around a clicked point (3D UNet, 32 mm window at 1 mm)",
        "version": "1.1.0", "task": "segmentation", "modality": ["CT"], "body_part": "CHEST",
        "spatial_dims": 3, "architecture": ARCH, "input": D.input_block(args.design, **readout),
        "output": {"activation": "softmax"}, "labels": LABELS, "gradcam_layer": None,
        "not_for_clinical_use": True, "metrics": metrics,
        "metrics_ci": "percentile cluster bootstrap resampling whole patients (imaging_assist.evaluation."
                      "bootstrap_ci; 2,000 resamples); Dice mean per nodule, volume error and HD95 median per nodule",
        "data": {"training": f"LIDC-IDRI nodule crops (shared/data/ct/lidc_nodule_vois, readers' consensus masks): "
                             f"{counts['train']['nodules']} nodules of {counts['train']['patients']} patients",
                 "validation": f"{counts['validation']['nodules']} nodules / {counts['validation']['patients']} patients (best epoch)",
                 "test": f"{counts['test']['nodules']} nodules / {counts['test']['patients']} patients never seen in training",
                 "splits": counts,
                 "split_rule": "70/15/15 by patient_id, stratified by the readers' majority malignant, seed 0 "
                               "(the same split as ct-nodule-malignancy)"},
        "license": "Weights: BSD-2-Clause (this project). Training data: LIDC-IDRI (TCIA), CC BY 3.0 "
                   "(Armato et al., Med Phys 38(2), 2011; doi:10.7937/K9/TCIA.2015.LO9QL9SX)",
        "intended_use": "Research, teaching and software demonstration: outlines a lung nodule that a reader "
                        "points at on CT, for volume and diameters. NOT FOR CLINICAL USE: not a diagnosis, not "
                        "validated on any population; no detection (it segments only around a given point).",
        "limitations": [
            "Trained on LIDC-IDRI nodules >= 3 mm marked by readers; the masks are the crops' consensus masks, not "
            "a pathology outline; other scanners, contrast, slice thickness and reconstruction kernels shift results.",
            "The window is 32 mm: nodules larger than about 30 mm are cut off at its edge and their volume is underestimated.",
            "The training crops are tight (as thin as 2 slices along z); the truth outside a crop is unknown, so the loss "
            "and the validation use only voxels inside the crop.",
            "A click on soft tissue (mediastinum, chest wall) can give a large mask: the training crops hold little "
            "of it. The segmenter's OOD statistics flag such windows (scripts/fit_nodule_ood.py; AUROC and the "
            "share flagged of 60 no-nodule windows of the LIDC-IDRI-0001 slab are in the card's ood block); air and "
            "lung parenchyma give an empty mask.",
            "Clicks that are not on a nodule: the training also had clicks on or beside vessels in the lung away from "
            "the crop's nodule (target: that nodule only; false_nodule_rate = the share of such held-out clicks the "
            "workflow still reports as a nodule). The crops hold no lung far from a nodule: in a whole scan a click on "
            "a vessel deep in the lung can still give a vessel segment; the workflow refuses masks more elongated than "
            "any LIDC nodule (3D elongation, long/short axis ratio); the OOD statistics and the confidence threshold "
            "(input.window.min_confidence: the mean probability inside the nodule, below which the decision is "
            "withheld) flag most of the others. "
            "scripts/check_nodule_clicks.py measures it on the real LIDC-IDRI-0001 slab (slab_clicks.json).",
            phantom_limitation(out)],
        "population": {"image_kind": "cross-sectional", "data": "LIDC-IDRI: thoracic (chest, lung) CT of 1,010 "
                       "patients from seven US academic centres (diagnostic and screening, several vendors, 0.45-2.5 mm "
                       "slices); ages and sexes not in the crops"},
        "training": {"script": "scripts/train_ct_nodule_seg.py", "seed": args.seed, "init_seed": init_seed, "device": train_device,
                     "design": args.design, "epochs": info["epochs_run"], "best_epoch": info["best_epoch"],
                     "batch_size": args.batch_size, "max_lr": args.lr, "optimizer": "AdamW, one-cycle",
                     "loss": "cross-entropy + soft Dice on the valid voxels",
                     "negatives": (f"{args.negatives}: one click per training crop that has one (fixed seed), on a bright "
                                   f"structure in the lung >= {D.NEG_VESSEL_MM:g} mm from the nodule or in the parenchyma "
                                   f"2-4 mm beside one >= {D.NEG_BESIDE_MM:g} mm from it; target = the nodule only "
                                   "(scripts/_ct_nodule_data.load_negative_cubes)") if args.negatives == "lung" else "none",
                     "augmentation": "click jitter +-4 mm, flips of each axis, in-plane transposition, random narrowing "
                                     "of the validity", "train_seconds": round(train_s, 1),
                     "readout": readout, "readout_selection": {
                         "data": "validation split, mean Dice per nodule on each crop's own grid; the best kept",
                         "candidates": selection}},
        "files": {"metrics": "metrics.json", "training_log": "training_log.csv", "training_plot": "training_log.png",
                  "predictions": "predictions.csv", "negatives": "negatives.csv",
                  "slab_clicks": "slab_clicks.json"},
    }
    card = {k: v for k, v in card.items() if v is not None}
    if args.evaluate_only:
        card = T.keep_card_fields(card, out)
    from imaging_assist.models.build import save_model_folder

    save_model_folder(out, card, net)
    T.write_json(out / "metrics.json", {"model": MODEL_ID, "metrics": metrics, "details": details,
                                        "splits": counts, "training": card["training"]})
    t = details["test"]
    print(f"test Dice {t['Dice']['value']:.4f} {t['Dice']['ci95']}; median |volume error| "
          f"{t['abs_volume_error_pct']['value']:.1f}%; HD95 {t['HD95_mm']['value']:.2f} mm; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
