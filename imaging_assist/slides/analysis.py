"""Run a tile classifier (a model card with a ``"slide"`` block) over a whole-slide image.

Used by ``imaging-assist analyze SLIDE --model ID --out DIR``.  Engine only (no Qt).

* **Same preprocessing as the image path.**  :func:`run_tiles` hands RGB in 0..1; the card's
  intensity steps are written for the stored pixel values (0..255 for 8-bit RGB), so tiles are
  mapped back to 0..255 and go through the card's own MONAI transforms
  (:func:`imaging_assist.inference.preprocess.batch_model_input`: the card's resize mode, steps
  that are the same for every tile on the whole batch, per-image steps tile by tile).  A JPEG
  tile given to ``analyze`` as an image and the same pixels met on a slide get the same model
  input (1e-5) and probabilities (tested).
* **Scale.**  Tiles are ``slide.tile_px`` square at ``slide.mpp`` µm/px from the card, read
  from the nearest pyramid level and resampled (:func:`run_tiles`).  Without slide MPP the
  tiles are read at the native resolution with a warning; when the card says its MPP is an
  assumption (``mpp_is_assumption``), that is a warning too.
* **Outputs**: per-class heat maps (pyramidal TIFF or NPZ via :func:`write_heatmaps`) with a
  PNG overview, the tissue mask PNG, per-class tissue area (mm², px² without MPP), the top
  tiles per class with a Grad-CAM each (through :func:`run_model` and the shared Captum code)
  and one ``results.json`` item (``kind: "slide"``, see docs/results_schema.md).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError


def slide_spec(card) -> dict | None:
    """The card's ``slide`` block (tile_px, mpp, ...) or None for models not made for slides."""
    s = card.raw.get("slide") if getattr(card, "raw", None) else None
    if not isinstance(s, dict):
        return None
    out = {"tile_px": int(s.get("tile_px") or (card.input.size or [224])[0]),
           "mpp": float(s["mpp"]) if s.get("mpp") is not None else None,
           "mpp_is_assumption": bool(s.get("mpp_is_assumption", False)),
           "mpp_note": str(s.get("mpp_note", "")),
           "tissue_threshold": float(s.get("tissue_threshold", 0.5))}
    return out


def ignored_options(precision: str | None = None, explain: str | None = None) -> list[str]:
    """One line per option asked for that a slide model does not honour (``analyze`` and
    ``batch`` say so rather than ignore it silently): the tiles run in fp32 and the top tiles
    are explained with Grad-CAM."""
    from ..explain.names import canonical_method

    out = []
    if (precision or "auto").lower() not in ("auto", "fp32"):
        out.append(f"slide models run their tiles in fp32 (the results record it): --precision {precision} ignored")
    if explain is not None and canonical_method(explain) != "gradcam":
        out.append(f"slide models explain their top tiles with Grad-CAM: --explain {explain} ignored")
    return out


# --------------------------------------------------------------------------- inputs
def is_slide_input(path: str | os.PathLike, tile_px: int = 224) -> bool:
    """Should a slide model tile ``path`` rather than classify it as one image?

    Vendor slide files, WSI DICOM (a file or a folder), tiled/pyramidal TIFF, and plain
    images larger than two tiles on their longer side.  Small plain images (a single tile
    such as an LC25000 JPEG) go through the image path, which resizes the whole image.
    """
    from .cli import is_slide_path

    return is_slide_path(path, 2 * tile_px)


def find_slide_inputs(path: str | os.PathLike, tile_px: int = 224) -> list[str]:
    """Slides under ``path`` (a file or a folder, recursive; WSI DICOM grouped per folder)."""
    p = os.fspath(path)
    if os.path.isfile(p):
        return [p] if is_slide_input(p, tile_px) else []
    if is_slide_input(p, tile_px):  # a folder holding one WSI DICOM slide
        return [p]
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        dicom_here = False
        for n in sorted(filenames):
            if n.startswith("."):
                continue
            full = os.path.join(dirpath, n)
            from .cli import _head, _is_wsi_dicom_file
            head = _head(full)
            if len(head) >= 132 and head[128:132] == b"DICM":
                dicom_here = dicom_here or _is_wsi_dicom_file(full)
                continue
            if is_slide_input(full, tile_px):
                out.append(full)
        if dicom_here:
            out.append(dirpath)
    return out


