"""Where a classifier's heat map falls: the fraction of its positive attribution inside
structures found by a segmentation model (e.g. "is the pneumonia heat map inside the lungs?").

A classifier card opts in with ``"explanation_region": {"model": "cxr-lung-seg", "labels":
["right_lung", "left_lung"], "name": "lungs"}`` (see docs/model_card.md).  When such a
classifier ran with an explanation, :class:`RegionExplainer` runs the named segmenter on the
same volume and records on the result (``res.explanation_region``, docs/results_schema.md):

* ``fraction_inside``: sum of the positive attribution inside the region / the total positive
  attribution (NaN ignored), for the first heat map (all heat maps in
  ``fraction_inside_by_heatmap``);
* ``region_fraction_of_image``: the share of the pixels that the region covers, i.e. what a
  heat map spread evenly over the image would score (the chance level);
* ``areas`` of each structure (mm² with a known pixel spacing, else pixels) and the
  ``spacing_source`` they rest on (``Volume.spacing_source``; "none" for pixels);
* ``largest_piece_share`` per structure: a warning when a structure falls apart into pieces
  (the segmenter failed on this image, e.g. a lung model on an infant's opaque film).

The region mask is kept as ``res.region_map`` (label value = position in ``labels`` + 1) so
that callers can write or show it.  A missing or failing segmenter never fails the
classification: the reason goes to the item's warnings and ``explanation_region.error``.

No Qt here (the engine never imports the UI).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)


def positive_fraction_inside(heat: np.ndarray, mask: np.ndarray) -> float | None:
    """Sum of the positive values of ``heat`` inside ``mask`` / sum of all positive values.

    NaN (not computed) counts as 0.  None when the heat map has no positive value.
    """
    h = np.asarray(heat, np.float64)
    m = np.asarray(mask, bool)
    if h.shape != m.shape:
        raise ValueError(f"heat map {h.shape} and region {m.shape} are on different grids")
    pos = np.clip(np.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    total = float(pos.sum())
    if total <= 0.0:
        return None
    return float(pos[m].sum() / total)


FRAGMENTED_BELOW = 0.8  # largest connected piece / whole structure: below this, warn


def largest_piece_share(mask: np.ndarray) -> float | None:
    """Share of a [k, j, i] mask in the largest 8-connected piece of each slice (a lung is one
    piece; a segmenter that fails scatters it).  None for an empty mask."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    total = int(m.sum())
    if total == 0:
        return None
    big = 0
    for sl in m.reshape((-1,) + m.shape[-2:]):
        lab, n = ndimage.label(sl, structure=np.ones((3, 3), bool))
        if n:
            big += int(np.bincount(lab.ravel())[1:].max())
    return big / total


def _areas(seg_res, labels: list[str]) -> tuple[dict, str]:
    if getattr(seg_res, "volume_ml", None):
        src, unit = seg_res.volume_ml, "mL"
    elif getattr(seg_res, "area_mm2", None):
        src, unit = seg_res.area_mm2, "mm2"
    else:
        src, unit = (seg_res.area_px or seg_res.voxel_counts), "px"
    return {lab: src.get(lab, 0) for lab in labels}, unit


