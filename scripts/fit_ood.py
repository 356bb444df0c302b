#!/usr/bin/env python3
"""Fit and measure the out-of-distribution (OOD) score of every shipped model (issue 14).

For each model (``--model ID``, default all four): the SHIPPED weights (no retraining), the
engine's own preprocessing (``inference.preprocess.model_input`` through ``_training.preprocess_all``,
whose cache the training scripts filled), the model's training split for the fit, its
validation split for the threshold (``ood.conformal_threshold``: at most 5% of future
in-distribution images flagged, with 90% confidence), its test split(s) for the in-distribution
flag rate, and other modalities from ``../shared/data`` (ultrasound, histology incl. Kather
tiles, CT/MR/XA slices rendered to 8-bit images, chest X-rays for the non-CXR models) plus
non-medical photographs from ``skimage.data`` (no photographs exist in the shared data) for the
AUROCs.  Every candidate (method x layers) is measured and printed; the one fixed in
``CANDIDATES[...][0]`` is written: ``weights/<id>/ood.safetensors`` and the card's ``ood`` block.
Training scripts call :func:`fit_model` at their end, so a retrained model gets new statistics.

    .venv/bin/python scripts/fit_ood.py [--model ID] [--dry-run]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _training as T  # noqa: E402

from imaging_assist.validation import ood as O  # noqa: E402

OOD_CACHE = T.ROOT / ".cache" / "ood"
RESNET = {"mahalanobis": [["layer2", "layer3", "layer4"], ["layer3", "layer4"], ["layer4"]],
          "knn": [["layer2", "layer3", "layer4"]]}
UNET_BOTTOM = "model.1.submodule.1.submodule.1.submodule.1.submodule"
UNET_ENC4 = "model.1.submodule.1.submodule.1.submodule.0"
UNET_ENC3 = "model.1.submodule.1.submodule.0"
UNET = {"mahalanobis": [[UNET_ENC3, UNET_ENC4, UNET_BOTTOM], [UNET_ENC4, UNET_BOTTOM], [UNET_BOTTOM]],
        "knn": [[UNET_ENC3, UNET_ENC4, UNET_BOTTOM]]}
# The written choice per model: (method, layers).  Chosen on the measurements in docs/ood.md.
CHOICE = {"cxr-pneumonia": ("mahalanobis", ["layer2", "layer3", "layer4"]),
          "us-breast": ("mahalanobis", ["layer2", "layer3", "layer4"]),
          "path-lung-tissue": ("mahalanobis", ["layer2", "layer3", "layer4"]),
          "cxr-lung-seg": ("mahalanobis", [UNET_ENC3, UNET_ENC4, UNET_BOTTOM])}
PHOTOS = ["astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "moon", "page", "horse",
          "hubble_deep_field", "text", "clock", "grass", "gravel", "brick", "colorwheel", "logo",
          "checkerboard", "cat"]
rng = np.random.default_rng(0)


def _sample(paths: list[Path], n: int) -> list[Path]:
    paths = sorted(paths)
    if len(paths) <= n:
        return paths
    return [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), n, replace=False))]


# --------------------------------------------------------------------------- rendered images
def _png(a: np.ndarray, out: Path) -> Path:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        Image.fromarray(a).save(out)
    return out


def _to8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).round().astype(np.uint8)


def rendered_ct_mr() -> list[Path]:
    """CT/MR/XA slices rendered to 8-bit PNGs (lung / brain windows, MR and XA by percentiles)."""
    import nibabel as nib
    import pydicom

    d = OOD_CACHE / "rendered"
    out = []
    for f in _sample(list((T.DATA / "ct" / "lidc_nodule_vois" / "images").glob("*.nii.gz")), 120):
        a = np.asarray(nib.load(str(f)).dataobj)
        if min(a.shape[:2]) < 24:
            continue
        out.append(_png(_to8(a[:, :, a.shape[2] // 2].T, -1000, 400), d / f"lidc_{f.name[:-7]}.png"))
    ph = sorted((T.DATA / "dicom" / "ct_head_phantom_philips").rglob("*.dcm"))
    for f in ph[::10]:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out.append(_png(_to8(hu, 0, 80), d / f"cthead_{f.stem}.png"))
    for f in sorted((T.DATA / "dicom" / "ct_gantry_tilt_uneven_spacing_ge_subset").rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        out.append(_png(_to8(hu, -160, 240), d / f"ctge_{f.stem}.png"))
    for folder, tag, step in (("mr_enhanced_multiframe_philips", "mrph", 4),
                              ("mr_enhanced_siemens_series_jpeg2000_lossless_derived", "mrsi", 5),
                              ("xa_multiframe_cine_jpeg_baseline", "xa", 8)):
        for f in sorted((T.DATA / "dicom" / folder).rglob("*")):
            if not f.is_file() or f.suffix.lower() in (".txt", ".md") or f.name.startswith("LICENSE"):
                continue
            try:
                px = pydicom.dcmread(f).pixel_array
            except Exception:  # noqa: BLE001 - non-image files in the folder
                continue
            frames = px if px.ndim == 3 else px[None]
            for i in range(0, len(frames), step):
                fr = frames[i].astype(np.float64)
                lo, hi = np.percentile(fr, [0.5, 99.5])
                out.append(_png(_to8(fr, lo, hi), d / f"{tag}_{f.stem}_{i:03d}.png"))
    return out


def photographs() -> list[Path]:
    """Non-medical photographs: skimage.data's bundled sample images, whole and 4 crops each."""
    import skimage.data as sd

    d = OOD_CACHE / "photos"
    out = []
    for n in PHOTOS:
        a = getattr(sd, n)()
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[..., :3]
        a = a.astype(np.uint8)
        h, w = a.shape[:2]
        out.append(_png(a, d / f"{n}.png"))
        for j, (y, x) in enumerate(((0, 0), (0, w // 3), (h // 3, 0), (h // 3, w // 3))):
            out.append(_png(a[y:y + 2 * h // 3, x:x + 2 * w // 3], d / f"{n}_crop{j}.png"))
    return out


def image_sets() -> dict[str, list[Path]]:
    """Every image set the scores are measured on (paths of plain images)."""
    D = T.DATA
    ker = list(csv.DictReader((D / "cxr" / "pneumonia_kermany" / "labels.csv").open()))
    return {
        "cxr_paediatric": _sample([D / "cxr" / "pneumonia_kermany" / r["file"] for r in ker
                                   if r["source_split"] == "test"], 250),
        "cxr_adult_jsrt": sorted((D / "cxr" / "lung_masks_jsrt" / "images").glob("*.png")),
        "cxr_adult_nlm": sorted((D / "cxr" / "lung_masks_nlm_tb_subset" / "images").glob("*.jpg")),
        "cxr_adult_covid": sorted((D / "cxr" / "lung_masks_covid_generalblockchain" / "images").glob("*")),
        "ultrasound_busi": _sample([D / "ultrasound" / "breast_busi" / r["file"] for r in
                                    csv.DictReader((D / "ultrasound" / "breast_busi" / "labels.csv").open())], 250),
        "histology_lc25000": _sample((D / "pathology" / "lc25000_lung_subset" / "tiles").rglob("*.jpeg"), 250),
        "histology_kather": sorted((D / "pathology" / "kather2016_crc_texture_samples" / "tiles").glob("*.jpg")),
        "ct_mr_xa_rendered": rendered_ct_mr(),
        "photographs": photographs(),
    }


# Which sets are "other modalities" per model, and which are reported as near-OOD only.
OTHER = {"cxr-pneumonia": ["ultrasound_busi", "histology_lc25000", "histology_kather", "ct_mr_xa_rendered", "photographs"],
         "cxr-lung-seg": ["ultrasound_busi", "histology_lc25000", "histology_kather", "ct_mr_xa_rendered", "photographs"],
         "us-breast": ["cxr_paediatric", "cxr_adult_jsrt", "cxr_adult_nlm", "cxr_adult_covid", "histology_lc25000",
                       "histology_kather", "ct_mr_xa_rendered", "photographs"],
         "path-lung-tissue": ["cxr_paediatric", "cxr_adult_jsrt", "cxr_adult_nlm", "cxr_adult_covid",
                              "ultrasound_busi", "ct_mr_xa_rendered", "photographs"]}
NEAR = {"cxr-pneumonia": {"adult_cxr": ["cxr_adult_jsrt", "cxr_adult_nlm", "cxr_adult_covid"]},
        "cxr-lung-seg": {"paediatric_cxr": ["cxr_paediatric"]},
        "path-lung-tissue": {"colorectal_histology_kather": ["histology_kather"]},
        "us-breast": {}}


# --------------------------------------------------------------------------- in-distribution splits
def id_splits(model_id: str, card, folder: Path) -> dict:
    """Model inputs (float16) and class indices of the model's own train/validation/test."""
    if model_id == "cxr-pneumonia":
        src = T.DATA / "cxr" / "pneumonia_kermany"
        rows, paths = T.read_rows(src)
        pred = {r["file"]: r["split"] for r in csv.DictReader((folder / "predictions.csv").open())}
        split = np.array([pred.get(r["file"], "train" if r["source_split"] == "train" else "?") for r in rows])
        y = np.array([card.labels.index(r["label"].lower()) for r in rows])
    elif model_id == "us-breast":
        src = T.DATA / "ultrasound" / "breast_busi"
        rows, paths = T.read_rows(src)
        pred = {r["file"]: r["split"] for r in csv.DictReader((folder / "predictions.csv").open())}
        split = np.array([pred.get(r["file"], "train") for r in rows])
        y = np.array([card.labels.index(r["label"]) for r in rows])
    elif model_id == "path-lung-tissue":
        src = T.DATA / "pathology" / "lc25000_lung_subset"
        rows, paths = T.read_rows(src)
        pred = {r["file"]: r["split"] for r in csv.DictReader((folder / "predictions.csv").open())}
        split = np.array([pred[r["file"]] for r in rows])
        y = np.array([card.labels.index(r["label"]) for r in rows])
    elif model_id == "cxr-lung-seg":
        src = T.DATA / "cxr" / "lung_masks_jsrt"
        rows, paths = T.read_rows(src)
        groups = np.array([r["patient_id"] for r in rows])
        nodule = np.array([r["nodule_state"] not in ("", "non-nodule") for r in rows]).astype(int)
        k = T.grouped_split(groups, nodule, (0.70, 0.15, 0.15), seed=0)  # as train_cxr_lung_seg.py
        split = np.array(["train", "validation", "test"])[k]
        test_pred = {r["file"] for r in csv.DictReader((folder / "predictions.csv").open())
                     if r["set"] == "jsrt_test"}
        assert test_pred == {rows[i]["file"] for i in np.nonzero(split == "test")[0]}, "JSRT split differs"
        y = None
    else:
        raise SystemExit(f"unknown model {model_id}")
    x = T.preprocess_all(card, paths, model_id)
    out = {}
    for name in ("train", "validation", "test", "original_test"):
        m = split == name
        if m.any():
            out[name] = (x[m], None if y is None else y[m])
    return out


def set_inputs(card, model_id: str, name: str, paths: list[Path]) -> torch.Tensor:
    OOD_CACHE.mkdir(parents=True, exist_ok=True)
    return T.preprocess_all(card, paths, f"ood_{model_id}_{name}") if paths else torch.zeros(0)


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    s = np.concatenate([id_scores, ood_scores])
    lab = np.concatenate([np.zeros(len(id_scores)), np.ones(len(ood_scores))])
    return float(roc_auc_score(lab, s))


def measure(model_id: str, write: bool = True, only_choice: bool = False, folder: Path | None = None) -> dict:
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model

    folder = Path(folder or T.ROOT / "weights" / model_id)
    card = load_card(folder)
    net = load_model(card).network.eval()
    t0 = time.perf_counter()
    ids = id_splits(model_id, card, folder)
    sets = image_sets()
    needed = sorted(set(OTHER[model_id]) | {s for v in NEAR[model_id].values() for s in v})
    xs = {n: set_inputs(card, model_id, n, sets[n]) for n in needed}
    print(f"{model_id}: inputs ready ({time.perf_counter() - t0:.0f} s): "
          + ", ".join(f"{k} {len(v[0])}" for k, v in ids.items()) + "; "
          + ", ".join(f"{k} {len(v)}" for k, v in xs.items()), flush=True)
    cands = UNET if card.task == "segmentation" else RESNET
    chosen = CHOICE[model_id]
    if only_choice:
        cands = {chosen[0]: [chosen[1]]}
    # one forward pass per image for every candidate: features of all layers, split by layer
    all_layers = list(dict.fromkeys(n for ls in cands.values() for l in ls for n in l))
    widths = [O.extract_features(net, ids["train"][0][:1], [n]).shape[1] for n in all_layers]
    starts = dict(zip(all_layers, np.cumsum([0] + widths[:-1])))
    fa = {k: O.extract_features(net, v[0], all_layers) for k, v in ids.items()}
    foa = {k: O.extract_features(net, v, all_layers) for k, v in xs.items()}
    print(f"{model_id}: features ready ({time.perf_counter() - t0:.0f} s)", flush=True)

    def cols(layers):
        return np.concatenate([np.arange(starts[n], starts[n] + widths[all_layers.index(n)]) for n in layers])

    rows, best = [], None
    for method, layer_sets in cands.items():
        for layers in layer_sets:
            c = cols(layers)
            f = {k: v[:, c] for k, v in fa.items()}
            fo = {k: v[:, c] for k, v in foa.items()}
            ytr = ids["train"][1]
            stats = O.fit_mahalanobis(f["train"], ytr) if method == "mahalanobis" else O.fit_knn(f["train"])
            sc = {k: O.score(stats, v, method) for k, v in {**f, **fo}.items()}
            thr, rule = O.conformal_threshold(sc["validation"])
            id_test = np.concatenate([sc[k] for k in ("test", "original_test") if k in sc])
            other = np.concatenate([sc[k] for k in OTHER[model_id]])
            r = {"method": method, "layers": layers, "threshold": thr, "threshold_info": rule,
                 "auroc_other_modalities": round(auroc(id_test, other), 4),
                 "auroc_per_set": {k: round(auroc(id_test, sc[k]), 4) for k in OTHER[model_id]},
                 "near": {nm: round(auroc(id_test, np.concatenate([sc[s] for s in ss])), 4)
                          for nm, ss in NEAR[model_id].items()},
                 "flagged_id_test": round(float((id_test > thr).mean()), 4),
                 "flagged_per_test_split": {k: round(float((sc[k] > thr).mean()), 4)
                                            for k in ("test", "original_test") if k in sc},
                 "flagged_other": round(float((other > thr).mean()), 4),
                 "flagged_near": {nm: round(float((np.concatenate([sc[s] for s in ss]) > thr).mean()), 4)
                                  for nm, ss in NEAR[model_id].items()},
                 "n": {"train": len(f["train"]), "validation": len(f["validation"]), "id_test": len(id_test),
                       "other": len(other), **{k: len(sc[k]) for k in xs}}}
            print(json.dumps(r), flush=True)
            rows.append(r)
            if (method, layers) == chosen:
                best = (r, stats)
    if write and best is not None:
        write_stats(folder, card, *best, rows)
    return {"model": model_id, "candidates": rows, "seconds": round(time.perf_counter() - t0, 1)}


def write_stats(folder: Path, card, r: dict, stats: dict, rows: list[dict]) -> None:
    from safetensors.torch import save_file

    f = folder / O.STATS_FILE
    from imaging_assist.models.loaders import sha256_file

    # the weights fitted on, in the file itself: statistics of other weights are refused on load
    save_file({k: v.contiguous() for k, v in stats.items()}, str(f),
              metadata={"method": r["method"], "layers": json.dumps(r["layers"]),
                        O.WEIGHTS_KEY: sha256_file(folder / card.weights[0].file)})
    f.chmod(0o644)  # shipped beside the weights (safetensors writes 0600)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    cardp = folder / "model.json"
    d = json.loads(cardp.read_text())
    alts = [{k: c[k] for k in ("method", "layers", "auroc_other_modalities", "near", "flagged_id_test")}
            for c in rows if c is not r]
    if not alts:  # fit_model (end of training) measures only the choice: keep the last comparison
        alts = (d.get("ood") or {}).get("alternatives") or []
    d["ood"] = {
        "method": r["method"], "layers": r["layers"], "file": O.STATS_FILE, "sha256": sha,
        "threshold": round(r["threshold"], 6),
        "threshold_rule": O.threshold_rule_text(r["threshold_info"]),
        "threshold_info": r["threshold_info"],
        "features": "per channel spatial mean and standard deviation of each layer's activations",
        "fitted_on": f"training split, {r['n']['train']} images, shipped weights, engine preprocessing",
        "auroc_other_modalities": r["auroc_other_modalities"],
        "auroc_per_set": r["auroc_per_set"],
        **({"auroc_near": r["near"]} if r["near"] else {}),
        "flagged_in_distribution_test": r["flagged_id_test"],
        "flagged_per_test_split": r["flagged_per_test_split"],
        "flagged_other_modalities": r["flagged_other"],
        **({"flagged_near": r["flagged_near"]} if r["flagged_near"] else {}),
        "n": r["n"],
        "measured_by": "scripts/fit_ood.py (in-distribution = the model's test split(s); photographs are "
                       "skimage.data sample images and crops, none exist in the shared data)",
        "alternatives": alts,
    }
    cardp.write_text(json.dumps(d, indent=2) + "\n")
    print(f"wrote {f} (sha256 {sha[:12]}…) and the ood block of {cardp}", flush=True)


def fit_model(model_id: str, folder: Path | None = None) -> dict:
    """Called at the end of each training script: fit and write the chosen statistics."""
    return measure(model_id, write=True, only_choice=True, folder=folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="model id (repeatable; default all four)")
    ap.add_argument("--dry-run", action="store_true", help="measure only, write nothing")
    ap.add_argument("--only-choice", action="store_true", help="measure only the chosen candidate")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = [measure(m, write=not args.dry_run, only_choice=args.only_choice)
           for m in (args.model or list(CHOICE))]
    print(json.dumps({"seconds": {o["model"]: o["seconds"] for o in out}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
