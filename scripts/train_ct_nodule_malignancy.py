#!/usr/bin/env python
"""Train ``weights/ct-nodule-malignancy``: benign vs malignant (LIDC readers' majority) of the
nodule in a 32 mm window around a clicked point.

Data and split: ``_ct_nodule_data.py`` (869 LIDC crops, 485 patients; 70/15/15 by patient,
stratified by ``malignant``, seed 0; the same split as ``train_ct_nodule_seg.py``).  The
reference is ``malignant`` (readers' majority), a reader opinion and not pathology.

Input: :mod:`imaging_assist.nodules.window` with ``--design`` ``common`` (only the box every
training crop holds: what a click in a whole scan shows equals what training showed) or
``full`` (the whole cube with the crop's validity).  A MONAI 3D ResNet (one basic block per
stage), cross-entropy, augmentation = click jitter +-4 mm, flips, in-plane transposition,
random narrowing of the validity.  The best validation AUC is kept; temperature scaling is
fitted on validation and folded into the last layer; the operating threshold is chosen on
validation for sensitivity >= 0.90.

Test metrics (patient-split test, never trained on): AUC, sensitivity / specificity at that
threshold, ECE, Spearman with the readers' ``malignancy`` rating (1-5), 95% CIs by cluster
bootstrap over patients.  Also measured for the input-design comparison: the validation AUC
and the "extent sensitivity" (mean |change of P(malignant)| when the crop's validity is cut to
the thinnest crop of the data, z +-1.25 mm).  The OOD statistics (Mahalanobis on layer3 +
layer4, imaging_assist.validation.ood) are fitted on the training windows.

    python scripts/train_ct_nodule_malignancy.py [--design common|full] [--epochs N] [--time-limit S]
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

MODEL_ID = "ct-nodule-malignancy"
LABELS = ["benign", "malignant"]
ARCH = {"library": "monai", "name": "ResNet",
        "kwargs": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128],
                   "spatial_dims": 3, "n_input_channels": 3, "num_classes": 2,
                   "conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True}}
GRADCAM_LAYER = "layer3"
OOD_LAYERS = ["layer3", "layer4"]
SENS_TARGET = 0.90
# --aux ratings: auxiliary regression targets from the readers' other ratings in labels.csv, used
# in training only (a linear head on the pooled features beside the card's fc, dropped before
# saving, so the shipped network and its card format are unchanged).  Multi-task learning with
# the LIDC semantic attributes is a known way to make a malignancy network learn what the
# readers looked at (e.g. Hussein et al. 2017; Shen et al. 2019, HSCNN).  "calcified" = the
# calcification rating is not 6 ("absent"); internalstructure is left out (868 of 869 are 1).
AUX_RATINGS = ("malignancy", "subtlety", "lobulation", "margin", "sphericity", "spiculation", "texture")
AUX_WEIGHT = 0.5  # fixed before any run (the auxiliary MSE is on z-scored targets), not tuned


def thin(valid: np.ndarray) -> np.ndarray:
    """The validity cut to the thinnest crop of the data (2 slices of 2.5 mm: z +-1.25 mm)."""
    off = (np.arange(W.WINDOW_SIZE) - (W.WINDOW_SIZE - 1) / 2.0) * W.MODEL_SPACING_MM
    return valid & (np.abs(off) <= 1.25)[None, :, None, None]


def aux_targets(rows, itr) -> torch.Tensor:
    """(N, K) float32: the readers' ratings (AUX_RATINGS), "calcified" and log(diameter), each
    z-scored with the mean and SD of the training rows."""
    cols = [[float(r[c]) for c in AUX_RATINGS] + [float(r["calcification"] != "6"), np.log(float(r["diameter_mm"]))]
            for r in rows]
    a = np.array(cols, np.float64)
    mu, sd = a[itr].mean(0), a[itr].std(0)
    return torch.from_numpy(((a - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32))


class AuxHead(torch.nn.Module):
    """The card's network plus a linear head on the features its ``fc`` receives: the forward
    returns ``[logits, auxiliary outputs]``.  :meth:`detach` removes the hook after training."""

    def __init__(self, net, k: int):
        super().__init__()
        self.net, self.head, self._feat = net, torch.nn.Linear(net.fc.in_features, k), None
        self._hook = net.fc.register_forward_pre_hook(self._grab)

    def _grab(self, _module, inputs):
        self._feat = inputs[0]

    def forward(self, x):
        logits = self.net(x)
        return torch.cat([logits, self.head(self._feat)], 1)

    def detach(self):
        self._hook.remove()
        self._feat = None


def cross_validate(args, out: Path, rows, split, groups, y, x_all, yt, augment, init_seed: int) -> int:
    """``--cv K``: the recipe (design, epochs, --aux) trained K times, each time on all but one
    fold of the training + validation patients (grouped by patient, stratified, seed --seed) and
    measured on that fold.  No epoch is chosen on the held-out fold (the last epoch of the
    one-cycle schedule is kept), so each fold's AUC is an honest estimate; the pooled
    out-of-fold AUC has a patient-clustered CI.  The test split plays no part.  Writes
    ``cv_<recipe>.json`` and one log per fold into ``--out`` (required: never the shipped folder)."""
    from imaging_assist.models.architectures import build_network

    dev = T.pick_device(args.device)
    idx = np.nonzero(split < 2)[0]
    fold = T.grouped_split(groups[idx], y[idx], (1.0 / args.cv,) * args.cv, seed=args.seed)
    oof = np.full(len(rows), np.nan)
    folds = []
    recipe = f"{args.design}_{'aux' if args.aux == 'ratings' else 'plain'}_seed{init_seed}"
    for k in range(args.cv):
        tr, te = idx[fold != k], idx[fold == k]
        assert not set(groups[tr]) & set(groups[te]), "patient in two folds"
        T.set_seed(init_seed)
        net = build_network(ARCH, MODEL_ID)
        aux = aux_targets(rows, tr) if args.aux == "ratings" else None
        model = net if aux is None else AuxHead(net, aux.shape[1])

        def loss_fn(out_, yb, aux=aux):
            if aux is None:
                return F.cross_entropy(out_, yb)
            return F.cross_entropy(out_[:, :2], yt[yb]) + AUX_WEIGHT * F.mse_loss(out_[:, 2:], aux[yb])

        epoch = iter(range(1, 10**6))

        def evaluate(_model, te=te, net=net):  # logged, never chosen on: the score only grows
            p = torch.softmax(T.predict(net, x_all[te], dev, 64), 1)[:, 1].numpy()
            return {"heldout_auc": E.roc_auc(y[te], p), "score": float(next(epoch))}

        log = T.Log(out / f"cv_{recipe}_fold{k}.csv")
        ids = torch.from_numpy(tr)
        # augment gives the loss the rows' indices when --aux is on (as in the main run)
        T.fit(model, ids, ids, loss_fn=loss_fn, augment=augment, evaluate=evaluate, epochs=args.epochs,
              batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4, device=dev, log=log, seed=init_seed,
              time_limit_s=args.time_limit)
        if aux is not None:
            model.detach()
        p = torch.softmax(T.predict(net, x_all[te], torch.device("cpu"), 64), 1)[:, 1].numpy()
        oof[te] = p
        folds.append({"fold": k, "nodules": int(len(te)), "patients": int(len(set(groups[te]))),
                      "auc": round(E.roc_auc(y[te], p), 4)})
        print(f"fold {k}: {folds[-1]}", flush=True)
    aucs = [f["auc"] for f in folds]
    pooled = E.roc_auc(y[idx], oof[idx])
    ci = E.bootstrap_ci(E.roc_auc, y[idx], oof[idx], clusters=groups[idx], strata=y[idx], seed=1)
    res = {"recipe": recipe, "design": args.design, "aux": args.aux, "init_seed": init_seed, "epochs": args.epochs,
           "folds": folds, "fold_auc_mean": round(float(np.mean(aucs)), 4), "fold_auc_sd": round(float(np.std(aucs, ddof=1)), 4),
           "pooled_oof_auc": round(pooled, 4), "pooled_oof_auc_ci95": [round(c, 4) for c in ci],
           "nodules": int(len(idx)), "patients": int(len(set(groups[idx]))),
           "rule": "K-fold by patient over the training + validation splits; last epoch kept; the test split untouched"}
    T.write_json(out / f"cv_{recipe}.json", res)
    print(json.dumps(res))
    return 0


#: the segmenter's predicted volume on the same crops (its card's predictions.csv, same split)
SEG_PREDICTIONS = Path(__file__).resolve().parents[1] / "weights" / "ct-nodule-seg" / "predictions.csv"


def size_baseline(files, yy, pp, gg, diameters) -> dict | None:
    """What size alone gives on the same nodules: the AUC of the ct-nodule-seg volume (what the
    viewer measures at a click) and of the readers' recorded diameter, and this model's AUC
    minus the volume's, each with a patient-clustered CI (the difference paired: one resample
    of patients for both).  None when the segmenter's predictions do not cover these crops."""
    if not SEG_PREDICTIONS.is_file():
        return None
    with SEG_PREDICTIONS.open() as fh:
        vol = {r["file"]: float(r["volume_pred_mm3"]) for r in csv.DictReader(fh)}
    if not all(f in vol for f in files):
        return None
    v = np.array([vol[f] for f in files])
    d = np.asarray(diameters, float)
    gain = E.roc_auc(yy, pp) - E.roc_auc(yy, v)
    return {"source": "weights/ct-nodule-seg/predictions.csv (volume_pred_mm3) and labels.csv (diameter_mm)",
            "auc_segmenter_volume": E.roc_auc(yy, v),
            "auc_segmenter_volume_ci95": E.bootstrap_ci(E.roc_auc, yy, v, clusters=gg, strata=yy, seed=6),
            "auc_reader_diameter": E.roc_auc(yy, d),
            "auc_reader_diameter_ci95": E.bootstrap_ci(E.roc_auc, yy, d, clusters=gg, strata=yy, seed=7),
            "auc_gain_over_segmenter_volume": gain,
            "auc_gain_over_segmenter_volume_ci95": E.bootstrap_ci(
                lambda a, b, c: E.roc_auc(a, b) - E.roc_auc(a, c), yy, pp, v, clusters=gg, strata=yy, seed=8)}