# --------------------------------------------------------------------------- model function
class TileModel:
    """``(N, 3, H, W)`` RGB 0..1 tiles -> ``(N, C)`` probabilities through the card's
    transforms (:func:`imaging_assist.inference.preprocess.batch_model_input`, batched on
    ``device``), on ``device``.  ``preprocess`` alone gives the model-space tensor.  Also
    takes uint8 0..255 tiles (``accepts_uint8``: run_tiles then skips its float pass)."""

    accepts_uint8 = True

    def __init__(self, model, device="cpu"):
        import torch

        self.model = model
        self.card = model.card
        self.device = torch.device(device)
        c = self.card.input.channels
        if c != 3:
            raise UserError(f"model {self.card.id} takes {c}-channel input; slide tiles are RGB "
                            "(3 channels)")
        if self.device.type == "cuda":  # fp32 tiles in IEEE fp32, not TF32 (inference.device)
            from ..inference.device import exact_fp32

            exact_fp32()
        # the loaded model may be shared (the viewer's model cache): moved and copied under its
        # lock, as run_model moves it, so that no run on another thread sees it half-way
        # between devices
        with getattr(model, "lock", None) or contextlib.nullcontext():
            model.to(self.device)
            model.network.eval()
            # Tiles run through a channels-last copy of the network: oneDNN (CPU) and cuDNN take
            # NHWC convolutions without reordering each layer (measured with the shipped model,
            # batch 32, one thread: 43-64 -> 73-82 tiles/s; outputs equal to 2e-6).  A copy, so
            # the model object others use (Grad-CAM, the image path) stays as loaded.
            self.net = model.network
            try:
                import copy

                net = copy.deepcopy(model.network)
                if any(getattr(m, "weight", None) is not None and m.weight.dim() == 4 for m in net.modules()):
                    self.net = net.to(memory_format=torch.channels_last).eval()
            except Exception:  # a network that cannot be copied runs as loaded
                self.net = model.network
        # Issue 14: OOD score of every tile from the same forward pass (validation.ood)
        from ..validation.ood import OODStatsError, stats_for

        self.ood_scores: list = []
        self.ood_error = ""
        try:
            self.ood = stats_for(self.card)
        except OODStatsError as e:
            self.ood, self.ood_error = None, str(e)

    def ood_summary(self) -> dict:
        """The slide's ``ood`` block: per-tile scores summarised (share of tiles flagged)."""
        import numpy as np

        from ..validation.ood import NO_STATS, summarise_tiles

        if self.ood_error:
            return {"score": None, "threshold": None, "flagged": True, "reasons": [self.ood_error]}
        if self.ood is None:
            return {"score": None, "threshold": None, "flagged": False, "reasons": [], "note": NO_STATS}
        s = np.concatenate(self.ood_scores) if self.ood_scores else np.zeros(0)
        return summarise_tiles(s, self.ood.threshold, self.ood.method)

    def preprocess(self, x):
        """0..1 RGB batch -> model input: the card's transforms on the 0..255 values, exactly
        as the image path applies them to the same pixels."""
        import torch

        from ..inference.preprocess import batch_model_input

        x = torch.as_tensor(x).to(self.device)
        # uint8 tiles (run_tiles hands them over as read: accepts_uint8) are the 0..255 values
        x = x.float() if x.dtype == torch.uint8 else x.float() * 255.0
        return batch_model_input(self.card, x)

    def __call__(self, x):
        import torch

        with torch.inference_mode():
            inp = self.preprocess(x)
            if self.net is not self.model.network:
                inp = inp.contiguous(memory_format=torch.channels_last)
            if self.ood is not None:
                from ..validation.ood import forward_with_features, score

                logits, f = forward_with_features(self.net, inp, self.ood.layers)
                self.ood_scores.append(score(self.ood.tensors, f, self.ood.method, self.ood.k))
            else:
                logits = self.net(inp)
            if isinstance(logits, (list, tuple)):
                logits = logits[0]
            logits = logits.float()
            if self.card.activation == "softmax":
                return torch.softmax(logits, 1).cpu()
            return torch.sigmoid(logits).cpu()


# --------------------------------------------------------------------------- analysis
def _tile_index(plan, row: int, col: int) -> int:
    hit = np.nonzero((plan.cells[:, 0] == row) & (plan.cells[:, 1] == col))[0]
    return int(hit[0])


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


@dataclass
class SlidePlan:
    """Where one slide's tiles are, before the model runs (:func:`plan_slide`): plain values,
    so that the tiles can run in parts on other processes (``batch``: worker processes, Ray
    actors) and the results come together in :func:`finish_slide`."""

    path: str
    spec: dict                 # the card's slide block (:func:`slide_spec`)
    plan: object               # tiling.TilePlan
    tissue: object             # tissue.TissueMask
    tissue_s: float
    warnings: list[str]


