"""What one analysed nodule is and how it reads (no widgets): the :class:`Nodule` entry of a series,
its list lines (malignancy against the card's threshold, decision withheld when out of
distribution), the Grad-CAM sanity flag, and the series' nodules as a run for the exports.
Used by :mod:`.nodules` (the dock and the layers)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..shared.text import one_line

OOD_TEXT = "outside what this model was trained on"


def study_of(vol) -> dict:
    """What a later comparison needs of the series a nodule was found on."""
    from imaging_assist.nodules.growth import study_facts

    rec = vol.headers[0] if getattr(vol, "headers", None) else None
    get = (lambda kw: str(rec.get(kw) or "")) if rec is not None else (lambda kw: "")
    return dict(study_facts(vol), patient_id=get("PatientID"), study_uid=get("StudyInstanceUID"),
                series_uid=str(getattr(vol, "series_uid", "") or ""),
                series=(vol.description or get("SeriesNumber") or "")[:40])


def series_key(vol) -> str:
    from ..ai.session_runs import series_key as key

    return key(vol)


def _fmt(v, spec: str = ".1f", unit: str = "") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(f):
        return "—"
    return f"{f:{spec}}{unit}"


def bbox(*arrays) -> tuple[slice, slice, slice] | None:
    """The bounding box of the non-zero voxels of any of the arrays (None: all zero)."""
    any_ = None
    for a in arrays:
        if a is None:
            continue
        nz = np.asarray(a) != 0
        any_ = nz if any_ is None else (any_ | nz)
    if any_ is None or not any_.any():
        return None
    box = []
    for ax in range(3):
        other = tuple(x for x in range(3) if x != ax)
        idx = np.flatnonzero(any_.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def heat_flag(result) -> str:
    """Why the nodule's heat map must not be shown as an explanation ("" when it may): the
    engine's own sanity verdict (a warning naming the sanity check, or an explicit field)."""
    for name in ("heatmap_sanity", "explanation_sanity"):  # explicit verdicts, when the engine gives one
        v = getattr(result, name, None)
        if isinstance(v, dict) and v.get("passed") is False:
            return "the heat map failed the weight-randomisation sanity check: hidden"
        if v is False:
            return "the heat map failed the weight-randomisation sanity check: hidden"
    for w in getattr(result, "warnings", None) or []:
        s = str(w).lower()
        if "sanity check" in s and ("fail" in s or "not passed" in s):
            return "the heat map failed the weight-randomisation sanity check: hidden"
        if "heat map" in s and "not meaningful" in s:
            return "the heat map is not meaningful here (" + one_line(w) + "): hidden"
    return ""


@dataclass
class Nodule:
    """One analysed nodule of one series: the engine's result and its crops on the volume grid."""

    number: int                    # its value in the label layer
    result: object                 # imaging_assist.nodules.analysis.NoduleResult
    series: str
    box: tuple                     # slices on the volume grid (k, j, i) holding mask and heat map
    mask: np.ndarray               # bool, the box's shape
    heat: np.ndarray | None        # float32, the box's shape (None: no heat map)
    center_kji: tuple[float, float, float]
    heat_flag: str = ""
    shape: tuple = ()              # the volume grid it was made on
    card: object = None            # the malignancy model's card (exports)
    added_at: float = field(default_factory=time.time)
    facts: dict = field(default_factory=dict)  # study_of(): patient, study, date, thickness, series
    linked_prior: object = None    # the same nodule in a prior study, as the reader linked it (growth)
    overlaps: list = field(default_factory=list)  # what its entry says of masks it shares voxels with (nodule_run)

    @property
    def growth_line(self) -> str:
        g = getattr(self.result, "growth", None)
        if not g:
            return ""
        p = g.get("prior") or {}
        return f"vs {p.get('label')} of {p.get('date')}: {g.get('text')}"

    @property
    def id(self) -> str:
        rid = getattr(self.result, "id", None)
        return str(rid) if rid not in (None, "") else f"N{self.number}"

    def lines(self) -> list[str]:
        """What the list shows, one string per line (what a reader reads)."""
        r = self.result
        out = [f"{self.id}   {_fmt(r.volume_mm3, ',.0f', ' mm³')}   "
               f"{_fmt(r.long_axis_mm)} × {_fmt(r.short_axis_mm, '.1f', ' mm')}",
               f"mean {_fmt(r.mean_hu, '.0f', ' HU')} · {getattr(r, 'density', None) or 'density —'}"]
        out.append(malignancy_text(r))
        if self.growth_line:
            out.append(self.growth_line)
        ood = getattr(r, "ood", None)
        if isinstance(ood, dict) and not ood.get("flagged") and ood.get("score") is None:
            why = "; ".join(str(x) for x in ood.get("reasons") or []) or "no score"
            out.append(f"note: out-of-distribution check {why}")
        return out


def _malignant_entry(r) -> dict | None:
    """The thresholded label of the engine's decision (models.operating_point.decide_item)."""
    dec = getattr(r, "decision", None)
    if not isinstance(dec, dict):
        return None
    labs = dec.get("labels") or []
    return next((x for x in labs if x.get("label") == "malignant"), labs[-1] if labs else None)


