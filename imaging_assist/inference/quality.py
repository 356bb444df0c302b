"""Quality checks of a segmentation, at segmentation time, from the card's ``quality_checks``
(``models/population.py``; documented in ``docs/model_card.md``).

A segmenter that fails on an image it was not made for (``cxr-lung-seg`` on a child's film)
returns slivers that look like a normal result.  These checks say so: the share of the image
the structures cover, the number of pieces of each structure, and the balance of a right and
a left structure.  A failing result is flagged (``quality.passed`` False, a warning), never
dropped: the user sees it and is told why it is not trustworthy.

The result is the ``quality`` field of the results.json item (schema in
``docs/results_schema.md``), read by the CLI, the viewer and the report/SR writers::

    {"checked": true, "passed": false, "failures": ["..."], "measures": {...},
     "checks": {card's quality_checks}, "text": "quality check failed: ..."}

Connected pieces are counted with scipy.ndimage.label (full connectivity) rather than by
hand; a piece smaller than ``min_piece_fraction`` of its structure is not counted (islands of
a few pixels are common and are not what makes a result unusable).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_segmentation", "quality_text", "attach_quality"]


def check_segmentation(label_map, labels, checks) -> dict | None:
    """Run the card's ``quality_checks`` on ``label_map`` (integer array [k, j, i]; value n is
    ``labels[n]``, 0 the background).  None when the card states no checks."""
    if checks is None:
        return None
    from scipy import ndimage

    lm = np.asarray(label_map)
    if lm.ndim == 2:
        lm = lm[None]
    # a stack of 2D images (slice by slice) is judged as a whole; pieces in 3D
    total = int(lm.size)
    fg = [(n, name) for n, name in enumerate(labels) if n > 0]
    areas = {name: int(np.count_nonzero(lm == n)) for n, name in fg}
    measures: dict = {"area_px": dict(areas)}
    failures: list[str] = []
    if checks.area_fraction is not None:
        frac = (sum(areas.values()) / total) if total else 0.0
        measures["area_fraction"] = round(frac, 4)
        lo, hi = checks.area_fraction
        if not lo <= frac <= hi:
            names = " and ".join(name for _, name in fg)
            failures.append(f"{names} cover {frac:.1%} of the image, expected {lo:.0%}-{hi:.0%}")
    if checks.max_pieces_per_label is not None:
        pieces = {}
        struct = np.ones((3,) * lm.ndim, bool)
        for n, name in fg:
            if areas[name] == 0:
                pieces[name] = 0
                continue
            comp, k = ndimage.label(lm == n, structure=struct)
            sizes = np.bincount(comp.ravel())[1:]
            pieces[name] = int(np.count_nonzero(sizes >= checks.min_piece_fraction * areas[name]))
        measures["pieces"] = pieces
        for name, k in pieces.items():
            if k == 0:
                failures.append(f"no {name} found")
            elif k > checks.max_pieces_per_label:
                failures.append(f"{name} is in {k} pieces, expected at most {checks.max_pieces_per_label}")
    if checks.left_right_ratio is not None and checks.ratio_labels is not None:
        a, b = checks.ratio_labels
        lo, hi = checks.left_right_ratio
        if areas.get(a, 0) and areas.get(b, 0):
            r = areas[a] / areas[b]
            measures["left_right_ratio"] = round(r, 4)
            if not lo <= r <= hi:
                failures.append(f"{a}/{b} area ratio {r:.2f}, expected {lo:g}-{hi:g}")
        else:
            measures["left_right_ratio"] = None
            missing = [x for x in (a, b) if not areas.get(x, 0)]
            msg = f"no {' and no '.join(missing)} found"
            if msg not in failures and not all(f"no {x} found" in failures for x in missing):
                failures.append(msg + f" ({a}/{b} area ratio undefined)")
    out = {"checked": True, "passed": not failures, "failures": failures, "measures": measures,
           "checks": checks.to_dict()}
    out["text"] = quality_text(out)
    return out


def quality_text(q: dict | None) -> str:
    """One line for the CLI, the viewer and reports."""
    if not q or not q.get("checked"):
        return ""
    if q.get("passed"):
        return "quality checks passed"
    return "QUALITY CHECK FAILED (result not trustworthy): " + "; ".join(q.get("failures") or [])


def attach_quality(d: dict, label_map, card) -> dict | None:
    """Run the checks of ``card`` on a segmentation and write them into its results.json item
    ``d`` (``quality``; a failing check is also a warning).  Returns the quality dict."""
    checks = getattr(card, "quality_checks", None)
    if checks is None or label_map is None:
        return None
    if isinstance(d.get("quality"), dict):  # already run at segmentation time (pipelines)
        return d["quality"]
    q = check_segmentation(label_map, card.labels, checks)
    d["quality"] = q
    if q is not None and not q["passed"]:
        w = list(d.get("warnings") or [])
        w.append(q["text"])
        d["warnings"] = w
    return q


def region_quality(region_map, region: dict, seg_card) -> tuple[dict | None, str | None]:
    """A classifier's explanation region (e.g. the lungs found by cxr-lung-seg) is a segmentation
    too: (the segmenter card's checks on it, the warning when they fail: the heat map's share
    inside the region is then meaningless).  ``region``: the ``explanation_region`` dict (its
    ``labels``, ``name``, ``model``).  Called where the region is measured
    (``explain.regions.RegionExplainer``), so that every caller (analyze, batch, the demo, the
    viewer) sees the same verdict."""
    checks = getattr(seg_card, "quality_checks", None)
    if region_map is None or checks is None:
        return None, None
    import dataclasses

    labels = ["background"] + list(region.get("labels") or [])
    if checks.ratio_labels is not None and not set(checks.ratio_labels) <= set(labels):
        checks = dataclasses.replace(checks, left_right_ratio=None, ratio_labels=None)
    q = check_segmentation(region_map, labels, checks)
    if q is None or q["passed"]:
        return q, None
    name = region.get("name", "region")
    return q, (f"the {name} found by {region.get('model', 'the segmenter')} fail its quality checks "
               f"({'; '.join(q['failures'])}): the heat map's share inside the {name} is not meaningful")
