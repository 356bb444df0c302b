"""Whole-slide runs in the prediction log and the audit trail.

A slide analysis does not pass through ``run_model`` (its tiles go through
``slides.tiling.run_tiles``), so ``slides/analysis.analyze_slide`` (``analyze``, ``batch``) and the
GUI's slide worker call :func:`record_slide_run` once per finished run: one ``runs`` row
(``kind = "slide"``) and the audit trail's ``model.run`` event
(``privacy.audit.record_model_run``), like every other model run.  Never raises.

What the row holds (no pixels, no paths): model id / version / weights sha256; the keyed
pseudonym of the slide file (``privacy.sitekey.pseudonym`` of its resolved path, as for a plain
image; a slide has no patient id here, so it is its own patient key); level-0 size, MPP (as
spacing in mm), vendor; outputs: the tissue-weighted mean probability per class, the tissue
fraction of each class (tiles where it is the top class, by area), tiles with tissue and tiles
run, the heat map's summary (per class: maximum tile probability and the share of run tiles
where it is >= 0.5); the slide OOD summary's score / threshold / flag; run time, device, warnings.
No intensity summary: the tiles are not kept.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np


def slide_outputs(res) -> dict:
    """Class fractions and the heat-map summary of a ``TileResult``."""
    probs = np.asarray(res.probs, np.float64)
    frac = np.asarray(res.tissue_fraction, np.float64)
    names = list(res.class_names)
    mean_p = ({lab: round(float(np.average(probs[:, i], weights=frac)), 6) for i, lab in enumerate(names)}
              if len(probs) and frac.sum() > 0 else {})
    areas = dict(res.areas or {})
    total = float(sum(areas.values()))
    heat = {lab: {"max": round(float(probs[:, i].max()), 6) if len(probs) else None,
                  "share_tiles_ge_0_5": round(float((probs[:, i] >= 0.5).mean()), 6) if len(probs) else None}
            for i, lab in enumerate(names)}
    return {"mean_probabilities": mean_p,
            "area_fraction": {k: round(float(v) / total, 6) if total > 0 else 0.0 for k, v in areas.items()},
            "area_unit": res.area_unit, "area_analysed": round(total, 6),
            "n_tissue_tiles": int(len(res.plan)), "n_tiles_run": int(res.n_tiles),
            "heatmap": heat}


class _SlideRun(SimpleNamespace):
    """What ``privacy.audit.record_model_run`` reads of a result, for one slide run."""

    def to_dict(self) -> dict:
        return {"kind": "slide", "model": self.model_id, "outputs": self.outputs, "ood": self.ood}


def record_slide_run(model, path, res, *, ood: dict | None = None, run_s: float | None = None,
                     device: str | None = None, n_warnings: int = 0, vendor: str | None = None,
                     region: bool = False) -> int | None:
    """Log one finished slide run (``res``: ``slides.tiling.TileResult``) and audit it.
    Returns the log row id (None when the log is off or failed); never raises."""
    from ..privacy.audit import record_model_run
    from . import log as plog

    try:
        card = model.card
        out = slide_outputs(res)
        ood = dict(ood or {})
        mean_p = out["mean_probabilities"]
        top = max(mean_p, key=mean_p.get) if mean_p else None
        volume = SimpleNamespace(source_paths=[str(Path(path).resolve())], series_uid="", headers=[], modality="SM")
        run = _SlideRun(model_id=card.id, outputs=out, ood=ood, probabilities=mean_p, decisions={},
                        heatmaps=[], label_map=None, region_map=None, device=device or "",
                        warnings=[None] * int(n_warnings))
    except Exception as e:  # noqa: BLE001 - a logging failure must never break a run
        plog.warn_once(f"the prediction log could not record this slide run ({type(e).__name__}: {e})")
        return None
    record_model_run(model, volume, run)  # never raises (the audit warns itself)
    if not plog.enabled():
        return None
    try:
        key, _ = plog.pseudonyms_of(volume, run)
        w, h = (int(v) for v in res.slide_dimensions)
        mpp = res.slide_mpp
        wt = (getattr(card, "weights", None) or [None])[0]
        t, tu = plog.now_utc()
        from .. import __version__

        row = {"time_utc": t, "time_unix": tu, "model_id": card.id, "model_version": card.version,
               "weights_sha256": getattr(wt, "sha256", None), "task": card.task,
               "input_key": key, "patient_key": key, "kind": "slide_region" if region else "slide",
               "slices": 1, "rows": h, "cols": w, "channels": 3,
               "spacing_x": mpp[0] / 1000.0 if mpp else None, "spacing_y": mpp[1] / 1000.0 if mpp else None,
               "modality": "SM", "manufacturer": vendor or None,
               "ood_score": ood.get("score"), "ood_threshold": ood.get("threshold"),
               "ood_flagged": None if ood.get("score") is None and not ood.get("flagged") else int(bool(ood.get("flagged"))),
               "score": mean_p.get(top) if top else None, "positive": None, "top_label": top,
               "probabilities": plog.to_json(mean_p or None), "decisions": None,
               "areas": plog.to_json({k: out[k] for k in ("area_fraction", "area_unit", "area_analysed",
                                                          "n_tissue_tiles", "n_tiles_run", "heatmap")}),
               "run_s": run_s, "device": device, "precision": "fp32", "n_warnings": int(n_warnings),
               "app_version": __version__}
        return plog.open_log().add_run(row)
    except Exception as e:  # noqa: BLE001
        plog.warn_once(f"the prediction log could not record this slide run ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); runs go on without it")
        return None