@dataclass
class TileScores:
    """What :func:`score_tiles` gives for tiles ``start : start + len(probs)`` of a plan."""

    start: int
    probs: np.ndarray          # (n, C) float32, plan order
    ood: np.ndarray | None     # (n,) OOD scores of the same forward passes (None without statistics)
    read_s: float
    model_s: float
    elapsed_s: float
    n_planned: int             # tiles asked for (more than len(probs): cancelled)
    worker: str = ""           # host:pid that ran them


def plan_slide(path, card) -> SlidePlan:
    """Open the slide, find its tissue and plan the card's tiles (no model needed)."""
    from .reader import open_slide
    from .tiling import plan_tiles
    from .tissue import detect_tissue

    spec = slide_spec(card)
    if spec is None:
        raise UserError(f"model {card.id} is not a slide model (its card has no \"slide\" block with "
                        "the tile size and microns per pixel)")
    warns: list[str] = []
    if spec["mpp_is_assumption"]:
        warns.append(f"the model's tile pixel size ({spec['mpp']:g} µm/px) is an assumption, not a "
                     f"published value: {spec['mpp_note']}".rstrip(": "))
    with open_slide(path) as slide:
        warns += list(slide.warnings)
        t = time.perf_counter()
        tissue = detect_tissue(slide)
        tissue_s = time.perf_counter() - t
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # recorded in plan.warnings / result.warnings
            plan = plan_tiles(slide, spec["tile_px"], spec["mpp"], tissue_mask=tissue,
                              tissue_threshold=spec["tissue_threshold"])
    if not len(plan):  # an empty result would read as "no tumour" (all areas 0): say why instead
        raise UserError(f"{path}: no tissue tile to analyse on this slide (the tissue detection found "
                        f"no tile at least {spec['tissue_threshold']:.0%} tissue: a blank or "
                        "badly focused scan?)")
    return SlidePlan(str(path), spec, plan, tissue, tissue_s, warns)


def score_tiles(path, plan, fn: TileModel, *, start: int = 0, batch_size: int = 32, progress=None,
                cancel=None) -> TileScores:
    """Probabilities (and OOD scores) of the tiles of ``plan`` (a whole slide's plan, or a part
    of it from :func:`imaging_assist.slides.tiling.plan_part` starting at tile ``start``)."""
    from .reader import open_slide
    from .tiling import run_tiles

    fn.ood_scores = []
    with open_slide(path) as slide, _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # the whole slide's warnings come from finish_slide
        res = run_tiles(slide, fn, batch_size=batch_size, progress=progress, cancel=cancel,
                        class_names=list(fn.card.labels), top_k=0, plan=plan, as_tensor=True,
                        device=fn.device)
    ood = np.concatenate(fn.ood_scores).astype(np.float64) if fn.ood_scores else None
    return TileScores(start, res.probs, ood, res.read_s, res.model_s, res.elapsed_s, len(plan),
                      f"{os.uname().nodename}:{os.getpid()}")


def analyze_slide(path, model, out_dir, stem: str, *, device: str = "cpu", batch_size: int = 32,
                  top_k: int = 3, explain: bool = True, heatmap_format: str = "tif",
                  progress=None, cancel=None) -> dict:
    """Analyse one slide; write its files into ``out_dir``; return its results.json item.

    :func:`plan_slide`, :func:`score_tiles` over all tiles, :func:`finish_slide` (``batch``
    runs the same three steps with the tiles in parts on several workers).
    ``progress(done, total)`` per batch of tiles; ``cancel`` (``threading.Event`` or callable)
    stops between batches (the item then says ``cancelled: true`` and is partial).
    """
    t_start = time.perf_counter()
    sp = plan_slide(path, model.card)
    fn = TileModel(model, device)
    scores = score_tiles(path, sp.plan, fn, batch_size=batch_size, progress=progress, cancel=cancel)
    return finish_slide(sp, fn, out_dir, stem, [scores], top_k=top_k, explain=explain,
                        heatmap_format=heatmap_format, batch_size=batch_size,
                        before_s=time.perf_counter() - t_start)


