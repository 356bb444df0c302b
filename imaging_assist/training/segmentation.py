"""Segmentation parts of the training code (``scripts/train_cxr_lung_seg.py`` and
``imaging-assist finetune`` of a segmenter call these same functions): aspect / gamma
augmentation, the DiceCE loss, validation by mean Dice, label maps from PNG masks, Dice/HD95
per label through the engine's ``run_model`` and bootstrap means clustered by patient."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import evaluation as E
from .core import predict, random_affine, random_intensity


# --------------------------------------------------------------------------- augmentation
def random_aspect(x, m, g, amount=0.12):
    """Stretch rows and columns by independent factors (1 ± amount): external films are
    resized to 224² whatever their aspect ratio, so the lungs arrive squashed or stretched."""
    n = x.shape[0]
    sx = 1 + (torch.rand(n, generator=g) * 2 - 1) * amount
    sy = 1 + (torch.rand(n, generator=g) * 2 - 1) * amount
    z = torch.zeros(n)
    theta = torch.stack([torch.stack([1 / sx, z, z], 1), torch.stack([z, 1 / sy, z], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    xo = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    mo = F.grid_sample(m[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                       align_corners=False)[:, 0].long()
    return xo, mo


def random_gamma(x, g, amount=0.3, mean=0.5, std=0.25):
    """Gamma on the [0, 1] image behind the normalisation (x = (v - mean) / std)."""
    n = x.shape[0]
    gam = torch.exp((torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * amount).to(x.device)
    v = (x * std + mean).clamp(0, 1)
    return (v ** gam - mean) / std


def augment_2d(xb, yb, g, mean=0.5, std=0.25):
    """The 2D segmenters' augmentation: rotation ±10°, scale 0.85-1.15, shift ±8%, aspect
    ±12%, gamma e^±0.3 (on the image behind the card's normalisation ``mean``/``std``),
    contrast/brightness ±20%; no flips (left and right matter)."""
    xb, yb = random_affine(xb, g, rot_deg=10, scale=(0.85, 1.15), shift=0.08, masks=yb)
    xb, yb = random_aspect(xb, yb, g, 0.12)
    xb = random_gamma(xb, g, 0.3, mean, std)
    return random_intensity(xb, g, contrast=0.2, brightness=0.2), yb


# --------------------------------------------------------------------------- loss, validation
def dice_ce_loss():
    """``monai.losses.DiceCELoss`` (softmax, one-hot, background included) on (N, H, W) labels."""
    from monai.losses import DiceCELoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss_fn(logits, yb):
        return dice_ce(logits, yb[:, None])

    return loss_fn


def validation_by_dice(x_val, y_val, loss_fn, device, label_names: dict[int, str], batch_size: int = 16):
    """``evaluate(net)`` for :func:`.core.fit`: the validation loss, Dice per label and their
    mean as the score (the epoch kept is the one with the best mean Dice)."""
    yva = y_val.numpy()

    def evaluate(n):
        lo = predict(n, x_val, device, batch_size=batch_size)
        lab = lo.argmax(1).numpy()
        d = {k: float(np.mean([E.dice(a == k, b == k) for a, b in zip(lab, yva)])) for k in label_names}
        md = float(np.mean(list(d.values())))
        return {"val_loss": float(loss_fn(lo, y_val)),
                **{f"val_dice_{name}": d[k] for k, name in label_names.items()}, "val_dice": md, "score": md}

    return evaluate


# --------------------------------------------------------------------------- data
def jsrt_split(rows: list[dict], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cxr-lung-seg's split of the JSRT ``labels.csv`` rows: (split index per row: 0 train,
    1 validation, 2 test; patient ids).  One radiograph per patient, so each image is its own
    group; 70/15/15 stratified by nodule / no nodule (``scripts/train_cxr_lung_seg.py`` and the
    drift monitor's reference use this one function)."""
    from .core import grouped_split

    groups = np.array([r["patient_id"] for r in rows])
    nodule = np.array([r["nodule_state"] not in ("", "non-nodule") for r in rows]).astype(int)
    return grouped_split(groups, nodule, (0.70, 0.15, 0.15), seed=seed), groups


# --------------------------------------------------------------------------- measuring
def read_label_png(p, mapping: dict[int, int]) -> np.ndarray:
    """A label map from a mask image: stored value -> label index (other values -> 0), own grid."""
    from PIL import Image

    with Image.open(p) as im:
        a = np.asarray(im.convert("L"))
    lab = np.zeros(a.shape, np.int64)
    for v, k in mapping.items():
        lab[a == v] = k
    return lab


def per_lung(lab: np.ndarray, truth: np.ndarray, idx: int, mm_per_px: float | None = None):
    """(Dice, HD95 in pixels) of label ``idx``."""
    d = E.dice(lab == idx, truth == idx)
    h = E.hausdorff95(lab == idx, truth == idx)
    return d, h


def run_on_files(model, paths):
    """Label maps from the engine (``run_model``: card preprocessing, inversion to the file's
    own grid, argmax), one per file; not written to the prediction log."""
    from ..inference.images import read_image
    from ..inference.pipelines import RunOptions, run_model
    from ..monitoring.log import paused

    out = []
    with paused():
        for p in paths:
            res = run_model(model, read_image(p), RunOptions(device="cpu"))
            out.append(res.label_map[0])
    return out


def mean_ci(vals, seed, clusters=None):
    """Mean of the finite values and its cluster-bootstrap 95% CI (clusters: patient ids)."""
    vals = np.asarray(vals, float)
    ok = np.isfinite(vals)
    cl = None if clusters is None else np.asarray(clusters)[ok]
    v = vals[ok]
    return float(v.mean()), E.bootstrap_ci(lambda a: float(np.mean(a)), v, clusters=cl, seed=seed), len(v)