def size_limitation(sb: dict) -> str:
    """The card's sentence on size alone (test split), worded by what the paired interval shows."""
    gain, (lo, hi) = sb["auc_gain_over_segmenter_volume"], sb["auc_gain_over_segmenter_volume_ci95"]
    what = (f"the ct-nodule-seg volume alone has AUC {sb['auc_segmenter_volume']:.3f} on the same test nodules "
            f"(the readers' recorded diameter {sb['auc_reader_diameter']:.3f}); this model is {gain:+.3f} above "
            f"the volume (95% CI {lo:+.3f} to {hi:+.3f})")
    if lo > 0:
        return f"Size is much of it: {what}, a gain beyond size that the test split shows."
    return (f"Size alone ranks almost as well: {what}, a gain the test split cannot show. Read the "
            "likelihood beside the nodule's size, not as a finding beyond it.")


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv=None) -> int:
    ap = T.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[1]), 30, 32, 2e-3)
    ap.add_argument("--design", choices=W.INPUT_DESIGNS, default="common")
    ap.add_argument("--compare-with", type=Path, default=None,
                    help="model folder of the other input design (its metrics.json goes into the card)")
    ap.add_argument("--init-seed", type=int, default=None,
                    help="seed of the weights and batches (default --seed); the split always uses --seed")
    ap.add_argument("--evaluate-only", action="store_true", help="measure the weights in --out again (no training)")
    ap.add_argument("--ensemble-with", type=Path, nargs="*", default=[],
                    help="model folders of other runs: the validation AUC of the average is recorded (not shipped)")
    ap.add_argument("--aux", choices=("none", "ratings"), default="none",
                    help="auxiliary training targets: none, or the readers' ratings and the diameter "
                         "(training only; the shipped network is the same)")
    ap.add_argument("--cv", type=int, default=0, metavar="K",
                    help="instead of training the model: K-fold cross-validation by patient over the "
                         "training and validation splits (the recipe's AUC on more patients than the "
                         "validation split has); writes cv_<recipe>.json into --out, the test split untouched")
    args = ap.parse_args(argv)
    if args.cv and args.out is None:
        ap.error("--cv needs --out: its logs go there, never into the shipped model folder")
    dev, out = T.start(args, MODEL_ID)
    rows = D.read_rows()
    split = D.split_rows(rows, args.seed)
    groups = np.array([r["patient_id"] for r in rows])
    y = np.array([int(r["malignant"]) for r in rows])
    rating = np.array([float(r["malignancy"]) for r in rows])
    diameter = np.array([float(r["diameter_mm"]) for r in rows])
    img, val, _ = D.load_cubes(rows)
    cimg, cval = D.central(img).astype(np.float32), D.central(val)
    itr, iva = np.nonzero(split == 0)[0], np.nonzero(split == 1)[0]
    counts = {D.SPLIT_NAMES[k]: {"nodules": int((split == k).sum()), "patients": int(len(set(groups[split == k]))),
                                 "malignant": int(((split == k) & (y == 1)).sum()),
                                 "benign": int(((split == k) & (y == 0)).sum())} for k in range(3)}
    print("splits:", counts, flush=True)
    x_all = torch.from_numpy(W.channels_from_arrays(cimg, cval, args.design))
    yt = torch.from_numpy(y)

    from imaging_assist.models.architectures import build_network

    init_seed = args.seed if args.init_seed is None else args.init_seed
    T.set_seed(init_seed)  # == the state T.start left when init_seed == seed
    net = build_network(ARCH, MODEL_ID)
    aux = aux_targets(rows, itr) if args.aux == "ratings" else None
    model = net if aux is None else AuxHead(net, aux.shape[1])

    def augment(xb, yb, g):
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        ids = yb.numpy()
        bi, bv, _ = D.augment_batch(img[ids], val[ids], None, rng)
        # with auxiliary targets the loss needs the rows, so it gets their indices
        return torch.from_numpy(W.channels_from_arrays(bi, bv, args.design)), (yt[ids] if aux is None else yb)

    def loss_fn(out_, yb):
        if aux is None:
            return F.cross_entropy(out_, yb)
        return F.cross_entropy(out_[:, :2], yt[yb]) + AUX_WEIGHT * F.mse_loss(out_[:, 2:], aux[yb])

    def evaluate(_model):  # the card's network alone (without the auxiliary head)
        lo = T.predict(net, x_all[iva], dev, 64)
        p = torch.softmax(lo, 1)[:, 1].numpy()
        auc = E.roc_auc(y[iva], p)
        vl = float(F.cross_entropy(lo, yt[iva]))
        return {"val_loss": vl, "val_auc": auc, "score": auc - 0.01 * vl}

    if args.cv:
        return cross_validate(args, out, rows, split, groups, y, x_all, yt, augment, init_seed)
    if args.evaluate_only:  # the weights in --out (temperature already folded in), measured again
        info, train_s, temp, train_device = T.load_shipped(net, out)
        old_training = json.loads((out / "model.json").read_text())["training"]
    else:
        log = T.Log(out / "training_log.csv")
        t0 = time.perf_counter()
        ids = torch.from_numpy(itr)
        info = T.fit(model, ids, ids, loss_fn=loss_fn, augment=augment, evaluate=evaluate,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                     device=dev, log=log, seed=init_seed, time_limit_s=args.time_limit)
        train_s = time.perf_counter() - t0
        if aux is not None:
            model.detach()
        train_device, old_training = T.device_text(dev), {}
        T.plot_log(log, out / "training_log.png", f"{MODEL_ID}: training ({args.design} window)", ["val_auc"])
        net.cpu().eval()
        temp = T.fit_temperature(T.predict(net, x_all[iva], torch.device("cpu"), 64), yt[iva])
        T.fold_temperature(net.fc, temp)
    # test-time augmentation (the 8 flips, imaging_assist.nodules.models.flip_average) is kept only
    # when it raises the VALIDATION AUC; the test split plays no part in the choice
    from imaging_assist.nodules.models import TTA_MODES, flip_average

    probs = {mode: torch.cat([flip_average(net, x_all[s:s + 16], mode)[:, 1] for s in range(0, len(x_all), 16)]).numpy()
             for mode in TTA_MODES}
    tta_selection = [{"tta": mode, "val_auc": round(E.roc_auc(y[iva], probs[mode][iva]), 5)} for mode in TTA_MODES]
    tta = max(tta_selection, key=lambda r: r["val_auc"])["tta"]  # first of equals: "none"
    print("TTA on validation:", tta_selection, "->", tta, flush=True)
    for other in args.ensemble_with:  # measured on validation for the record; a card loads one network
        net2 = build_network(ARCH, MODEL_ID)
        T.load_shipped(net2, other)
        p2 = torch.softmax(T.predict(net2, x_all[iva], torch.device("cpu"), 64), 1)[:, 1].numpy()
        meta = json.loads((Path(other) / "model.json").read_text())["training"]
        aux_text = "" if meta.get("auxiliary_targets", "none") == "none" else " --aux ratings"
        tta_selection.append({"tta": "none", "ensemble_with": f"{meta['script']}{aux_text} --init-seed {meta.get('init_seed')}",
                              "member_val_auc": round(E.roc_auc(y[iva], p2), 5),
                              "val_auc": round(E.roc_auc(y[iva], (probs["none"][iva] + p2) / 2), 5),
                              "eligible": False})
        print("ensemble on validation:", tta_selection[-1], flush=True)
    if args.evaluate_only and not args.ensemble_with:  # the ensembles measured before stay on record
        tta_selection += [c for c in old_training.get("readout_selection", {}).get("candidates", [])
                          if "ensemble_with" in c]
    prob = probs[tta]
    # extent sensitivity: the same windows with the validity cut to the thinnest crop
    x_thin = torch.from_numpy(W.channels_from_arrays(cimg[iva], thin(cval[iva]), args.design))
    p_thin = torch.softmax(T.predict(net, x_thin, torch.device("cpu"), 64), 1)[:, 1].numpy()
    extent_sens = float(np.mean(np.abs(p_thin - prob[iva])))
    box = W.design_box(args.design)
    cover = cval[iva] if box is None else (cval[iva] & box)
    frac_valid = float(np.median(cover.reshape(len(iva), -1).sum(1) / (box.sum() if box is not None else cover[0].size)))

    thr = float(np.floor(E.threshold_for_sensitivity(y[iva], prob[iva], SENS_TARGET) * 1e4) / 1e4)
    vs, vsp = E.sens_spec(y[iva], prob[iva], thr)
    metrics, details, ss_hows = [], {}, {}
    for k, label in ((2, "test"), (1, "validation")):
        m = split == k
        yy, pp, gg, rr = y[m], prob[m], groups[m], rating[m]
        what = {2: f"patient-split test ({counts['test']['patients']} patients never seen in training)",
                1: "validation split (best epoch, threshold and temperature chosen here)"}[k]
        auc = E.roc_auc(yy, pp)
        auc_ci = E.bootstrap_ci(E.roc_auc, yy, pp, clusters=gg, strata=yy, seed=1)
        se, sp = E.sens_spec(yy, pp, thr)
        se_ci, sp_ci, ss_how = E.sens_spec_ci(yy, pp, thr, clusters=gg, seed=2)
        ss_hows.setdefault(ss_how, []).append(label)
        rel = E.reliability(yy, pp)
        ece_ci = E.bootstrap_ci(lambda a, b: E.reliability(a, b).ece, yy, pp, clusters=gg, seed=4, n_boot=500)
        rho = spearman(pp, rr)
        rho_ci = E.bootstrap_ci(spearman, pp, rr, clusters=gg, seed=5, n_boot=1000)
        metrics += [E.metric("AUC", auc, auc_ci, m.sum(), what, "malignant"),
                    E.metric("sensitivity", se, se_ci, m.sum(), what + f", threshold {thr:.4f}", "malignant"),
                    E.metric("specificity", sp, sp_ci, m.sum(), what + f", threshold {thr:.4f}", "malignant"),
                    E.metric("ECE", rel.ece, ece_ci, m.sum(), what + ", 10 bins", "malignant"),
                    E.metric("Spearman_malignancy_rating", rho, rho_ci, m.sum(),
                             what + ", P(malignant) vs the readers' malignancy rating 1-5", "malignant")]
        size = size_baseline([rows[i]["file"] for i in np.nonzero(m)[0]], yy, pp, gg, diameter[m])
        if size is not None:
            metrics += [E.metric("AUC_size_alone_segmenter_volume", size["auc_segmenter_volume"],
                                 size["auc_segmenter_volume_ci95"], m.sum(),
                                 what + ", the ct-nodule-seg volume alone as the score (baseline)", "malignant"),
                        E.metric("AUC_gain_over_size_alone", size["auc_gain_over_segmenter_volume"],
                                 size["auc_gain_over_segmenter_volume_ci95"], m.sum(),
                                 what + ", this model's AUC minus the segmenter volume's (paired)", "malignant")]
        details[label] = {"n": int(m.sum()), "patients": int(len(set(gg))), "auc": auc, "auc_ci95": auc_ci,
                          "size_baseline": size,
                          "sensitivity": se, "sensitivity_ci95": se_ci, "specificity": sp, "specificity_ci95": sp_ci,
                          "ece": rel.ece, "ece_ci95": ece_ci, "spearman_rating": rho, "spearman_rating_ci95": rho_ci,
                          "reliability": rel.__dict__,
                          "confusion_matrix": {"labels": LABELS, "rows_true_cols_predicted":
                                               E.confusion_matrix(yy, (pp >= thr).astype(int), 2)}}
        if k == 2:
            T.plot_reliability(rel, out / "reliability_test.png", f"{MODEL_ID} - test")
            fpr, tpr, _ = E.roc_curve(yy, pp)
            T.plot_roc({"test": (fpr, tpr, auc)}, out / "roc.png", f"{MODEL_ID}: ROC (threshold from validation)")
    design_row = {"design": args.design, "val_auc": details["validation"]["auc"],
                  "val_auc_ci95": details["validation"]["auc_ci95"], "test_auc": details["test"]["auc"],
                  "extent_sensitivity_val": round(extent_sens, 4),
                  "median_valid_fraction_of_model_region_val": round(frac_valid, 4)}
    comparison = [design_row] + [c for c in old_training.get("design_comparison", []) if c["design"] != args.design]
    if args.compare_with is not None:  # the other design's run (may still be training: wait)
        f = Path(args.compare_with) / "metrics.json"
        for _ in range(180):
            if f.is_file():
                break
            time.sleep(10)
        comparison.append(json.loads(f.read_text())["design"])
    print("design:", design_row, flush=True)

    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "patient", "label", "malignancy_rating", "p_malignant"])
        for i in np.nonzero(split > 0)[0]:
            w.writerow([rows[i]["file"], D.SPLIT_NAMES[int(split[i])], groups[i], LABELS[y[i]],
                        int(rating[i]), f"{prob[i]:.6f}"])
    t = details["test"]
    card_must_not = [
        "a diagnosis of cancer: the reference is the opinion of the LIDC readers (majority of up to four), "
        "not pathology or follow-up",
        "nodules smaller than 3 mm (LIDC readers rated only nodules >= 3 mm)",
        "detection or screening: it scores only the nodule at a point a reader gives; it never searches a scan",
        "management decisions (Fleischner, Lung-RADS) in place of the reader"]
    card = {
        "schema_version": 1, "id": MODEL_ID,
        "name": "Lung nodule malignancy as LIDC readers judge it (3D ResNet, 32 mm window at 1 mm)",
        "version": "1.0.0", "task": "classification", "modality": ["CT"], "body_part": "CHEST",
        "spatial_dims": 3, "architecture": ARCH, "input": D.input_block(args.design, tta=tta),
        "output": {"activation": "softmax"}, "labels": LABELS, "gradcam_layer": GRADCAM_LAYER,
        "not_for_clinical_use": True,
        "thresholds": {"malignant": {"threshold": thr, "sensitivity": round(vs, 4), "specificity": round(vsp, 4),
                                     "data": f"validation split, {counts['validation']['nodules']} nodules; chosen for "
                                             f"sensitivity >= {SENS_TARGET:.2f}"}},
        "metrics": metrics,
        "metrics_ci": "every interval: percentile cluster bootstrap resampling whole patients "
                      "(imaging_assist.evaluation.bootstrap_ci; patients have several nodules), AUC stratified by "
                      "label, 2,000 resamples; ECE 500, Spearman 1,000 unstratified; sensitivity and specificity: "
                      + "; ".join(f"{h} ({', '.join(v)})" for h, v in ss_hows.items()),
        "data": {"training": f"LIDC-IDRI nodule crops (shared/data/ct/lidc_nodule_vois): {counts['train']['nodules']} "
                             f"nodules of {counts['train']['patients']} patients; reference = readers' majority malignant",
                 "validation": f"{counts['validation']['nodules']} nodules / {counts['validation']['patients']} patients "
                               "(best epoch, temperature, threshold, OOD threshold)",
                 "test": f"{counts['test']['nodules']} nodules / {counts['test']['patients']} patients never seen in training",
                 "splits": counts,
                 "split_rule": "70/15/15 by patient_id, stratified by the readers' majority malignant, seed 0"},
        "license": "Weights: BSD-2-Clause (this project). Training data: LIDC-IDRI (TCIA), CC BY 3.0 "
                   "(Armato et al., Med Phys 38(2), 2011; doi:10.7937/K9/TCIA.2015.LO9QL9SX)",
        "intended_use": "Research, teaching and software demonstration: how LIDC radiologists would likely rate a "
                        "lung nodule that a reader points at on CT. NOT FOR CLINICAL USE: not a diagnosis, not "
                        "validated on any population.",
        "must_not_be_used_for": card_must_not,
        "population": {"image_kind": "cross-sectional", "data": "LIDC-IDRI: thoracic (chest, lung) CT of 1,010 patients from seven "
                       "US academic centres (diagnostic and screening, several vendors, 0.45-2.5 mm slices); "
                       "ages and sexes not in the crops"},
        "limitations": [
            "The reference is a reader opinion: LIDC 'malignant' is the readers' majority, and size drives much of it "
            "(the card's Spearman with the malignancy rating shows the agreement, not truth).",
            f"Test AUC {t['auc']:.3f} (95% CI {t['auc_ci95'][0]:.3f}-{t['auc_ci95'][1]:.3f}) on "
            f"{t['n']} nodules of {t['patients']} patients: small, so the interval is wide.",
            *([size_limitation(t["size_baseline"])] if t.get("size_baseline") else []),
            "The window is 32 mm at 1 mm voxels; nodules above about 30 mm are cut at its edge.",
            "Trained on crops, not whole scans: the input design (docs/ct_nodules_models.md) keeps what the model "
            "sees at a click equal to training, but structures outside the training crops were never seen.",
            "A click that is not on a nodule still gets a number: on soft tissue of the LIDC-IDRI-0001 slab "
            "(mediastinum, chest wall) P(malignant) was 0.80-0.98, because no training window lacked a nodule. A click's "
            "OOD check combines this model's statistics with ct-nodule-seg's (nodules/models.py: ood) and flagged those "
            "windows (tests/test_nodule_models.py); alone, this model's statistics flag 35% of no-nodule slab windows "
            "and ct-nodule-seg's 97% (their cards' ood blocks, scripts/fit_nodule_ood.py). Never read the likelihood "
            "when the window is flagged.",
            "Must not be used for: " + "; ".join(card_must_not) + "."],
        "training": {"script": "scripts/train_ct_nodule_malignancy.py", "seed": args.seed, "init_seed": init_seed, "device": train_device,
                     "design": args.design, "design_comparison": comparison,
                     "epochs": info["epochs_run"], "best_epoch": info["best_epoch"], "batch_size": args.batch_size,
                     "max_lr": args.lr, "optimizer": "AdamW, one-cycle",
                     "augmentation": "click jitter +-4 mm, flips of each axis, in-plane transposition, random "
                                     "narrowing of the validity", "temperature": round(temp, 4),
                     "auxiliary_targets": (old_training.get("auxiliary_targets", "none") if args.evaluate_only
                                           else "none" if aux is None else
                                           {"targets": list(AUX_RATINGS) + ["calcified", "log_diameter_mm"],
                                            "weight": AUX_WEIGHT, "loss": "cross-entropy + weight x MSE of z-scored "
                                            "targets (training rows' mean and SD); a linear head on the pooled "
                                            "features, dropped before saving"}),
                     "readout": {"tta": tta}, "readout_selection": {
                         "data": "validation split AUC (after the temperature); the best eligible one kept", "candidates": tta_selection},
                     "train_seconds": round(float(train_s), 1)},
        "files": {"metrics": "metrics.json", "training_log": "training_log.csv", "training_plot": "training_log.png",
                  "predictions": "predictions.csv", "roc": "roc.png", "reliability": ["reliability_test.png"]},
    }
    from imaging_assist.models.build import save_model_folder

    if args.evaluate_only:
        card = T.keep_card_fields(card, out)
    save_model_folder(out, card, net)
    T.write_json(out / "metrics.json", {"model": MODEL_ID, "positive_label": "malignant",
                                        "threshold": card["thresholds"]["malignant"], "metrics": metrics,
                                        "details": details, "splits": counts, "design": design_row,
                                        "training": card["training"]})
    print(f"test AUC {t['auc']:.4f} {t['auc_ci95']}; validation AUC {details['validation']['auc']:.4f}; "
          f"threshold {thr:.4f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