def finish_slide(sp: SlidePlan, fn: TileModel, out_dir, stem: str, parts: list[TileScores], *,
                 top_k: int = 3, explain: bool = True, heatmap_format: str = "tif", batch_size: int = 32,
                 before_s: float = 0.0, tiles_wall_s: float | None = None) -> dict:
    """The slide's heat maps, top tiles (with Grad-CAM) and results.json item from the scores
    of its tiles (one part, or several run on other workers: in any order, covering the plan
    from tile 0; a gap ends it there as a cancelled run would).  ``before_s``: seconds spent
    on it before this call (planning, tiles); ``tiles_wall_s``: the tiles' wall-clock time
    when they ran in parallel parts (default: the parts' own times added)."""
    from PIL import Image

    from ..outputs import replace_earlier_run, written_beside
    from .heatmap_io import write_heatmaps
    from .reader import open_slide
    from .tiling import read_tiles, stitch_tiles

    t_start = time.perf_counter()
    model, card, device = fn.model, fn.card, str(fn.device)
    spec, plan, tissue = sp.spec, sp.plan, sp.tissue
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    replace_earlier_run(out_dir)  # an earlier run's results.json must not describe these files
    stem = _safe(stem)
    warns = list(sp.warnings)
    parts = sorted(parts, key=lambda p: p.start)
    got, ood, at = [], [], 0
    for p in parts:  # contiguous from tile 0; a part cancelled half-way ends the run there
        if p.start != at:
            break
        got.append(p.probs)
        if p.ood is not None:
            ood.append(p.ood)
        at += len(p.probs)
        if len(p.probs) < p.n_planned:
            break
    n_classes = len(card.labels)
    probs = np.concatenate(got).astype(np.float32) if got else np.zeros((0, n_classes), np.float32)
    fn.ood_scores = ood
    with open_slide(sp.path) as slide:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # recorded in result.warnings
            res = stitch_tiles(slide, plan, probs, list(card.labels), max(top_k, 1), list(plan.warnings))
        res.read_s = sum(p.read_s for p in parts)
        res.model_s = sum(p.model_s for p in parts)
        res.elapsed_s = tiles_wall_s if tiles_wall_s is not None else sum(p.elapsed_s for p in parts)
        warns += [w for w in res.warnings if w not in warns]
        files = {}
        ext = ".npz" if heatmap_format == "npz" else ".tif"
        written = write_heatmaps(res, out_dir / f"{stem}_heatmaps{ext}", overview_png=True, slide=slide)
        files["heatmaps"] = os.path.basename(written[0])
        files["overview_png"] = os.path.basename(written[1])
        tm = f"{stem}_tissue_mask.png"
        with written_beside(out_dir / tm) as tmp:  # every file so: never through a planted link
            Image.fromarray((tissue.mask > 0).astype(np.uint8) * 255).save(tmp)
        files["tissue_mask_png"] = tm
        # Per-class probability maps as PNG (one heat-map pixel per tile).
        from ..colormaps import DEFAULT_HEAT_COLORMAP, apply_colormap

        per_class_png = {}
        for i, lab in enumerate(res.class_names):
            h = res.heatmaps[i]
            rgb = apply_colormap(np.nan_to_num(h, nan=0.0), DEFAULT_HEAT_COLORMAP)
            rgb[~np.isfinite(h)] = 255
            f = f"{stem}_heat_{_safe(lab)}.png"
            with written_beside(out_dir / f) as tmp:
                Image.fromarray(rgb).save(tmp)
            per_class_png[lab] = f
        files["heatmap_png"] = per_class_png

        top_items = {}
        explain_s = 0.0
        for lab, tops in res.top_tiles.items():
            items = []
            for rank, tt in enumerate(tops[:top_k]):
                idx = _tile_index(res.plan, tt.row, tt.col)
                tile = read_tiles(slide, res.plan, [idx])[0]
                d = tt.to_dict()
                d["rank"] = rank + 1
                d["tissue_fraction"] = round(float(res.plan.tissue_fraction[idx]), 4)
                tf = f"{stem}_top_{_safe(lab)}_{rank + 1}.png"
                with written_beside(out_dir / tf) as tmp:
                    Image.fromarray(tile).save(tmp)
                d["tile_png"] = tf
                if explain:
                    te = time.perf_counter()
                    g = gradcam_tile(model, tile, lab, device)
                    explain_s += time.perf_counter() - te
                    gf = f"{stem}_top_{_safe(lab)}_{rank + 1}_gradcam.png"
                    from ..inference.results import overlay_png

                    overlay_png(tile, out_dir / gf, heat_slice=g["heatmap"])
                    with written_beside(out_dir / gf.replace(".png", ".npy")) as tmp:
                        np.save(tmp, g["heatmap"].astype(np.float32))
                    d["gradcam_png"] = gf
                    d["gradcam_npy"] = gf.replace(".png", ".npy")
                    d["image_path_probability"] = round(g["probability"], 6)
                items.append(d)
            top_items[lab] = items

        tissue_area = tissue.area_mm2 if slide.mpp is not None else tissue.area_px
        probs = res.probs
        frac = res.tissue_fraction.astype(np.float64)
        mean_p = ({lab: round(float(np.average(probs[:, i], weights=frac)), 6)
                   for i, lab in enumerate(res.class_names)} if len(probs) and frac.sum() > 0 else {})
        total = sum(res.areas.values())
        item = {
            "kind": "slide", "source": str(sp.path), "model": card.id, "model_version": card.version,
            "task": card.task, "labels": list(card.labels),
            "slide": {"format": slide.format, "backend": slide.backend, "vendor": slide.vendor,
                      "dimensions": list(slide.dimensions), "level_count": slide.level_count,
                      "level_downsamples": [round(float(v), 6) for v in slide.level_downsamples],
                      "mpp": list(slide.mpp) if slide.mpp else None,
                      "objective_power": slide.objective_power},
            "tiling": {"tile_px": res.plan.tile_px, "tile_mpp": res.mpp, "model_mpp": spec["mpp"],
                       "model_mpp_is_assumption": spec["mpp_is_assumption"],
                       "level": res.plan.level, "downsample": [float(v) for v in res.plan.downsample],
                       "tissue_threshold": spec["tissue_threshold"], "n_grid_tiles": res.plan.n_grid_tiles,
                       "n_tissue_tiles": len(res.plan), "n_tiles_run": res.n_tiles,
                       "batch_size": batch_size, "tiles_per_s": round(res.tiles_per_s, 2),
                       "parts": len(parts), "workers": len({p.worker for p in parts})},
            "heatmap_grid": {"shape": [int(v) for v in res.heatmaps.shape],
                             "downsample": [float(v) for v in res.downsample],
                             "origin": [float(v) for v in res.origin],
                             "note": "heat-map pixel (row, col) covers level-0 x in origin_x + col*downsample_x "
                                     "+ [0, downsample_x), y likewise; NaN where no tile ran"},
            "tissue": {"area": round(float(tissue_area), 6) if tissue_area is not None else None,
                       "unit": "mm2" if slide.mpp is not None else "px",
                       "fraction_of_slide": round(float(tissue.fraction), 6),
                       "mask_downsample": [float(v) for v in tissue.downsample]},
            "area_unit": res.area_unit,
            "area_analysed": round(float(total), 6),
            "areas": {k: round(float(v), 6) for k, v in res.areas.items()},
            "area_fraction": {k: round(float(v / total), 6) if total > 0 else 0.0 for k, v in res.areas.items()},
            "mean_probabilities": mean_p,
            "top_tiles": top_items,
            "files": files,
            "key_images": [files["overview_png"]],
            "heatmaps": [],
            "device": device, "precision": "fp32", "cancelled": bool(res.cancelled),
            "timings_s": {"tissue_s": round(sp.tissue_s, 3), "tiles_s": round(res.elapsed_s, 3),
                          "read_s": round(res.read_s, 3), "model_s": round(res.model_s, 3),
                          "explain_s": round(explain_s, 3),
                          "total_s": round(before_s + time.perf_counter() - t_start, 3)},
            "warnings": list(dict.fromkeys(warns)),
            "ood": fn.ood_summary(),
        }
        if item["ood"]["flagged"]:
            item["warnings"].append("outside what this model was trained on: "
                                    + "; ".join(item["ood"]["reasons"]))
        if not res.cancelled:  # issue 18: one prediction-log row + the audit's model.run event
            from ..monitoring.slide_log import record_slide_run

            record_slide_run(
                model, sp.path, res, ood=item["ood"], run_s=item["timings_s"]["total_s"], device=item["device"],
                n_warnings=len(item["warnings"]), vendor=slide.vendor)
    return item


def gradcam_tile(model, tile: np.ndarray, label: str, device: str = "cpu") -> dict:
    """Grad-CAM of one RGB uint8 tile for ``label`` through the image pipeline
    (:func:`run_model` with the shared Captum code).  Returns the heat map on the tile grid
    and the probability of ``label`` that the image path gives."""
    from ..explain.methods import ExplainConfig
    from ..inference.pipelines import RunOptions, run_model
    from ..volume import Volume

    vol = Volume(array=np.ascontiguousarray(tile)[None], spacing=(1.0, 1.0, 1.0), modality="", units="",
                 photometric="RGB", has_geometry=False, description="slide tile")
    opts = RunOptions(device=device, explain=ExplainConfig("gradcam", faithfulness=False),
                      explain_labels=[label])
    r = run_model(model, vol, opts)
    return {"heatmap": r.heatmaps[0].array[0], "probability": float(r.probabilities[label])}
