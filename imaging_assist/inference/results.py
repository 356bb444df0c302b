"""Result objects and the ``results.json`` writer (schema: docs/results_schema.md).

Grid convention: every array in a result (label map, heat map) is on the grid of the input
:class:`~imaging_assist.volume.Volume`, indexed ``[slice, row, column]`` (k, j, i); a plain
2D image is a volume with one slice.  Files:

* DICOM series: NIfTI (nibabel), array transposed to (i, j, k) and the LPS affine turned
  into RAS by negating its first two rows, so the file lands on the same patient voxels.
* plain images: label map as 8-bit PNG of the input's size (pixel value = label index),
  heat maps as float32 ``.npy`` (rows, columns).
* key images: PNG of the input (or its key slice) with the overlay.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..outputs import _stem, replace_earlier_run, written_beside  # file-name stems; every file via written_beside
from .nifti_files import LPS_TO_RAS, is_sheared, nifti_geometry_warnings, save_nifti  # noqa: F401 - re-exported

RESULTS_SCHEMA_VERSION = 1


@dataclass
class HeatMap:
    label: str
    method: str
    array: np.ndarray  # float32, [k, j, i] on the input grid; NaN where not computed
    target: str = "label"  # "label", "predicted_region" or "user_region"
    faithfulness: dict | None = None
    time_s: float = 0.0
    params: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"label": self.label, "method": self.method, "target": self.target,
                "faithfulness": self.faithfulness, "time_s": round(self.time_s, 4),
                "params": self.params, "warnings": list(self.warnings)}


@dataclass
class InferenceResult:
    model_id: str
    model_version: str
    task: str
    labels: list[str]
    source: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    shape: tuple = ()
    spacing: tuple | None = None
    affine: np.ndarray | None = None  # voxel (i, j, k) -> LPS mm, None without geometry
    has_geometry: bool = False
    is_plain_image: bool = False
    series_uid: str = ""
    description: str = ""
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    heatmaps: list[HeatMap] = field(default_factory=list)
    ood: dict | None = None  # issue 14: {score, threshold, flagged, reasons} (validation.ood)
    batched: int = 0  # images in the forward pass this input shared with others (run_model_many)

    def base_dict(self) -> dict:
        return {"model": self.model_id, "model_version": self.model_version, "task": self.task,
                "source": self.source, "kind": "image" if self.is_plain_image else "series",
                "series_uid": self.series_uid or None, "description": self.description,
                "device": self.device, "precision": self.precision,
                **({"batched": self.batched} if self.batched else {}),
                "has_geometry": self.has_geometry, "shape": list(self.shape),
                "spacing_mm": [float(s) for s in self.spacing] if self.spacing else None,
                "timings_s": {k: round(float(v), 4) for k, v in self.timings.items()},
                "warnings": list(dict.fromkeys(self.warnings)),
                "ood": dict(self.ood) if self.ood is not None else _not_scored()}


# zlib level of the PNGs written (lossless at any level).  Pillow's default, 6, took 10.3 ms for a
# 224x224 key image and level 3 took 3.4 ms for a file 4% smaller (20 Kermany films, measured
# for the batch benchmark, issue 19): writing was half of a batch item's cost.
PNG_LEVEL = 3


def _not_scored() -> dict:
    from ..validation.ood import not_scored

    return not_scored()


@dataclass
class ClassificationResult(InferenceResult):
    probabilities: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, dict | None] = field(default_factory=dict)
    per_slice: list[dict[str, float]] | None = None
    aggregation: str = "whole_image"  # or "max_over_slices"
    # explain.regions: heat map measured against a segmenter's region (card explanation_region)
    explanation_region: dict | None = None
    region_map: np.ndarray | None = None  # uint8 [k, j, i], value = position in its labels + 1

    @property
    def top_label(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    def to_dict(self) -> dict:
        d = self.base_dict()
        d.update({"labels": list(self.labels),
                  "probabilities": {k: float(v) for k, v in self.probabilities.items()},
                  "decisions": self.decisions, "aggregation": self.aggregation})
        if self.per_slice is not None:
            d["per_slice_probabilities"] = self.per_slice
        if self.explanation_region is not None:
            d["explanation_region"] = dict(self.explanation_region)
        return d


@dataclass
class SegmentationResult(InferenceResult):
    label_map: np.ndarray | None = None  # uint8/uint16 [k, j, i]
    voxel_counts: dict[str, int] = field(default_factory=dict)
    volume_ml: dict[str, float] | None = None
    area_mm2: dict[str, float] | None = None
    area_px: dict[str, int] | None = None
    probabilities: np.ndarray | None = None  # optional [C, k, j, i] float32 (memory!)
    sliding_window: dict | None = None  # roi, overlap, blend, sw_batch_size actually used
    # where the spacing behind volume_ml/area_mm2 comes from (Volume.spacing_source); "none": px
    spacing_source: str = "none"
    quality: dict | None = None  # the card's quality_checks on label_map (inference/quality.py)

    def to_dict(self) -> dict:
        d = self.base_dict()
        d.update({"labels": {str(i): n for i, n in enumerate(self.labels)},
                  "voxel_counts": self.voxel_counts, "volume_ml": self.volume_ml,
                  "area_mm2": self.area_mm2, "area_px": self.area_px,
                  "spacing_source": self.spacing_source,
                  "sliding_window": self.sliding_window})
        if self.quality is not None:
            d["quality"] = self.quality
        return d


def decide(probabilities: dict[str, float], thresholds: dict, card=None) -> dict[str, dict | None]:
    """Apply the operating thresholds; labels without one get ``None`` (no decision).  With
    ``card``, a site threshold saved by ``evaluate --save-site-threshold`` replaces the card's
    (models.site) and the decision says so in ``threshold_source`` and ``note``."""
    notes: dict[str, str] = {}
    if card is not None:
        from ..models.site import effective_thresholds

        thresholds, notes = effective_thresholds(card)
    out: dict[str, dict | None] = {}
    for lab, p in probabilities.items():
        t = thresholds.get(lab)
        if t is None:
            out[lab] = None
            continue
        out[lab] = {"threshold": t.threshold, "positive": bool(p >= t.threshold),
                    "sensitivity": t.sensitivity, "specificity": t.specificity}
        if card is not None:
            out[lab]["threshold_source"] = "site" if getattr(t, "n_studies", None) else "card"
            if notes.get(lab):
                out[lab]["note"] = notes[lab]
    return out


# --------------------------------------------------------------------------- file output
def save_label_png(label_map_kji: np.ndarray, path: Path) -> None:
    from PIL import Image

    lm = label_map_kji[0] if label_map_kji.ndim == 3 else label_map_kji
    if lm.max(initial=0) > 255:
        raise ValueError("more than 255 labels do not fit an 8-bit PNG")
    with written_beside(path) as tmp:
        Image.fromarray(lm.astype(np.uint8), mode="L").save(tmp, compress_level=PNG_LEVEL)


def heat_colormap(v: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 with the viewer's default heat-map colormap (imaging_assist.colormaps)."""
    from ..colormaps import DEFAULT_HEAT_COLORMAP, apply_colormap
    return apply_colormap(v, DEFAULT_HEAT_COLORMAP)


