#!/usr/bin/env python
"""Near-duplicate leakage between the splits of the shipped classifiers, by detectors
independent of the repo's own grouping (``imaging_assist/near_duplicates.py``), and the test
figures recomputed without the leaked images; writes ``weights/<id>/split_duplicates.json``.

* us-breast (BUSI) and cxr-pneumonia (Kermany): a global detector over every image of the data
  set, each in its shipped split (the split of ``predictions.csv``; an image not listed there is
  a training image).  Two scores per pair: the NCC of 32x32 grey copies (whole frame squashed,
  area-averaged), best of the 8 dihedral orientations, and the NCC of 64x64 high-passed copies
  (minus a Gaussian blur of sigma 2 px), best of the 8 orientations.  A pair is a near-duplicate
  when both reach their threshold (32x32 NCC >= 0.95, high-pass NCC >= ``HIGHPASS_MIN``: frames
  cropped a little differently keep the first, look-alike chest films fail the second).  Listed:
  near-duplicate pairs in two splits and near-duplicate pairs under two labels; the test figures
  are recomputed without the test images that have a near-duplicate under another label.
* path-lung-tissue (LC25000): tiles are rotated / zoomed / flipped copies of a few originals,
  and the repo's grouping misses copies zoomed 1.3-1.7x.  (1) The turn/flip/zoom search of
  every test and validation tile against every training tile of its class (grey, blur
  sigma 2.5 px, a disc of radius 60 px sampled on a 32x32 grid; 90 angles x 13 zooms
  0.55-1.82 x flip; best NCC), with the best pairs refined on high-passed grey (blur 1 px minus
  blur 5 px, 64x64 grid).  Its score does not separate copies from similar tissue (pairs
  confirmed by eye score below unconfirmed ones), so (2) the leaked tiles are the pairs
  confirmed by eye, a committed input (``duplicate_pairs_confirmed.csv``): each listed pair is
  registered by the same search and refused unless its refined NCC reaches ``LC["verify_min"]``
  and beats the best refined NCC of the tile against every training tile of the other classes
  (never copies of it); the script writes its scores back into that file.
* The figures (macro AUC, per-class AUC, accuracy, with the card's cluster-bootstrap intervals
  from ``imaging_assist.evaluation``, same seeds) come from the model's ``predictions.csv``; the
  figures of the whole test split are checked against the card's ``metrics.json`` first.

numpy, Pillow, scipy (and scikit-learn for the AUC cross-check) only; every parameter is fixed
here, the result is deterministic.  About 4 minutes on 2 shared cores (3 of them the LC25000 search).

    python scripts/check_split_duplicates.py [us-breast] [path-lung-tissue] [cxr-pneumonia]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter, map_coordinates
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from imaging_assist import evaluation as E  # noqa: E402  (numpy/scipy only, no torch)

DATA = Path(os.environ.get("IMAGING_ASSIST_DATA") or ROOT.parent / "shared" / "data")
WEIGHTS = ROOT / "weights"
COMMAND = "python scripts/check_split_duplicates.py"

MODELS = {
    "us-breast": {"data": "ultrasound/breast_busi", "labels": ["benign", "malignant", "normal"],
                  "cluster": "group"},
    "cxr-pneumonia": {"data": "cxr/pneumonia_kermany"},  # nothing to recompute: no pair found
    "path-lung-tissue": {"data": "pathology/lc25000_lung_subset",
                         "labels": ["adenocarcinoma", "benign", "squamous_cell_carcinoma"], "cluster": "group"},
}
GLOBAL = {"grey_size": 32, "highpass_size": 64, "highpass_sigma_px": 2.0, "orientations": 8,
          "ncc_grey_min": 0.95}
# high-pass NCC a near-duplicate must reach, per data set: in the gap of its pair scores.  BUSI:
# the same frame under two labels, cropped a little differently, scores 0.49; Kermany films of
# different children score up to 0.74 (paediatric films look alike), its copies 1.0
HIGHPASS_MIN = {"us-breast": 0.45, "cxr-pneumonia": 0.8}
LC = {"blur_sigma_px": 2.5, "disc_radius_px": 60.0, "coarse_grid": 32, "angles_deg": [0, 360, 4],
      "log_zoom": [-0.6, 0.6, 13], "flips": [0, 1], "candidate_min": 0.6,
      "refine_bandpass_sigmas_px": [1.0, 5.0], "refine_grid": 64, "refine_angle_deg": [-6, 6, 1],
      "refine_log_zoom": [-0.08, 0.08, 0.02], "verify_min": 0.25}
CONFIRMED = "duplicate_pairs_confirmed.csv"


class CheckError(Exception):
    """One line for the user (a listed pair that does not verify, a figure that does not match)."""


# --------------------------------------------------------------------------- common
def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def shipped_rows(model: str) -> tuple[list[dict], dict[str, str]]:
    """(every image of the data set with its label, split of every image): the split of
    ``predictions.csv``, ``train`` for the images it does not list (us-breast and cxr-pneumonia
    write only their evaluation splits)."""
    pred = {r["file"]: r for r in read_csv(WEIGHTS / model / "predictions.csv")}
    rows = read_csv(DATA / MODELS[model]["data"] / "labels.csv")
    return rows, {r["file"]: pred[r["file"]]["split"] if r["file"] in pred else "train" for r in rows}


def figures(rows: list[dict], labels: list[str], cluster: str) -> dict:
    """The card's test figures from prediction rows: AUC (macro and per class) and accuracy with
    the training scripts' cluster-bootstrap intervals (``E.bootstrap_ci``, same seeds)."""
    y = np.array([labels.index(r["label"]) for r in rows])
    p = np.array([[float(r["p_" + lab]) for lab in labels] for r in rows])
    g = np.array([r[cluster] for r in rows])
    out = {"n": len(rows), "clusters": int(len(set(g)))}
    mauc, per = E.macro_auc(y, p)
    assert abs(mauc - np.mean([roc_auc_score(y == c, p[:, c]) for c in range(len(labels))])) < 1e-9
    out["macro_auc"] = round(mauc, 4)
    out["macro_auc_ci95"] = [round(v, 4) for v in
                             E.bootstrap_ci(lambda a, b: E.macro_auc(a, b)[0], y, p, clusters=g, strata=y, seed=1)]
    out["auc"] = {lab: round(per[c], 4) for c, lab in enumerate(labels)}
    out["auc_ci95"] = {lab: [round(v, 4) for v in E.bootstrap_ci(lambda a, b, _c=c: E.roc_auc(a == _c, b[:, _c]), y, p,
                                                                 clusters=g, strata=y, seed=10 + c)]
                       for c, lab in enumerate(labels)}
    acc = lambda a, b: float((b.argmax(1) == a).mean())  # noqa: E731
    out["accuracy"] = round(acc(y, p), 4)
    out["accuracy_ci95"] = [round(v, 4) for v in E.bootstrap_ci(acc, y, p, clusters=g, strata=y, seed=2)]
    return out


