"""Click to result: one nodule at a point in patient coordinates (no Qt).

:func:`analyze_at` is what the viewer (Shift+click in any MPR plane), ``imaging-assist analyze
--at/--points``, the demo and ``scripts/bench_nodule.py`` call.  Steps:

1. **Gating** (the rules of every other model, :func:`imaging_assist.models.matching.match_card`
   on the loaded volume): the nodule models' cards ask for a 3D CT in Hounsfield units; anything
   else is refused with the card's reason (``found=False``, ``reason`` says why).
2. The point must lie inside the series (within its voxels' footprint).
3. The models' window (:func:`imaging_assist.nodules.window.cut_window`: a 32 mm cube at 1 mm,
   the same code path as training) is cut around the point; ``segment`` gives the nodule
   probability on it.
4. **Is there a nodule at this point?**  Rule (tested in tests/test_nodule_workflow.py):
   voxels with probability >= 0.5 form 26-connected components; the nodule is the component that
   comes within 5 mm of the point, the one with the most probability mass when several do
   (:func:`imaging_assist.nodules.models.nodule_mask`, the rule the models' own tests use).
   ``found=False`` with the reason when there is none, when the point lies in air outside the
   body and the component does not reach it (:func:`outside_air`: the body wall beside a click
   in the air would otherwise be outlined as a "nodule"), when it is smaller than a
   3 mm sphere (:data:`MIN_VOLUME_MM3`; the models cover nodules >= 3 mm), when its mean
   density is that of aerated lung or air (< :data:`MIN_MEAN_HU`), or when it is more elongated
   than 99.5 % of the LIDC nodules (:data:`MAX_ELONGATION`: a vessel, which the segmenter
   outlines at times; above the 95th percentile a warning), or (after step 5's measurement) when
   its long axis on the slice of largest area exceeds :data:`MAX_AXIS_RATIO` times its short axis
   (beyond every LIDC nodule: a vessel cut lengthwise).  A mask is never made up:
   without a component there is no mask, no measurement and no malignancy likelihood.
   The window is then cut again around the nodule's centre *snapped to the nearest voxel centre
   of the series* and segmented again (the same rule); both models work on that window.  Clicks
   anywhere inside the nodule, from any plane, give nodule centres that snap to the same voxel
   (or a neighbour), so the same window on the same source samples and the same result (tested:
   Dice >= 0.95 between planes); the malignancy model sees the nodule centred, as in training.
5. The component goes back onto the series' own grid (the card's ``source_grid``: its probability
   mapped trilinearly and thresholded there, :func:`.models.source_mask`) and is measured there
   (:mod:`imaging_assist.nodules.measure`: volume, Fleischner long/short axis, mean HU, density).
6. ``malignancy`` (with 3D Grad-CAM when ``explain``) and ``ood`` on the same window.  The
   likelihood is compared with the card's threshold (:func:`imaging_assist.models.operating_point.decide_item`,
   the independent test split's figures quoted); the decision is withheld when the window is
   flagged out of distribution, or when the segmenter's mean probability inside the nodule is
   below the card's ``min_confidence`` (:func:`imaging_assist.nodules.models.min_confidence`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

SEG_MODEL = "ct-nodule-seg"
MALIGNANCY_MODEL = "ct-nodule-malignancy"
SEG_THRESHOLD = 0.5  # as models.PROB_THRESHOLD
MIN_VOLUME_MM3 = math.pi / 6 * 3.0 ** 3  # a 3 mm sphere (14.1 mm³)
MIN_MEAN_HU = -850.0  # a "nodule" this dark is aerated lung or air
# Elongation = largest / smallest principal standard deviation of the segmented voxels (mm).
# On the 869 LIDC nodule masks (scripts/check_nodule_shape.py): median 1.53, 95th percentile 2.39,
# 99.5th 3.54.  Above MAX_ELONGATION the structure is refused (a vessel or airway wall, which the
# segmenter outlines at times); above WARN_ELONGATION a warning.
MAX_ELONGATION = 3.5
WARN_ELONGATION = 2.4
# Axis ratio = long / short axis diameter on the slice of largest area (the Fleischner diameters
# measure() gives).  On the 869 LIDC nodule masks (scripts/check_nodule_shape.py): median 1.29,
# 95th percentile 1.88, 99th 2.35, largest 2.61.  A vessel cut lengthwise by the slice outlines a
# long narrow shape that the 3D elongation can miss when its branches spread through the window
# (measured on the LIDC-IDRI-0001 slab: scripts/check_nodule_clicks.py); above MAX_AXIS_RATIO
# (beyond every LIDC nodule) it is refused, above WARN_AXIS_RATIO a warning.
MAX_AXIS_RATIO = 2.7
WARN_AXIS_RATIO = 1.9
NOT_FOUND = "no nodule found at this point"
# A click in air outside the body (:func:`outside_air`): every voxel within AIR_BALL_MM of it is
# below AIR_HU (air is about -1000 HU; aerated lung about -850), and the body outline (tissue above
# BODY_HU, holes filled, so the lungs and airways are inside) does not enclose it.
AIR_HU = -900.0
AIR_BALL_MM = 2.0
BODY_HU = -500.0


@dataclass
class NoduleResult:
    """One nodule (or one click that found none).  Arrays are on the volume's [k, j, i] grid."""
    id: str
    point_lps: list
    center_lps: list | None = None
    found: bool = False
    reason: str = ""
    mask: np.ndarray | None = None  # bool
    heatmap: np.ndarray | None = None  # float32 0..1 (Grad-CAM of the malignancy model)
    volume_mm3: float | None = None
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    mean_hu: float | None = None
    density: str = ""
    p_malignant: float | None = None
    threshold: float | None = None
    decision: dict | None = None
    ood: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)  # measure.Measurements.to_dict()
    models: dict = field(default_factory=dict)  # id -> version of the models that ran
    window_center_lps: list | None = None  # centre of the models' window (the click, or the nodule's centre)
    growth: dict | None = None  # against the same nodule in a prior study (nodules.growth.Growth.to_dict), when linked

    def to_dict(self) -> dict:
        """The ``nodules[]`` entry of results.json (docs/results_schema.md); no arrays."""
        r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
        d = {"id": self.id, "point_lps": [r(v) for v in self.point_lps],
             "center_lps": None if self.center_lps is None else [r(v) for v in self.center_lps],
             "found": bool(self.found), "reason": self.reason,
             "volume_mm3": r(self.volume_mm3), "long_axis_mm": r(self.long_axis_mm),
             "short_axis_mm": r(self.short_axis_mm), "mean_hu": r(self.mean_hu),
             "density": self.density,
             # unrounded: a probability rounded to 4 decimals can cross its threshold (0.17216
             # stored as 0.1722 under a 0.1722 threshold reads "positive" in the SR and the report)
             "p_malignant": None if self.p_malignant is None else float(self.p_malignant),
             "threshold": None if self.threshold is None else float(self.threshold),
             "decision": self.decision, "ood": self.ood, "warnings": list(self.warnings),
             "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
             "models": dict(self.models),
             "window_center_lps": None if self.window_center_lps is None else [r(v) for v in self.window_center_lps]}
        if self.growth:
            d["growth"] = dict(self.growth)
        if self.measurements:
            m = self.measurements
            d["measurements"] = {k: m[k] for k in ("n_voxels", "largest_slice", "largest_area_mm2",
                                                   "solid_share", "long_axis_ends_lps",
                                                   "short_axis_ends_lps") if k in m}
        return d

    @property
    def text(self) -> str:
        """One line for the CLI and the panel."""
        if not self.found:
            return f"{self.id}: {self.reason}"
        s = (f"{self.id}: {self.volume_mm3:.0f} mm³, {self.long_axis_mm:.1f} x {self.short_axis_mm:.1f} mm"
             f"{', mean ' + format(self.mean_hu, '.0f') + ' HU' if self.mean_hu is not None else ''}"
             f"{', ' + self.density if self.density else ''}")
        if self.p_malignant is not None:
            from ..models.operating_point import format_probability

            withheld = bool(self.decision and self.decision.get("withheld"))
            s += f"; malignant {format_probability(self.p_malignant, None if withheld else self.threshold)}"
            if withheld:
                s += f", decision withheld: {self.decision.get('withheld_reason')}"
            elif self.threshold is not None:
                from ..models.operating_point import label_state

                # the engine's decision (review: above the rule-out threshold, benign still more
                # likely), never "positive" recomputed from the probability
                x = label_state(self.decision, "malignant")
                state = x["state"] if x else ("positive" if self.p_malignant >= self.threshold else "negative")
                s += (f" {'>=' if state in ('positive', 'review') else '<'} threshold {self.threshold:g}: {state}"
                      + (" (benign more likely)" if state == "review" else ""))
                s += " (the LIDC readers' majority opinion, not pathology)"
        return s


