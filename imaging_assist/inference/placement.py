"""Placement: model outputs back onto the study grid, and their sizes.

The spatial steps of the card's preprocessing (:func:`.preprocess.card_transforms`) are
undone with MONAI ``Invertd`` on that same Compose: probabilities and heat maps with linear
interpolation, label outputs of bundles with nearest neighbour.  Label maps of card models
are made *after* this linear inversion, by argmax (as in the MONAI bundles).  Then the axes
are transposed back to the volume's ``[k, j, i]``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..volume import Volume
from .results import SegmentationResult


def _invert(pre, d: dict, arr: torch.Tensor, key: str = "image", nearest: bool = False) -> np.ndarray:
    """Map ``arr`` (C, *model spatial) from model space back to the input grid."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    if not _has_spatial_ops(d[key]):
        return arr.detach().cpu().numpy()
    orig = d[key]
    if not nearest:
        # Going back, an "area" shrink is undone with linear interpolation (MONAI would reuse
        # "area", i.e. blocky nearest-like upsampling of probabilities and heat maps).
        ops = copy.deepcopy(list(orig.applied_operations))
        lin = "trilinear" if arr.ndim - 1 == 3 else "bilinear"
        for op in ops:
            info = op.get("extra_info") or {}
            if op.get("class") == "Resize" and info.get("mode") == "area":
                info["mode"] = lin
                info["align_corners"] = False
        orig = MetaTensor(torch.empty(0), meta=dict(orig.meta), applied_operations=ops)
    # Invertd takes the transform trace from d[key]; the output must be a MetaTensor for it.
    dd = {key: orig, "_out": MetaTensor(arr.detach().cpu().float())}
    inv = Invertd(keys="_out", transform=pre, orig_keys=key, nearest_interp=nearest)(dd)["_out"]
    return inv.detach().cpu().numpy() if isinstance(inv, torch.Tensor) else np.asarray(inv)


def _has_spatial_ops(x) -> bool:
    return bool(getattr(x, "applied_operations", None))


def _from_model_order(card, arr: np.ndarray, unit: int | None) -> np.ndarray:
    """(C, model spatial order) on the input grid -> (C, k, j, i) or (C, j, i)."""
    if unit is None:
        return np.transpose(arr, (0, 3, 2, 1))
    if card.input.axis_order == "col_row":
        return np.transpose(arr, (0, 2, 1))
    return arr


def _bundle_back(card, arr: np.ndarray, unit: int | None) -> np.ndarray:
    """(C, LoadImage order) -> (C, k, j, i) or (C, j, i)."""
    if unit is None:
        return np.transpose(arr, (0, 3, 2, 1))
    return np.transpose(arr, (0, 2, 1))


def _labels_from_probs(card, probs: np.ndarray) -> np.ndarray:
    """(C, ...) probabilities -> label indices (argmax; sigmoid: thresholds, then argmax)."""
    if card.activation == "softmax":
        return np.argmax(probs, 0)
    thr = np.array([card.thresholds[lab].threshold if lab in card.thresholds else 0.5
                    for lab in card.labels[1:]], np.float32)
    above = probs >= thr.reshape((-1,) + (1,) * (probs.ndim - 1))
    lab = np.argmax(np.where(above, probs, -1.0), 0) + 1
    return np.where(above.any(0), lab, 0)


def _spacing_known_from_headers(vol: Volume) -> bool:
    # Only for Volume objects without ``spacing_known`` (before the loader recorded it).
    if vol.has_geometry:
        return True
    if vol.headers:
        h = vol.headers[0]
        try:
            return "PixelSpacing" in h or "ImagerPixelSpacing" in h
        except TypeError:
            pass
    return bool(vol.modality) and not any("no pixel spacing" in w for w in vol.warnings)


def spacing_problem(vol: Volume) -> str | None:
    """Why a spacing the volume claims to know cannot be used for sizes (NaN, inf, 0 or
    negative), or None."""
    try:
        sp = np.asarray(vol.spacing, np.float64).reshape(-1)[:3]
    except (TypeError, ValueError):
        return "the pixel spacing is not a number: sizes are in pixels"
    n = 3 if vol.n_slices > 1 and vol.has_geometry else 2
    if sp.size < n or not np.all(np.isfinite(sp[:n])) or not np.all(sp[:n] > 0):
        shown = ", ".join(f"{v:g}" for v in sp[:n])
        return f"the pixel spacing ({shown}) is not a positive finite number: sizes are in pixels"
    return None


def spacing_known(vol: Volume) -> bool:
    """Is ``vol.spacing[:2]`` a physical pixel size?  The loader's ``Volume.spacing_known``
    (before the loader recorded it: the headers), and only when it is a usable number."""
    known = getattr(vol, "spacing_known", None)
    known = bool(known) if known is not None else _spacing_known_from_headers(vol)
    return known and spacing_problem(vol) is None


def spacing_source(vol: Volume) -> str:
    """Where the pixel spacing comes from (``Volume.spacing_source``: "PixelSpacing",
    "ImagerPixelSpacing/ERMF", "ImagerPixelSpacing", "calibrated" or "none")."""
    src = getattr(vol, "spacing_source", None)
    if src:
        return str(src) if spacing_known(vol) else "none"
    return "PixelSpacing" if spacing_known(vol) else "none"


def _measure(res: SegmentationResult, vol: Volume, label_map: np.ndarray, labels: list[str],
             warns: list[str]) -> None:
    """Voxel counts, and mL (series with 3D geometry), mm² (one image) or pixels — physical
    sizes only when the pixel spacing is known; ``res.spacing_source`` says which spacing."""
    counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(labels))
    res.voxel_counts = {lab: int(counts[i]) for i, lab in enumerate(labels) if i > 0}
    known = spacing_known(vol)
    res.spacing_source = spacing_source(vol)
    raw_known = getattr(vol, "spacing_known", None)
    if (raw_known if raw_known is not None else _spacing_known_from_headers(vol)) and not known:
        warns.append(spacing_problem(vol))
    if vol.n_slices > 1 and vol.has_geometry and known:
        vox_ml = abs(float(np.linalg.det(vol.affine[:3, :3]))) / 1000.0
        res.volume_ml = {lab: round(c * vox_ml, 4) for lab, c in res.voxel_counts.items()}
    elif vol.n_slices == 1 and known:
        d = np.asarray(vol.direction, float)
        px = abs(float(np.linalg.norm(np.cross(d[:, 0] * vol.spacing[0], d[:, 1] * vol.spacing[1]))))
        res.area_mm2 = {lab: round(c * px, 4) for lab, c in res.voxel_counts.items()}
    else:
        res.area_px = dict(res.voxel_counts)
        if vol.n_slices > 1:
            warns.append("no 3D geometry: sizes are pixel counts summed over slices, not mL"
                         if known or not vol.has_geometry else
                         "the pixel spacing is unknown: sizes are pixel counts summed over slices, not mL")