def check_against_card(model: str, fig: dict) -> None:
    """The whole test split's figures must be the card's (metrics.json): same data, same method."""
    m = json.loads((WEIGHTS / model / "metrics.json").read_text())["metrics"]
    want = {(x["name"], x.get("label")): x for x in m if x["data"].startswith(("test split", "grouped test split"))}
    have = {("macro AUC", None): (fig["macro_auc"], fig["macro_auc_ci95"]),
            ("accuracy", None): (fig["accuracy"], fig["accuracy_ci95"])}
    have.update({("AUC", lab): (v, fig["auc_ci95"][lab]) for lab, v in fig["auc"].items()})
    for key, (v, ci) in have.items():
        w = want.get(key)
        if w is None or abs(w["value"] - v) > 1e-4 or any(abs(a - b) > 1e-4 for a, b in zip(w["ci95"], ci)):
            raise CheckError(f"{model}: the recomputed test {key[0]} {key[1] or ''} {v} {ci} is not the card's "
                             f"({w and (w['value'], w['ci95'])}): predictions.csv and metrics.json disagree")


def pred_test_rows(model: str) -> list[dict]:
    return [r for r in read_csv(WEIGHTS / model / "predictions.csv") if r["split"] == "test"]


# --------------------------------------------------------------------------- global detector
def _unit(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(-1, keepdims=True)
    return (v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-6)).astype(np.float32)