def _cards():
    """The two models' cards, from the models as loaded (once per process, sha256 checked)."""
    from . import models as nm

    return [nm.load(SEG_MODEL).card, nm.load(MALIGNANCY_MODEL).card]


def _inside(volume, point) -> bool:
    ijk = np.linalg.solve(np.asarray(volume.affine, float), np.r_[np.asarray(point, float), 1.0])[:3]
    n = np.array([volume.shape[2], volume.shape[1], volume.shape[0]], float)
    return bool(np.all(ijk >= -0.5) and np.all(ijk <= n - 0.5))


def elongation(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Largest / smallest principal standard deviation (mm) of a mask's voxels, each voxel
    counted as a uniform box (variance + spacing²/12 per axis, so a one-voxel-thick shape is
    not infinitely elongated).  ``spacing``: (x, y, z) mm of the mask's [z, y, x] axes."""
    idx = np.argwhere(np.asarray(mask, bool)).astype(np.float64)
    if len(idx) < 2:
        return 1.0
    sp = np.array([spacing[2], spacing[1], spacing[0]], float)
    cov = np.cov((idx * sp).T) + np.diag(sp ** 2 / 12.0)
    ev = np.linalg.eigvalsh(cov)
    return float(np.sqrt(ev[-1] / max(ev[0], 1e-12)))


# The "is it a nodule" rules below return (reason, warning): ``reason`` (the click's "no nodule
# found ..." line) refuses, else ``warning`` (or None) goes with the result.  One code path for
# analyze_at and the segmenter's training script, which measures how often a click beside a
# vessel passes them (the card's false_nodule_rate).
def shape_refusal(comp: np.ndarray, win) -> tuple[str | None, str | None]:
    """The rules on the component ``comp`` of the models' window ``win``: smaller than a 3 mm
    sphere, aerated-lung density, more elongated than 99.5 % of LIDC nodules (refused); more than
    95 % of them (warning)."""
    vol_w = float(np.count_nonzero(comp)) * float(np.prod(win.spacing))
    if vol_w < MIN_VOLUME_MM3:
        return (f"{NOT_FOUND}: the segmented region is {vol_w:.1f} mm³, smaller than a 3 mm nodule "
                f"({MIN_VOLUME_MM3:.1f} mm³); the models cover nodules >= 3 mm"), None
    hu_w = float(win.image[comp].mean())
    if hu_w < MIN_MEAN_HU:
        return (f"{NOT_FOUND}: the segmented region's mean density is {hu_w:.0f} HU "
                f"(aerated lung or air, below {MIN_MEAN_HU:.0f} HU)"), None
    elong = elongation(comp, win.spacing)
    if elong > MAX_ELONGATION:
        return (f"{NOT_FOUND}: the segmented structure is elongated ({elong:.1f}:1, more than 99.5 % "
                "of LIDC nodules): a vessel or airway wall rather than a nodule"), None
    if elong > WARN_ELONGATION:
        return None, (f"the segmented structure is elongated ({elong:.1f}:1; 5 % of LIDC nodules are "
                      "this elongated): it may be a vessel, check the mask")
    return None, None


def axis_refusal(long_mm: float, short_mm: float) -> tuple[str | None, str | None]:
    """The rule on a mask whose slice of largest area measures ``long_mm`` x ``short_mm``: longer
    than wide beyond every LIDC nodule (refused), beyond 95 % of them (warning)."""
    ratio = long_mm / short_mm if short_mm > 0 else math.inf
    if ratio > MAX_AXIS_RATIO:
        return (f"{NOT_FOUND}: on its slice of largest area the segmented structure is {ratio:.1f} times "
                f"longer than wide ({long_mm:.1f} x {short_mm:.1f} mm; no LIDC nodule is more than "
                f"{MAX_AXIS_RATIO:g}): a vessel rather than a nodule"), None
    if ratio > WARN_AXIS_RATIO:
        return None, (f"on its slice of largest area the segmented structure is {ratio:.1f} times longer "
                      "than wide (5 % of LIDC nodules are): it may be a vessel, check the mask")
    return None, None


def _refused(res: NoduleResult, verdict: tuple[str | None, str | None], t0: float) -> bool:
    """Apply a rule's (reason, warning) to ``res``; True when it refused."""
    reason, warning = verdict
    if reason:
        res.reason = reason
        res.timings["total_s"] = time.perf_counter() - t0
        return True
    if warning:
        res.warnings.append(warning)
    return False


def outside_air(volume, win, comp: np.ndarray) -> bool:
    """Whether the point at the centre of the models' window ``win`` lies in air outside the body,
    and the component ``comp`` found for it (:func:`.models.nodule_mask`) does not reach it: every
    window voxel within :data:`AIR_BALL_MM` of the point is below :data:`AIR_HU`, ``comp`` holds
    none of the voxels around the point, and on the series' slice nearest to it the point is
    outside the body outline (tissue above :data:`BODY_HU`, holes filled).  What the segmenter
    outlines for such a click is the body wall beside it, not a nodule at the point."""
    from scipy import ndimage

    from .window import MODEL_SPACING_MM, WINDOW_SIZE

    off = (np.arange(WINDOW_SIZE) - (WINDOW_SIZE - 1) / 2.0) * MODEL_SPACING_MM
    d2 = off[:, None, None] ** 2 + off[None, :, None] ** 2 + off[None, None, :] ** 2
    ball = (d2 <= AIR_BALL_MM ** 2) & np.asarray(win.valid, bool)
    if not ball.any() or not bool(np.all(np.asarray(win.image)[ball] < AIR_HU)):
        return False
    if np.asarray(comp, bool)[d2 <= 0.75 * MODEL_SPACING_MM ** 2 + 1e-9].any():  # the voxels next to the point
        return False
    ijk = np.linalg.solve(np.asarray(volume.affine, float), np.r_[np.asarray(win.center_lps, float), 1.0])[:3]
    i, j, k = (int(x) for x in np.clip(np.rint(ijk), 0, np.array([volume.shape[2], volume.shape[1],
                                                                   volume.shape[0]]) - 1))
    body = ndimage.binary_fill_holes(np.asarray(volume.array[k], np.float32) > BODY_HU)
    return not bool(body[j, i])


def nearest_mm(prob: np.ndarray, window_affine: np.ndarray, point_lps,
               threshold: float = SEG_THRESHOLD) -> float:
    """Distance (mm) from the point to the nearest voxel the segmenter marks (inf: none)."""
    idx = np.argwhere(np.asarray(prob) >= threshold)
    if not len(idx):
        return float("inf")
    a = np.asarray(window_affine, float)
    lps = idx[:, ::-1] @ a[:3, :3].T + a[:3, 3]
    return float(np.min(np.linalg.norm(lps - np.asarray(point_lps, float)[None, :], axis=1)))


def analyze_at(volume, point_lps, nodule_id: str | None = None, explain: bool = True) -> NoduleResult:
    """Segment, measure and characterise the nodule at ``point_lps`` (patient LPS mm) of a CT
    ``volume``.  Never raises for a click that finds nothing: ``found=False`` with ``reason``.
    Raises ``UserError`` (one line) when the nodule models are missing or fail their checks."""
    from ..models.matching import match_card, series_facts
    from . import models as nm
    from .measure import measure
    from .window import WINDOW_SIZE, WindowError, check_volume, cut_window, to_source_grid

    t0 = time.perf_counter()
    pt = [float(v) for v in np.asarray(point_lps, float).reshape(-1)]
    res = NoduleResult(id=nodule_id or "N1", point_lps=pt)
    if len(pt) != 3 or not all(math.isfinite(v) for v in pt):
        res.reason = f"the point must be three finite LPS coordinates in mm (got {point_lps!r})"
        return res
    seg_card, mal_card = _cards()
    res.models = {seg_card.id: seg_card.version, mal_card.id: mal_card.version}
    for card in (seg_card, mal_card):
        m = match_card(card, series_facts(volume))
        if not m.ok:
            res.reason = f"refused by {card.id}: {m.reason}"
            return res
        res.warnings += [w for w in m.warnings if w not in res.warnings]
    try:
        check_volume(volume)  # first: a degenerate geometry cannot say whether the point is inside
        if not _inside(volume, pt):
            res.reason = "the point lies outside the series"
            return res
        win = cut_window(volume, pt)
    except WindowError as e:
        res.reason = f"refused: {e}"
        return res
    t1 = time.perf_counter()
    prob = np.asarray(nm.segment(win), np.float32)
    comp = np.asarray(nm.nodule_mask(prob, win), bool)
    air = bool(comp.any()) and outside_air(volume, win, comp)
    if comp.any() and not air:
        # Second pass centred on the nodule found: the result no longer depends on where inside
        # the nodule the reader clicked, and the malignancy model sees the nodule centred as in
        # training (crops centred on the nodule, +-4 mm jitter).
        c = np.argwhere(comp).mean(axis=0)  # [z, y, x] window index
        centre = (win.affine @ np.array([c[2], c[1], c[0], 1.0]))[:3]
        ijk = np.rint(np.linalg.solve(np.asarray(volume.affine, float), np.r_[centre, 1.0])[:3])
        ijk = np.clip(ijk, 0, np.array([volume.shape[2], volume.shape[1], volume.shape[0]]) - 1)
        centre = np.asarray(volume.index_to_lps(*ijk), float)  # on the series' voxel grid
        if not np.allclose(centre, pt, atol=1e-6):
            win2 = cut_window(volume, centre)
            prob2 = np.asarray(nm.segment(win2), np.float32)
            comp2 = np.asarray(nm.nodule_mask(prob2, win2), bool)
            if comp2.any():
                win, prob, comp = win2, prob2, comp2
    t2 = time.perf_counter()
    res.timings.update(cut_s=t1 - t0, segment_s=t2 - t1)
    res.window_center_lps = [float(v) for v in win.center_lps]
    if air:
        res.reason = (f"{NOT_FOUND}: the point is in air outside the body (below {AIR_HU:.0f} HU within "
                      f"{AIR_BALL_MM:g} mm of it); the structure the segmenter marks nearby does not reach it")
        res.timings["total_s"] = time.perf_counter() - t0
        return res
    if not comp.any():
        dist = nearest_mm(prob, win.affine, pt)
        far = "" if not math.isfinite(dist) else f" (the nearest segmented voxel is {dist:.1f} mm away)"
        res.reason = f"{NOT_FOUND}: the segmenter marks no nodule within {nm.SEED_RADIUS_MM:g} mm{far}"
        res.timings["total_s"] = time.perf_counter() - t0
        return res
    if _refused(res, shape_refusal(comp, win), t0):
        return res
    edge = np.zeros(comp.shape, bool)
    edge[[0, -1], :, :] = edge[:, [0, -1], :] = edge[:, :, [0, -1]] = True
    if (comp & edge).any():
        res.warnings.append(f"the segmented nodule reaches the edge of the models' {WINDOW_SIZE} mm window "
                            f"({int((comp & edge).sum())} voxels on its faces): the nodule may extend beyond "
                            "it (volume and diameters are then lower bounds), or the segmentation runs into "
                            "neighbouring tissue; check the mask")
    mask = nm.source_mask(prob, comp, win, volume)  # the card's source_grid (models.source_mask)
    t3 = time.perf_counter()
    if not mask.any():
        vol_w = float(np.count_nonzero(comp)) * float(np.prod(win.spacing))
        res.reason = (f"{NOT_FOUND}: the segmented nodule ({vol_w:.0f} mm³) falls between the series' "
                      "voxel centres (slices too thick for it)")
        res.timings["total_s"] = t3 - t0
        return res
    mm = measure(mask, volume)
    if _refused(res, axis_refusal(mm.long_axis_mm, mm.short_axis_mm), t0):
        return res
    t4 = time.perf_counter()
    p, cam = nm.malignancy(win, explain=explain)
    t5 = time.perf_counter()
    ood = nm.ood(win)
    t6 = time.perf_counter()
    res.found, res.reason, res.mask = True, "", mask
    res.center_lps = mm.center_lps
    res.volume_mm3, res.long_axis_mm, res.short_axis_mm = mm.volume_mm3, mm.long_axis_mm, mm.short_axis_mm
    res.mean_hu = mm.mean_hu if math.isfinite(mm.mean_hu) else None
    res.density = mm.density
    res.measurements = mm.to_dict()
    res.warnings += mm.warnings
    res.ood = dict(ood or {})
    outside = bool(res.ood.get("flagged"))
    if outside:
        res.warnings.append(f"{mal_card.id}: this window is outside what the models were trained on "
                            "(decision withheld; the mask and measurements may not describe a nodule)")
    conf, low = nm.confidence(prob, comp), nm.min_confidence()
    res.ood["segmentation_confidence"] = {"mean_probability": round(conf, 4), "threshold": low}
    unsure = low is not None and conf < low
    if unsure:
        # as unsure of this outline as of only a few validation nodules: flagged like an OOD window
        # (decision withheld), with its own reason; clicks on vessels in a whole lung mostly land here
        why = (f"the segmenter is less sure of this outline (mean probability {conf:.2f}) than of all but a "
               f"few validation nodules (threshold {low:.2f}): it may not be a nodule")
        res.ood["flagged"] = True
        res.ood["reasons"] = list(res.ood.get("reasons") or []) + [why]
        res.warnings.append(why + "; decision withheld, check the mask")
    res.p_malignant = float(p)
    from ..models.operating_point import decide_item

    labels = list(mal_card.labels)
    pos = labels[-1] if labels else "malignant"
    probs = {lab: (res.p_malignant if lab == pos else 1.0 - res.p_malignant) for lab in labels} \
        if len(labels) == 2 else {pos: res.p_malignant}
    withheld = "; ".join(w for w, on in (("outside what this model was trained on", outside),
                                          ("the segmenter is unsure this is a nodule", unsure)) if on)
    res.decision = decide_item(mal_card, probs, withheld)
    thr = next((x["threshold"] for x in res.decision.get("labels") or [] if x["label"] == pos), None)
    res.threshold = None if thr is None else float(thr)
    if cam is not None:
        heat = to_source_grid(win, np.asarray(cam, np.float32), volume, order=1)
        top = float(heat.max()) if heat.size else 0.0
        res.heatmap = (np.clip(heat / top, 0.0, 1.0) if top > 0 else heat).astype(np.float32)
    t7 = time.perf_counter()
    res.timings.update(map_back_s=t3 - t2, measure_s=t4 - t3, malignancy_s=t5 - t4, ood_s=t6 - t5,
                       heatmap_s=t7 - t6, total_s=t7 - t0)
    return res
