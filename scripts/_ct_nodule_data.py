"""Shared data of the two CT nodule training scripts (``train_ct_nodule_seg.py``,
``train_ct_nodule_malignancy.py``).

Every LIDC crop of ``ct/lidc_nodule_vois`` is read with the engine's own
:func:`imaging_assist.nodules.window.volume_from_nifti` (RAS -> LPS) and cut with
:func:`~imaging_assist.nodules.window.cut_cube` around its ``labels.csv`` centre (LPS mm) into
a ``PRE``-voxel cube; training takes random ``WINDOW_SIZE`` sub-cubes of it (a shift by whole
millimetres = a click that far from the centre, identical to ``cut_window`` there), the
evaluation the central one (= ``cut_window`` at the centre).  The mask is resampled the same
way (trilinear fraction, nodule where >= 0.5).  Cached in ``.cache/training``.
"""

from __future__ import annotations

import csv
import hashlib
import time

import numpy as np

import _training as T
from imaging_assist.nodules import window as W

SRC = T.DATA / "ct" / "lidc_nodule_vois"
PRE = W.WINDOW_SIZE + 8  # +-4 mm of click jitter
OFF = (PRE - W.WINDOW_SIZE) // 2
SPLIT_NAMES = {0: "train", 1: "validation", 2: "test"}
# Clicks that are not on the nodule ("negatives"): on a bright structure inside the lung (a vessel,
# a fissure) at least NEG_VESSEL_MM from the nodule, or in the parenchyma 2-4 mm beside one at least
# NEG_BESIDE_MM from it.  Both lie beyond models.SEED_RADIUS_MM (5 mm), so the right answer there
# is "no nodule at this point" (the nodule itself, if inside the window, is still segmented).
NEG_VESSEL_MM = 7.0
NEG_BESIDE_MM = 9.0
NEG_KINDS = ("vessel", "beside")


def read_rows():
    with (SRC / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def centre(r) -> np.ndarray:
    return np.array([float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])])


def split_rows(rows, seed: int = 0) -> np.ndarray:
    """0 train / 1 validation / 2 test, 70/15/15 by patient, stratified by ``malignant``."""
    groups = np.array([r["patient_id"] for r in rows])
    y = np.array([int(r["malignant"]) for r in rows])
    split = T.grouped_split(groups, y, (0.70, 0.15, 0.15), seed=seed)
    for k in range(3):
        assert not (set(groups[split == k]) & set(groups[split != k])), "patient in two splits"
    return split


def load_cubes(rows):
    """(image float16 HU, valid bool, mask float16 fraction) arrays (N, PRE, PRE, PRE)."""
    key = hashlib.sha256(("\n".join(r["file"] + r["coordX"] + r["coordY"] + r["coordZ"] for r in rows)
                          + f"{PRE}{W.MODEL_SPACING_MM}v2").encode()).hexdigest()[:16]
    f = T.CACHE / f"ct_nodule_cubes_{key}.npz"
    if f.exists():
        d = np.load(f)
        return d["image"], d["valid"], d["mask"]
    n = len(rows)
    img = np.zeros((n,) + (PRE,) * 3, np.float16)
    val = np.zeros((n,) + (PRE,) * 3, bool)
    msk = np.zeros((n,) + (PRE,) * 3, np.float16)
    t = time.perf_counter()
    for i, r in enumerate(rows):
        c = centre(r)
        vi = W.volume_from_nifti(SRC / r["file"])
        vm = W.volume_from_nifti(SRC / r["mask"])
        vm.array = (vm.array > 0).astype(np.float32)
        wi = W.cut_cube(vi, c, PRE)
        wm = W.cut_cube(vm, c, PRE)
        img[i], val[i], msk[i] = wi.image, wi.valid, wm.image
        if i % 200 == 0:
            print(f"  cut {i}/{n} ({time.perf_counter() - t:.0f} s)", flush=True)
    T.CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(f, image=img, valid=val, mask=msk)
    return img, val, msk


def negative_candidates(vol, mask: np.ndarray) -> dict:
    """bool [k, j, i] candidates of each kind in NEG_KINDS on a crop (array in HU, nodule mask)."""
    from scipy import ndimage

    a = vol.array
    sp = (vol.spacing[2], vol.spacing[1], vol.spacing[0])  # mm along [k, j, i]
    lung_share = ndimage.uniform_filter((a < -600).astype(np.float32),
                                        size=[max(1, int(round(5.0 / s))) for s in sp])
    bright = (a >= -400) & (lung_share >= 0.35)  # a structure surrounded by lung, not chest wall
    from_nodule = ndimage.distance_transform_edt(~mask, sampling=sp)
    from_bright = ndimage.distance_transform_edt(~bright, sampling=sp) if bright.any() else np.full(a.shape, np.inf)
    inner = np.zeros(a.shape, bool)  # at least 3 mm of the crop on every side
    mk = [int(np.ceil(3.0 / s)) for s in sp]
    if all(a.shape[d] > 2 * mk[d] for d in range(3)):
        inner[mk[0]:a.shape[0] - mk[0], mk[1]:a.shape[1] - mk[1], mk[2]:a.shape[2] - mk[2]] = True
    return {"vessel": bright & inner & (from_nodule >= NEG_VESSEL_MM),
            "beside": (a < -700) & inner & (from_bright >= 2.0) & (from_bright <= 4.0)
            & (from_nodule >= NEG_BESIDE_MM)}