def display_gray(img: np.ndarray | None, volume=None, k: int | None = None) -> np.ndarray:
    """A slice as RGB uint8 for key images.

    With the ``volume`` (and slice ``k``) the slice is rendered exactly as the viewer
    shows it (:func:`imaging_assist.display.render_slice`: the file's window or VOI LUT,
    MONOCHROME1 / Presentation LUT inversion).  A bare array (slide tiles, plain images
    without a volume) gets a 0.5-99.5 percentile window; RGB uint8 passes through."""
    if volume is not None:
        from .. import display
        kk = int(k or 0)
        g = display.render_slice(volume, kk, slice_array=img if img is not None else None)
        return g if g.ndim == 3 else np.stack([g] * 3, -1)
    if img.ndim == 3:
        if img.dtype == np.uint8:
            return img
        lo, hi = np.percentile(img, [0.5, 99.5])
        return (np.clip((img - lo) / ((hi - lo) or 1), 0, 1) * 255).astype(np.uint8)
    f = img.astype(np.float32)
    lo, hi = np.percentile(f, [0.5, 99.5])
    g = (np.clip((f - lo) / ((hi - lo) or 1), 0, 1) * 255).astype(np.uint8)
    return np.stack([g] * 3, -1)


def overlay_png(base: np.ndarray | None, path: Path, label_slice: np.ndarray | None = None,
                heat_slice: np.ndarray | None = None, alpha: float = 0.45, volume=None,
                k: int | None = None) -> None:
    """Key image: the slice as the viewer shows it (pass ``volume`` and ``k``), with the
    heat map in the viewer's colormap and the labels in the viewer's label colours.

    A key image with nothing coloured on it (a grey slice and no overlay drawn) is written as a
    one-channel grey PNG: the same pixels, a third of the data to compress (2.1 against 4.4 ms
    and 28 against 38 kB for a 224² film at ``PNG_LEVEL``; a quarter of a batch item's CPU
    was writing this file).  Readers that want RGB convert (the PDF report does)."""
    from PIL import Image

    rgb = overlay_rgb(base, label_slice, heat_slice, alpha, volume, k)
    g = rgb[..., 0]
    grey = np.array_equal(g, rgb[..., 1]) and np.array_equal(g, rgb[..., 2])  # uint8 2-D: "L"
    with written_beside(path) as tmp:
        Image.fromarray(np.ascontiguousarray(g) if grey else rgb).save(tmp, compress_level=PNG_LEVEL)