def global_features(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the 32x32 grey copy and the 64x64 high-passed copy (squares, not normalised)."""
    s, h = GLOBAL["grey_size"], GLOBAL["highpass_size"]
    grey = np.zeros((len(paths), s, s), np.float32)
    hp = np.zeros((len(paths), h, h), np.float32)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("L")
            grey[i] = np.asarray(im.resize((s, s), Image.BOX), np.float32)
            a = np.asarray(im.resize((h, h), Image.BOX), np.float32)
        hp[i] = a - gaussian_filter(a, GLOBAL["highpass_sigma_px"])
    return grey, hp


def _orient(a: np.ndarray, k: int) -> np.ndarray:
    """k-th of the 8 dihedral orientations of a stack of squares (N, S, S)."""
    r = np.rot90(a, k // 2, axes=(1, 2))
    return r[:, :, ::-1] if k % 2 else r


def global_pairs(paths: list[Path]) -> list[tuple[int, int, float, float]]:
    """(i, j, grey NCC, high-pass NCC) of every pair i < j whose grey NCC reaches
    ``GLOBAL["ncc_grey_min"]`` (each score the best of the 8 orientations of j against i as it is)."""
    grey, hp = global_features(paths)
    g0 = _unit(grey.reshape(len(paths), -1))
    h0 = _unit(hp.reshape(len(paths), -1))
    gk = [_unit(_orient(grey, k).reshape(len(paths), -1)) for k in range(GLOBAL["orientations"])]
    n, out, blk = len(paths), [], 512
    for s in range(0, n, blk):
        e = min(n, s + blk)
        sg = np.max([g0[s:e] @ x.T for x in gk], 0)
        rows, cols = np.nonzero(sg >= GLOBAL["ncc_grey_min"])
        keep = cols > rows + s
        rows, cols = rows[keep], cols[keep]
        if not len(rows):
            continue
        # high-pass NCC only for the grey candidates (the full matrix is 4x the work)
        hv = np.full(len(rows), -1.0, np.float32)
        for k in range(GLOBAL["orientations"]):
            hk = _unit(_orient(hp[cols], k).reshape(len(cols), -1))
            hv = np.maximum(hv, np.einsum("ij,ij->i", h0[rows + s], hk))
        out += [(int(r + s), int(c), float(sg[r, c]), float(h)) for r, c, h in zip(rows, cols, hv)]
    return out


def check_global(model: str) -> dict:
    cfg = MODELS[model]
    rows, split = shipped_rows(model)
    files = [r["file"] for r in rows]
    label = {r["file"]: r["label"].lower() for r in rows}
    cands = global_pairs([DATA / cfg["data"] / f for f in files])
    pairs = [p for p in cands if p[3] >= HIGHPASS_MIN[model]]
    # the margin: the best cross-split pair that is not a near-duplicate
    miss = max((p for p in cands if p[3] < HIGHPASS_MIN[model] and split[files[p[0]]] != split[files[p[1]]]),
               key=lambda p: p[3], default=None)
    listed, counts = [], {"near_duplicate_pairs": len(pairs), "cross_split_pairs": 0, "cross_label_pairs": 0}
    for i, j, g, h in sorted(pairs, key=lambda t: (-t[2], t[0], t[1])):
        a, b = files[i], files[j]
        cross_split, cross_label = split[a] != split[b], label[a] != label[b]
        counts["cross_split_pairs"] += cross_split
        counts["cross_label_pairs"] += cross_label
        if cross_split or cross_label:
            listed.append({"a": a, "b": b, "split_a": split[a], "split_b": split[b], "label_a": label[a],
                           "label_b": label[b], "ncc_grey32": round(g, 4), "ncc_highpass64": round(h, 4)})
    counts["cross_label_pairs_by_split"] = {}
    for p in listed:
        if p["label_a"] != p["label_b"]:
            k = "/".join(sorted({p["split_a"], p["split_b"]}))
            counts["cross_label_pairs_by_split"][k] = counts["cross_label_pairs_by_split"].get(k, 0) + 1
    test_rows = pred_test_rows(model)
    # test images that have a near-duplicate under another label (anywhere): one frame, two labels
    drop = sorted({f for p in listed if p["label_a"] != p["label_b"]
                   for f, s in ((p["a"], p["split_a"]), (p["b"], p["split_b"])) if s == "test"})
    # test images with a near-duplicate in training or validation
    leaked = sorted({p[x] for p in listed if p["split_a"] != p["split_b"]
                     for x in ("a", "b") if p["split_" + x] == "test"})
    res = {"images": len(files), "splits": {s: sum(v == s for v in split.values()) for s in sorted(set(split.values()))},
           "counts": counts, "pairs": listed, "test_images_with_cross_label_twin": drop,
           "test_images_with_copy_in_other_split": leaked,
           "closest_cross_split_pair_below_threshold": miss and {
               "a": files[miss[0]], "b": files[miss[1]], "split_a": split[files[miss[0]]],
               "split_b": split[files[miss[1]]], "ncc_grey32": round(miss[2], 4), "ncc_highpass64": round(miss[3], 4)}}
    if model == "us-breast":
        full = figures(test_rows, cfg["labels"], cfg["cluster"])
        check_against_card(model, full)
        res["test_figures"] = full
        res["test_figures_without_cross_label_twins"] = figures(
            [r for r in test_rows if r["file"] not in drop], cfg["labels"], cfg["cluster"])
    return res


# --------------------------------------------------------------------------- LC25000 search
def _disc(grid: int) -> tuple[np.ndarray, np.ndarray]:
    r = LC["disc_radius_px"]
    yy, xx = np.meshgrid(np.linspace(-r, r, grid), np.linspace(-r, r, grid), indexing="ij")
    d = xx ** 2 + yy ** 2 <= r * r
    return xx[d], yy[d]


def _warp(img: np.ndarray, px, py, angles, zooms, flip: int) -> np.ndarray:
    """``img`` sampled at centre + zoom * R(angle) * F(flip) * (px, py) for every (angle, zoom):
    rows (angle-major, zoom-minor) x points."""
    a = np.asarray(angles, np.float64)[:, None, None]
    z = np.asarray(zooms, np.float64)[None, :, None]
    dy = -py if flip else py
    ux = z * (np.cos(a) * px - np.sin(a) * dy)
    uy = z * (np.sin(a) * px + np.cos(a) * dy)
    c = (img.shape[0] - 1) / 2
    v = map_coordinates(img, [c + uy.ravel(), c + ux.ravel()], order=1, mode="nearest")
    return v.reshape(-1, len(px))


class TileSearch:
    """The turn/flip/zoom search of LC25000 tiles (numpy/scipy port of the audit's torch code)."""

    def __init__(self, root: Path, files: list[str]):
        self.root, self.files = root, files
        self.idx = {f: i for i, f in enumerate(files)}
        self.angles = np.deg2rad(np.arange(*LC["angles_deg"]))
        self.zooms = np.exp(np.linspace(*LC["log_zoom"]))
        self.cpx, self.cpy = _disc(LC["coarse_grid"])
        self.rpx, self.rpy = _disc(LC["refine_grid"])
        self.blur, self.band = {}, {}
        # every tile as it is, on the coarse grid: what warped tiles are compared with
        self.ref = _unit(np.stack([_warp(self._blurred(f), self.cpx, self.cpy, [0.0], [1.0], 0)[0] for f in files]))

    def _grey(self, f: str) -> Image.Image:
        with Image.open(self.root / f) as im:
            return im.convert("L")

    def _blurred(self, f: str) -> np.ndarray:
        if f not in self.blur:
            self.blur[f] = np.asarray(self._grey(f).filter(ImageFilter.GaussianBlur(LC["blur_sigma_px"])), np.float32)
        return self.blur[f]

    def _bandpassed(self, f: str, zoom: float = 1.0) -> np.ndarray:
        """Band-passed grey; a tile to be sampled at ``zoom`` gets sigmas times ``zoom`` so that
        both tiles of a pair carry the same band of the tissue once registered."""
        key = (f, round(zoom, 3))
        if key not in self.band:
            g = np.asarray(self._grey(f), np.float32)
            lo, hi = LC["refine_bandpass_sigmas_px"]
            self.band[key] = gaussian_filter(g, lo * zoom) - gaussian_filter(g, hi * zoom)
        return self.band[key]

    def coarse(self, f: str, against: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Best coarse NCC of tile ``f`` warped by every transform against each of ``against``
        (as they are), and the transform (angle index, zoom index, flip) reaching it."""
        w = _unit(np.concatenate([_warp(self._blurred(f), self.cpx, self.cpy, self.angles, self.zooms, fl)
                                  for fl in LC["flips"]]))
        s = w @ self.ref[[self.idx[x] for x in against]].T
        k = s.argmax(0)
        nz = len(self.zooms)
        per_flip = len(self.angles) * nz
        return s[k, np.arange(len(against))], np.stack([(k % per_flip) // nz, k % nz, k // per_flip], 1)

    def refine(self, f: str, g: str, t) -> tuple[float, float, float, int]:
        """High-pass NCC of ``f`` warped onto ``g`` around the coarse transform ``t``:
        (NCC, angle in degrees, zoom, flip) of the best refined transform."""
        a0, z0, fl = self.angles[t[0]], self.zooms[t[1]], int(t[2])
        da = np.deg2rad(np.arange(LC["refine_angle_deg"][0], LC["refine_angle_deg"][1] + 1e-9,
                                  LC["refine_angle_deg"][2]))
        lz = LC["refine_log_zoom"]
        dz = np.exp(np.arange(lz[0], lz[1] + 1e-9, lz[2]))
        w = _unit(_warp(self._bandpassed(f, z0), self.rpx, self.rpy, a0 + da, z0 * dz, fl))
        ref = _unit(_warp(self._bandpassed(g), self.rpx, self.rpy, [0.0], [1.0], 0))[0]
        s = w @ ref
        k = int(s.argmax())
        return float(s[k]), float(np.rad2deg(a0 + da[k // len(dz)]) % 360), float(z0 * dz[k % len(dz)]), fl

    def verify(self, f: str, g: str) -> tuple[float, float, float, int, str]:
        """The pair registered both ways (``f`` onto ``g`` and ``g`` onto ``f``, each by the coarse
        search then refined): the better (NCC, angle, zoom, flip, which tile was warped)."""
        out = []
        for a, b in ((f, g), (g, f)):
            t = self.coarse(a, [b])[1][0]
            out.append(self.refine(a, b, t) + (a,))
        return max(out, key=lambda r: r[0])


def check_lc() -> dict:
    model = "path-lung-tissue"
    cfg = MODELS[model]
    pred = read_csv(WEIGHTS / model / "predictions.csv")
    by = {r["file"]: r for r in pred}
    files = [r["file"] for r in pred]
    ts = TileSearch(DATA / cfg["data"], files)
    train = [f for f in files if by[f]["split"] == "train"]
    held = [f for f in files if by[f]["split"] in ("test", "validation")]

    # (1) the search: every test/validation tile against every training tile of its class
    t0 = time.perf_counter()
    best, cands = {}, []
    for f in held:
        same = [g for g in train if by[g]["label"] == by[f]["label"]]
        s, t = ts.coarse(f, same)
        for k in np.nonzero(s >= LC["candidate_min"])[0]:
            cands.append((f, same[k], float(s[k]), t[k]))
        best[f] = float(s.max())
    refined = {}
    for f, g, s, t in cands:
        refined[(f, g)] = (s,) + ts.refine(f, g, t)
    print(f"{model}: search of {len(held)} tiles x their class's training tiles, {len(cands)} candidates "
          f"refined: {time.perf_counter() - t0:.1f} s", flush=True)
    top = sorted(refined.items(), key=lambda kv: -kv[1][1])

    # (2) the pairs confirmed by eye: verified by the same search, scores written back
    path = WEIGHTS / model / CONFIRMED
    listed = read_csv(path)
    out_rows, verified = [], []
    for r in listed:
        f, g = r["tile"], r["training_tile"]
        if f not in by or g not in by or by[g]["split"] != "train" or by[f]["split"] not in ("test", "validation"):
            raise CheckError(f"{path.name}: {f} / {g} is not a test or validation tile and a training tile")
        if by[f]["label"] != by[g]["label"]:
            raise CheckError(f"{path.name}: {f} and {g} have different labels")
        s = ts.coarse(f, [g])[0]
        ncc, ang, zoom, fl, warped = ts.verify(f, g)
        # null: the same tile against the training tiles of the other classes (never its copies):
        # the 5 best by the coarse search, verified the same way
        other = [x for x in train if by[x]["label"] != by[f]["label"]]
        so = ts.coarse(f, other)[0]
        null = max(ts.verify(f, other[k])[0] for k in np.argsort(-so)[:5])
        row = {"tile": f, "training_tile": g, "split": by[f]["split"], "label": by[f]["label"],
               "confirmed": r["confirmed"], "coarse_ncc": f"{float(s[0]):.4f}", "verified_ncc": f"{ncc:.4f}",
               "null_max_ncc": f"{null:.4f}", "warped": warped, "angle_deg": f"{ang:.1f}", "zoom": f"{zoom:.3f}", "flip": str(fl)}
        out_rows.append(row)
        if ncc < LC["verify_min"] or ncc <= null:
            raise CheckError(f"{path.name}: {f} / {g} does not verify (NCC {ncc:.3f} after registration, "
                             f"needs >= {LC['verify_min']} and above {null:.3f}, its best match among the "
                             f"other classes): remove the pair or check it by eye again")
        verified.append(row)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(out_rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(out_rows)

    leaked = sorted({r["tile"] for r in verified if r["split"] == "test"})
    leaked_val = sorted({r["tile"] for r in verified if r["split"] == "validation"})
    test_rows = pred_test_rows(model)
    full = figures(test_rows, cfg["labels"], cfg["cluster"])
    check_against_card(model, full)
    return {
        "tiles": len(files), "splits": {s: sum(by[f]["split"] == s for f in files) for s in ("train", "validation", "test")},
        "counts": {"confirmed_pairs": len(verified), "test_tiles_with_copy_in_training": len(leaked),
                   "validation_tiles_with_copy_in_training": len(leaked_val),
                   "search_candidate_pairs": len(cands)},
        "confirmed_pairs": verified,
        "test_tiles_with_copy_in_training": leaked, "validation_tiles_with_copy_in_training": leaked_val,
        "search": {"what": "every test/validation tile against every training tile of its class; candidates "
                           f"(coarse NCC >= {LC['candidate_min']}) refined",
                   "tiles_searched": len(held),
                   "best_refined_pairs": [{"tile": f, "training_tile": g, "coarse_ncc": round(v[0], 4),
                                           "verified_ncc": round(v[1], 4), "angle_deg": round(v[2], 1),
                                           "zoom": round(v[3], 3), "flip": v[4],
                                           "confirmed": any(r["tile"] == f and r["training_tile"] == g
                                                            for r in verified)}
                                          for (f, g), v in top[:25]],
                   "note": "the search score does not separate copies from similar tissue: the decision is the "
                           "list confirmed by eye (" + CONFIRMED + ")"},
        "test_figures": full,
        "test_figures_without_leaked_tiles": figures([r for r in test_rows if r["file"] not in leaked],
                                                     cfg["labels"], cfg["cluster"]),
    }


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)")
    args = ap.parse_args(argv)
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        ap.error(f"unknown model {bad[0]} (choose from {', '.join(MODELS)})")
    args.models = args.models or list(MODELS)
    t_all = time.perf_counter()
    summary = {}
    try:
        for model in args.models:
            t0 = time.perf_counter()
            res = check_lc() if model == "path-lung-tissue" else check_global(model)
            secs = round(time.perf_counter() - t0, 1)
            doc = {"model": model, "command": f"{COMMAND} {model}", "script": "scripts/check_split_duplicates.py",
                   "parameters": LC if model == "path-lung-tissue" else {**GLOBAL, "ncc_highpass_min": HIGHPASS_MIN[model]},
                   **res}
            (WEIGHTS / model / "split_duplicates.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            summary[model] = {k: v for k, v in res["counts"].items() if isinstance(v, int)}
            print(f"{model}: {summary[model]} ({secs} s) -> weights/{model}/split_duplicates.json", flush=True)
    except (CheckError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"took {time.perf_counter() - t_all:.1f} s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