def load_negative_cubes(rows, seed: int = 0):
    """One negative click per crop that has a candidate (kind chosen at random among those it
    has, then a random voxel; fixed seed): (image, valid, mask, row index, kind, point LPS mm) with the
    ``PRE`` cubes cut around the click exactly as :func:`load_cubes` cuts around a centre (the
    mask = the crop's nodule mask on that cube).  Cached in ``.cache/training``."""
    key = hashlib.sha256(("\n".join(r["file"] for r in rows) + f"{PRE}{W.MODEL_SPACING_MM}{seed}"
                          f"{NEG_VESSEL_MM}{NEG_BESIDE_MM}neg2").encode()).hexdigest()[:16]
    f = T.CACHE / f"ct_nodule_negatives_{key}.npz"
    if f.exists():
        d = np.load(f)
        return d["image"], d["valid"], d["mask"], d["row"], d["kind"], d["point"]
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("image", "valid", "mask", "row", "kind", "point")}
    for i, r in enumerate(rows):
        vi = W.volume_from_nifti(SRC / r["file"])
        vm = W.volume_from_nifti(SRC / r["mask"])
        vm.array = (vm.array > 0).astype(np.float32)
        cand = negative_candidates(vi, vm.array > 0)
        kinds = [k for k in NEG_KINDS if cand[k].any()]
        if not kinds:
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        pts = np.argwhere(cand[kind])
        k, j, ii = pts[int(rng.integers(len(pts)))]
        c = np.asarray(vi.index_to_lps(ii, j, k), float)
        wi, wm = W.cut_cube(vi, c, PRE), W.cut_cube(vm, c, PRE)
        for name, v in (("image", wi.image.astype(np.float16)), ("valid", wi.valid),
                        ("mask", wm.image.astype(np.float16)), ("row", i), ("kind", NEG_KINDS.index(kind)), ("point", c)):
            out[name].append(v)
    arrays = {k: np.asarray(v) for k, v in out.items()}
    T.CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(f, **arrays)
    return tuple(arrays[k] for k in ("image", "valid", "mask", "row", "kind", "point"))


def central(a: np.ndarray) -> np.ndarray:
    """The central WINDOW_SIZE cube (= cut_window at the labels.csv centre)."""
    s = slice(OFF, OFF + W.WINDOW_SIZE)
    return a[:, s, s, s]


def augment_batch(img, val, msk, rng: np.random.Generator, shift: int = 4, shrink: bool = True):
    """Random sub-cube (click jitter up to +-``shift`` mm per axis), flips of each axis and
    in-plane transposition; ``shrink``: the validity is further cut on random sides (a
    thinner/narrower crop) so the network cannot rely on where the crop ends."""
    n = len(img)
    ws = W.WINDOW_SIZE
    oi = np.empty((n, ws, ws, ws), np.float32)
    ov = np.empty((n, ws, ws, ws), bool)
    om = np.empty((n, ws, ws, ws), np.float32)
    for b in range(n):
        o = OFF + rng.integers(-shift, shift + 1, 3)
        sl = tuple(slice(int(a), int(a) + ws) for a in o)
        x, v = img[b][sl].astype(np.float32), val[b][sl].copy()
        m = msk[b][sl].astype(np.float32) if msk is not None else np.zeros_like(x)
        for ax in range(3):
            if rng.random() < 0.5:
                x, v, m = np.flip(x, ax), np.flip(v, ax), np.flip(m, ax)
        if rng.random() < 0.5:
            x, v, m = (np.swapaxes(a, 1, 2) for a in (x, v, m))
        if shrink and rng.random() < 0.5:
            v = v.copy()
            ax = int(rng.integers(0, 3))
            cut = int(rng.integers(1, ws // 4))
            idx = [slice(None)] * 3
            idx[ax] = slice(0, cut) if rng.random() < 0.5 else slice(ws - cut, ws)
            v[tuple(idx)] = False
        oi[b], ov[b], om[b] = x, v, m
    return oi, ov, om


def input_block(design: str, **readout) -> dict:
    """The card's input block: the generic pipeline does not feed this model (the engine cuts
    the window: imaging_assist.nodules.models); ``window`` documents that input and ``readout``
    (``tta``, ``mask_threshold``, ``source_grid``, chosen on validation) how
    imaging_assist.nodules.models reads the output."""
    return {"channels": 3, "size": [W.WINDOW_SIZE] * 3, "spacing": [W.MODEL_SPACING_MM] * 3,
            "orientation": "LPS", "units": "HU",
            "window": {"design": design, "size_voxels": W.WINDOW_SIZE, "spacing_mm": W.MODEL_SPACING_MM,
                       "axes": "[z, y, x] along +S, +P, +L", "hu_windows": [list(h) for h in W.HU_WINDOWS],
                       "channels": ["lung window x valid", "mediastinal window x valid", "valid"],
                       "common_half_mm_zyx": list(W.COMMON_HALF_MM),
                       "code": "imaging_assist.nodules.window.cut_window + model_channels", **readout}}