def overlay_rgb(base: np.ndarray | None, label_slice: np.ndarray | None = None,
                heat_slice: np.ndarray | None = None, alpha: float = 0.45, volume=None,
                k: int | None = None) -> np.ndarray:
    """The key image of :func:`overlay_png` as an RGB uint8 array (the PDF report uses it)."""
    from ..colormaps import heat_rgba, label_lut

    rgb = display_gray(base, volume, k).astype(np.float32)
    if heat_slice is not None:
        h = np.nan_to_num(heat_slice.astype(np.float32), nan=0.0)
        h = np.clip(h, 0, None)
        m = float(h.max())
        hn = h / m if m > 0 else h
        # the viewer's colormap and fade (colormaps.heat_rgba): transparent below 20 % of the
        # maximum, opacity rising with the value above it; the labels' ``alpha`` is not used here
        col, a = heat_rgba(hn)
        a = a[..., None]
        rgb = rgb * (1 - a) + col.astype(np.float32) * a
    if label_slice is not None:
        lab = label_slice.astype(np.int64)
        col = label_lut(int(lab.max(initial=0)) + 1)[np.clip(lab, 0, None)].astype(np.float32)
        a = (alpha * (lab > 0))[..., None]
        rgb = rgb * (1 - a) + col * a
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _key_slice(res: InferenceResult, hm: HeatMap | None = None) -> int:
    n = res.shape[0] if res.shape else 1
    if n <= 1:
        return 0
    if isinstance(res, SegmentationResult) and res.label_map is not None and hm is None:
        counts = (res.label_map > 0).reshape(n, -1).sum(1)
        if counts.max() > 0:
            return int(np.argmax(counts))
    if hm is not None:
        a = np.nan_to_num(hm.array, nan=-np.inf).reshape(n, -1).max(1)
        return int(np.argmax(a))
    if isinstance(res, ClassificationResult) and res.per_slice:
        lab = res.top_label
        return int(np.argmax([p[lab] for p in res.per_slice]))
    return n // 2