def malignancy_text(r) -> str:
    """``malignancy likelihood 0.87 ≥ 0.42 → positive`` or the withheld decision with its reason."""
    p = getattr(r, "p_malignant", None)
    if p is None:
        return "malignancy likelihood: not computed"
    ps = _fmt(p, ".2f")
    thr = getattr(r, "threshold", None)
    dec = getattr(r, "decision", None)
    dec = dec if isinstance(dec, dict) else {}
    ood = getattr(r, "ood", None) or {}
    withheld = (dec.get("withheld_reason") or OOD_TEXT) if dec.get("withheld") else (
        OOD_TEXT if isinstance(ood, dict) and ood.get("flagged") else "")
    if thr is None:
        return f"malignancy likelihood {ps} (no threshold in the model card)"
    t = float(thr)
    from ..ai.model_support import _fmt_prob

    # as many decimals as it takes to read on the threshold's side (0.61996 is not "0.620 < 0.62")
    ps = _fmt_prob(float(p), t) if _finite(p) else ps
    if withheld:
        return f"malignancy likelihood {ps} (threshold {t:g}) · decision withheld: {withheld}"
    x = _malignant_entry(r) or {}
    state = x.get("state") or ("positive" if float(p) >= t else "negative")
    if state == "review":
        state = "above the rule-out threshold: review"
    return f"malignancy likelihood {ps} {'≥' if float(p) >= t else '<'} {t:g} → {state}"


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def operating_point_line(r) -> str:
    """The threshold's measured figures, as the AI panel quotes them (the engine's text: the test
    split's sensitivity and specificity with their intervals)."""
    from imaging_assist.models.operating_point import operating_point_text

    x = _malignant_entry(r) or {}
    return operating_point_text(x.get("operating_point") or {})


_CARD: list = []  # the malignancy model's card, read once (by the worker)


def malignancy_card():
    """The ``ct-nodule-malignancy`` card (threshold, sanity record, export metadata)."""
    if not _CARD:
        from imaging_assist.models.registry import Registry
        from imaging_assist.nodules.analysis import MALIGNANCY_MODEL

        card = Registry().get(MALIGNANCY_MODEL).card
        if card is None:
            return None
        _CARD.append(card)
    return _CARD[0]


def sanity_flag(card) -> str:
    """The malignancy model's recorded Grad-CAM sanity check, as the model runs quote it
    (:func:`imaging_assist.explain.sanity.sanity_warning`): a warning when it failed, a note when
    none was recorded, "" when it passed."""
    from imaging_assist.explain.sanity import recorded_sanity, sanity_warning

    if card is None:
        return ""
    w = sanity_warning(card, "gradcam")
    if w:
        return w
    return "" if "gradcam" in recorded_sanity(card) else "note: no Grad-CAM sanity check recorded for " + card.id


class GuiNoduleRun:
    """The nodules of one series as the exporters take a run (``imaging_assist.nodules.run.
    NoduleRun``'s fields, plus ``to_dict`` for the DICOM plan, which reads items from results)."""

    def __init__(self, nodules, label_map, heatmaps, item):
        self.nodules, self.label_map, self.heatmaps, self.region_map = nodules, label_map, heatmaps, None
        self.item = item

    def to_dict(self) -> dict:
        return dict(self.item)


def nodule_run(vol, nods: list, card) -> GuiNoduleRun:
    """The series' nodules as a run and its results.json item, as ``analyze --at`` writes them
    (:func:`imaging_assist.nodules.run.item_dict`) but without files: the GUI exports take the
    arrays from memory.  Label value n = the n-th nodule of the list; where masks overlap the later
    nodule's value wins and both nodules say so, as ``analyze --at`` does
    (:func:`imaging_assist.nodules.run.paint_labels`): in the item's warnings (report, SR) and in
    each Nodule's ``overlaps`` (its entry)."""
    from imaging_assist.inference.results import HeatMap
    from imaging_assist.nodules.analysis import MALIGNANCY_MODEL
    from imaging_assist.nodules.run import paint_labels, tracking_uid

    shape = tuple(vol.array.shape[:3])
    lm = np.zeros(shape, np.uint8)
    hms = []
    d = {"source": vol.source_paths[0] if vol.source_paths else "", "kind": "series",
         "model": card.id, "model_version": card.version, "task": "nodule",
         "series_uid": vol.series_uid or None, "description": vol.description,
         "has_geometry": bool(vol.has_geometry), "shape": list(vol.shape),
         "spacing_mm": [float(x) for x in vol.spacing], "labels": {"0": "background"},
         "nodules": [], "heatmaps": [], "key_images": [], "warnings": list(dict.fromkeys(vol.warnings))}
    labelled = nods[:255]
    overlaps = paint_labels(lm, [(n.result.id, n.box, n.mask) for n in labelled])
    for v, (n, said) in enumerate(zip(labelled, overlaps), 1):
        r = n.result
        n.overlaps = said
        d["labels"][str(v)] = f"nodule {r.id}"
        nd = r.to_dict()
        nd["warnings"] += said
        nd.update(label_value=v, tracking_uid=tracking_uid(vol.series_uid, r.id, r.center_lps),
                  key_slice=int((r.measurements or {}).get("largest_slice", round(n.center_kji[0]))))
        d["nodules"].append(nd)
        if n.heat is not None:
            full = np.zeros(shape, np.float32)  # the engine's grid, rebuilt from the kept box
            full[n.box] = n.heat
            hm = HeatMap(label=f"malignant {r.id}", method="gradcam", array=full,
                         params={"model": MALIGNANCY_MODEL, "nodule": r.id},
                         warnings=[w for w in r.warnings if "sanity check" in str(w).lower()])
            hms.append(hm)
            h = hm.to_dict()
            k = n.box[0].start + int(np.argmax(n.heat.reshape(n.heat.shape[0], -1).max(1))) \
                if n.heat is not None else int(round(n.center_kji[0]))
            h.update(key_slice=k, nodule=r.id)
            d["heatmaps"].append(h)
    return GuiNoduleRun([n.result for n in nods], lm, hms, d)