class RegionExplainer:
    """Runs a classifier card's ``explanation_region`` segmenter and measures the heat maps.

    ``load(card) -> LoadedModel`` loads (and sha256-verifies) the segmenter; the default is
    :func:`imaging_assist.models.loaders.load_model`, once, cached on this object (the CLI
    reuses one explainer for every item; the UI passes its own model cache).
    ``registry``: where the segmenter is looked up (default: the user's model registry).
    """

    def __init__(self, card, registry=None, load: Callable | None = None, device: str | None = None):
        self.card = card
        self.spec = getattr(card, "explanation_region", None)
        self._registry = registry
        self._load = load
        self.device = device
        self._model = None
        self._error: str | None = None

    @property
    def active(self) -> bool:
        return self.spec is not None

    def _segmenter(self):
        if self._model is not None:
            return self._model
        if self._error is not None:
            raise UserError(self._error)
        spec = self.spec
        try:
            reg = self._registry
            if reg is None:
                from ..models.registry import Registry

                reg = Registry()
            entry = next((e for e in reg.entries() if e.card is not None and e.card.id == spec.model
                          and e.shadowed_by is None), None)
            if entry is None:
                raise UserError(f"segmentation model {spec.model} is not installed (see "
                                "`imaging-assist models list`)")
            seg_card = entry.card
            if seg_card.task != "segmentation":
                raise UserError(f"model {spec.model} is a {seg_card.task} model, not a segmenter")
            missing = [lab for lab in spec.labels if lab not in seg_card.labels[1:]]
            if missing:
                raise UserError(f"model {spec.model} has no structure {', '.join(missing)} (its labels: "
                                f"{', '.join(seg_card.labels[1:])})")
            if self._load is not None:
                model = self._load(seg_card)
            else:
                from ..models.loaders import load_model

                model = load_model(seg_card, "cpu")
        except UserError as e:
            self._error = str(e)
            raise
        self._model = model
        return model

    def apply(self, res, volume, progress=None) -> dict | None:
        """Measure ``res``'s heat maps against the region; sets and returns
        ``res.explanation_region`` (None when the card has no region or nothing was explained).

        Cancellation (``jobs.Cancelled``) propagates; every other failure becomes a warning.
        """
        if self.spec is None or not getattr(res, "heatmaps", None):
            return None
        from ..inference.jobs import Cancelled

        spec = self.spec
        out = {"name": spec.name, "model": spec.model, "labels": list(spec.labels)}
        try:
            out.update(self._measure(res, volume, progress))
        except Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - the classification stands; say why there is no region
            if not isinstance(e, UserError):
                log.debug("explanation region failed", exc_info=True)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            msg = first if isinstance(e, UserError) else f"{type(e).__name__}: {first}"
            out.update({"fraction_inside": None, "error": msg})
            res.warnings.append(f"heat map inside the {spec.name} not measured: {msg}")
            res.region_map = None
        res.explanation_region = out
        return out

    def _measure(self, res, volume, progress) -> dict:
        from ..inference.pipelines import RunOptions, run_model

        spec = self.spec
        model = self._segmenter()
        seg = run_model(model, volume, RunOptions(device=self.device), progress=progress)
        lm = np.asarray(seg.label_map)
        region_map = np.zeros(lm.shape, np.uint8)
        for n, lab in enumerate(spec.labels):
            region_map[lm == model.card.labels.index(lab)] = n + 1
        mask = region_map > 0
        fractions = {}
        for hm in res.heatmaps:
            if hm.array.shape != mask.shape:
                raise UserError(f"heat map of {hm.label} {hm.array.shape} and the {spec.name} "
                                f"{mask.shape} are on different grids")
            fractions.setdefault(hm.label, positive_fraction_inside(hm.array, mask))
        first = res.heatmaps[0].label
        areas, unit = _areas(seg, spec.labels)
        own = set(res.warnings)
        d = {"model_version": model.card.version,
             "heatmap": first,
             "fraction_inside": None if fractions[first] is None else round(fractions[first], 6),
             "fraction_inside_by_heatmap": {k: None if v is None else round(v, 6) for k, v in fractions.items()},
             "region_fraction_of_image": round(float(mask.mean()), 6),
             "areas": areas, "area_unit": unit,
             "spacing_source": getattr(seg, "spacing_source", "none") if unit != "px" else "none",
             # the segmenter's own notes (those the classifier did not already give), named as
             # the segmenter's: "outside what this model was trained on" must not read as if it
             # were said of the classifier
             "warnings": [f"{model.card.id} (region): {w}" for w in seg.warnings
                          if w not in own and "is assumed" not in w]}
        from ..inference.quality import region_quality

        # the segmenter card's checks on the region, here (not only in analyze's results.json):
        # the viewer's region line and heat-map flags read this dict too, and said a share inside
        # slivers of lungs as if it meant something
        d["quality"], failed = region_quality(region_map, {"name": spec.name, "model": model.card.id,
                                                           "labels": list(spec.labels)}, model.card)
        if d["quality"] is None:
            del d["quality"]
        if failed:
            d["warnings"].append(failed)
            res.warnings.append(failed)
        if fractions[first] is None:
            res.warnings.append(f"the {first} heat map has no positive attribution: its share inside "
                                f"the {spec.name} is undefined")
        shares = {lab: largest_piece_share(region_map == n + 1) for n, lab in enumerate(spec.labels)}
        d["largest_piece_share"] = {k: None if v is None else round(v, 4) for k, v in shares.items()}
        broken = [f"{k} {100 * v:.0f}%" for k, v in shares.items() if v is not None and v < FRAGMENTED_BELOW]
        if broken:
            res.warnings.append(f"the {spec.name} mask of {model.card.id} is fragmented (largest piece: "
                                f"{', '.join(broken)} of the structure): the segmentation looks unreliable on "
                                f"this image, and so does the heat-map share inside the {spec.name}")
        missing = [lab for lab in spec.labels if not areas.get(lab)]
        if missing:
            res.warnings.append(f"{model.card.id} found no {', '.join(missing)} on this image: the "
                                f"{spec.name} region is incomplete")
        res.region_map = region_map
        return d


def add_explanation_region(res, volume, card, registry=None, load=None, device=None,
                           progress=None) -> dict | None:
    """One-off :meth:`RegionExplainer.apply` (use one RegionExplainer for many images)."""
    return RegionExplainer(card, registry, load, device).apply(res, volume, progress)


def region_text(er: dict | None) -> str | None:
    """One line for people, e.g. "87% of the pneumonia heat map lies inside the lungs (they
    cover 31% of the image); right_lung 12,345 mm², left_lung 11,002 mm²"."""
    if not er:
        return None
    if er.get("error"):
        return f"heat map inside the {er['name']}: not measured ({er['error']})"
    unit = {"mm2": "mm²", "px": "px", "mL": "mL"}.get(er.get("area_unit"), er.get("area_unit", ""))
    areas = ", ".join(f"{k.replace('_', ' ')} {v:,.0f} {unit}" for k, v in (er.get("areas") or {}).items())
    f = er.get("fraction_inside")
    chance = er.get("region_fraction_of_image")
    if f is None:
        head = f"the {er.get('heatmap', '')} heat map has no positive attribution to place"
    else:
        head = (f"{100 * f:.0f}% of the {er.get('heatmap', '')} heat map lies inside the {er['name']}"
                + (f" (they cover {100 * chance:.0f}% of the image)" if chance is not None else ""))
    q = er.get("quality") or {}
    if q.get("checked") and not q.get("passed"):
        head += (f" - NOT MEANINGFUL: the {er['name']} found by {er.get('model', 'the segmenter')} fail "
                 f"its quality checks ({'; '.join(q.get('failures') or [])})")
    # what the segmenter said of this image (outside what it was trained on, ...): the share rests
    # on its mask, and the line read as sure as any other
    said = [w for w in er.get("warnings") or [] if isinstance(w, str)
            and "fail its quality checks" not in w and "QUALITY CHECK FAILED" not in w]  # said just above
    if said:
        head += f" - caution, {'; '.join(said)}"
    return head + (f"; {areas}" if areas else "")