def write_item_files(res: InferenceResult, volume, out_dir: Path, stem: str) -> dict:
    """Write label map, heat maps and key images of one result; the results.json item."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    replace_earlier_run(out_dir)  # an earlier run's results.json must not describe these files
    stem = _stem(stem)
    d = res.to_dict()
    plain = res.is_plain_image
    affine = res.affine if res.affine is not None else (volume.affine if volume is not None else np.eye(4))
    affine = np.asarray(affine, np.float64)
    if not plain and (not np.all(np.isfinite(affine)) or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12):
        # NaN/zero spacing or orientation: NIfTI needs an invertible affine; never write a wrong one
        affine = np.eye(4)
        d["warnings"].append("the series geometry is unusable (NaN, zero or degenerate spacing or "
                             "orientation): label and heat-map files are on the pixel grid "
                             "(1 mm per pixel), not in patient space")
    arr = volume.array if volume is not None else None
    key_images: list[str] = []
    writes_nifti = not plain and ((isinstance(res, SegmentationResult) and res.label_map is not None)
                                  or bool(getattr(res, "heatmaps", None)))
    if writes_nifti:
        d["warnings"] += [w for w in nifti_geometry_warnings(volume, affine) if w not in d["warnings"]]
    if isinstance(res, SegmentationResult) and res.label_map is not None:
        if plain:
            f = f"{stem}_labels.png"
            save_label_png(res.label_map, out_dir / f)
        else:
            f = f"{stem}_labels.nii.gz"
            dtype = np.uint8 if res.label_map.max(initial=0) < 256 else np.uint16
            save_nifti(res.label_map.astype(dtype), affine, out_dir / f, like=volume)
        d["label_map"] = f
        if arr is not None:
            k = _key_slice(res)
            kf = f"{stem}_key_labels.png"
            overlay_png(arr[k], out_dir / kf, label_slice=res.label_map[k], volume=volume, k=k)
            key_images.append(kf)
    hms = []
    for n, hm in enumerate(res.heatmaps):
        base = f"{stem}_heat_{_stem(hm.label)}_{hm.method}"
        if len([h for h in res.heatmaps if h.label == hm.label and h.method == hm.method]) > 1:
            base += f"_{n}"
        if plain:
            f = base + ".npy"
            with written_beside(out_dir / f) as tmp:
                np.save(tmp, hm.array[0].astype(np.float32))
        else:
            f = base + ".nii.gz"
            save_nifti(hm.array.astype(np.float32), affine, out_dir / f, like=volume)
        hd = hm.to_dict()
        hd["file"] = f
        if arr is not None:
            k = _key_slice(res, hm)
            kf = base + "_key.png"
            overlay_png(arr[k], out_dir / kf, heat_slice=hm.array[k], volume=volume, k=k)
            hd["key_image"] = kf
            hd["key_slice"] = k
            key_images.append(kf)
        hms.append(hd)
    d["heatmaps"] = hms
    region = getattr(res, "region_map", None)
    if region is not None and d.get("explanation_region") is not None:
        er = d["explanation_region"]
        f = f"{stem}_region_{_stem(er.get('name', 'region'))}" + (".png" if plain else ".nii.gz")
        if plain:
            save_label_png(region, out_dir / f)
        else:
            save_nifti(region.astype(np.uint8), affine, out_dir / f, like=volume)
        er["label_map"] = f
        er["label_map_labels"] = {str(i + 1): n for i, n in enumerate(er.get("labels", []))}
    if isinstance(res, ClassificationResult) and arr is not None and not res.heatmaps:
        k = _key_slice(res)
        kf = f"{stem}_key.png"
        overlay_png(arr[k], out_dir / kf, volume=volume, k=k)
        key_images.append(kf)
    d["key_images"] = key_images
    return d


def write_results_json(items: list[dict], out_dir: Path, model_summary: dict | None = None,
                       extra: dict | None = None, patient_ids=()) -> Path:
    """``results.json`` of a run.  ``patient_ids``: the Patient IDs of the items' sources (the
    items name only series), so that ``audit show --patient`` finds this export too."""
    from .. import tool_version
    from .device import environment  # libraries, machine, GPU and TF32 flags: how it was computed

    doc = {"schema_version": RESULTS_SCHEMA_VERSION, "tool": "imaging-assist",
           "tool_version": tool_version(),
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "not_for_clinical_use": True, "environment": environment(), "model": model_summary,
           "items": items}
    if extra:
        doc.update(extra)
    out = Path(out_dir) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, default=_json_default)
    with written_beside(out) as tmp:  # an OSError (a full disk) leaves no temporary file
        tmp.write_text(text, encoding="utf-8")
    from ..privacy.audit import record_export  # the audit trail (never raises)
    record_export("results.json", out, series_uids=[it.get("series_uid") for it in items if isinstance(it, dict)],
                  patient_ids=list(dict.fromkeys(p for p in patient_ids if p)))
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
