"""The card's ``population`` block (who and what the model was trained on) and, for
segmenters, its ``quality_checks`` block (what a plausible result looks like).

Both are optional and documented in ``docs/model_card.md``.  The population is checked by
:func:`imaging_assist.models.matching.match_card` (one rule set for analyze, the demo and the
viewer); the quality checks run on every segmentation (:mod:`imaging_assist.inference.quality`).

No Qt, no torch: imported by the card parser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# What kind of image a DICOM Modality gives.  A card's ``population.image_kind`` must be one
# of these; a series whose modality is not listed here (OT, SC, none, a plain PNG) has an
# unknown kind and is only warned about.
IMAGE_KINDS: dict[str, tuple[str, ...]] = {
    "projection radiograph": ("CR", "DX", "RG", "MG", "RF", "XA", "PX", "IO", "DF"),
    "cross-sectional": ("CT", "MR", "PT", "NM", "ST"),
    "ultrasound": ("US", "IVUS"),
    "microscopy": ("SM", "GM"),
    "photograph": ("XC", "ES", "OP"),
}
_KIND_OF_MODALITY = {m: k for k, ms in IMAGE_KINDS.items() for m in ms}

POPULATION_KEYS = ("age_years", "view_positions", "image_kind", "data")
QUALITY_KEYS = ("area_fraction", "max_pieces_per_label", "min_piece_fraction", "left_right_ratio",
                "ratio_labels", "data")


def image_kind_of(modality: str) -> str:
    """The image kind of a DICOM modality; "" when the modality does not say (OT, SC, none)."""
    return _KIND_OF_MODALITY.get((modality or "").upper().strip(), "")


@dataclass
class Population:
    """``population``: ``age_years`` [lo, hi] in completed years (a 5-year-11-month child is
    5, so ``[1, 5]`` takes ages 1.0 to < 6.0), ``view_positions`` (DICOM ViewPosition values),
    ``image_kind`` (a key of :data:`IMAGE_KINDS`), ``data`` (where these come from)."""

    age_years: tuple[float, float] | None = None
    view_positions: list[str] = field(default_factory=list)
    image_kind: str = ""
    data: str = ""

    def age_fits(self, age: float) -> bool:
        lo, hi = self.age_years
        return lo <= math.floor(age + 1e-9) <= hi

    def age_text(self) -> str:
        lo, hi = self.age_years
        return f"{lo:g}-{hi:g} years"

    def to_dict(self) -> dict:
        return {"age_years": list(self.age_years) if self.age_years else None,
                "view_positions": list(self.view_positions), "image_kind": self.image_kind,
                "data": self.data}


@dataclass
class QualityChecks:
    """``quality_checks`` of a segmenter (see :mod:`imaging_assist.inference.quality`)."""

    area_fraction: tuple[float, float] | None = None  # all structures together / image area
    max_pieces_per_label: int | None = None  # connected pieces of each structure (at least 1)
    min_piece_fraction: float = 0.05  # a piece smaller than this share of its structure is ignored
    left_right_ratio: tuple[float, float] | None = None  # area of ratio_labels[0] / ratio_labels[1]
    ratio_labels: tuple[str, str] | None = None
    data: str = ""

    def to_dict(self) -> dict:
        return {"area_fraction": list(self.area_fraction) if self.area_fraction else None,
                "max_pieces_per_label": self.max_pieces_per_label,
                "min_piece_fraction": self.min_piece_fraction,
                "left_right_ratio": list(self.left_right_ratio) if self.left_right_ratio else None,
                "ratio_labels": list(self.ratio_labels) if self.ratio_labels else None,
                "data": self.data}


def _range(c, v, where: str, lo: float, hi: float) -> tuple[float, float] | None:
    ok = (isinstance(v, list) and len(v) == 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))
    if not ok or not (lo <= v[0] <= v[1] <= hi):
        c.add(where, f"must be [low, high] with {lo:g} <= low <= high <= {hi:g} (got {str(v)[:60]})")
        return None
    return float(v[0]), float(v[1])


def check_population(c, p) -> Population | None:
    """Validate ``population`` (problems go to the card checker ``c``)."""
    if p is None:
        return None
    w = "population"
    if not isinstance(p, dict):
        c.add(w, "must be an object {\"age_years\": [lo, hi], \"view_positions\": [...], \"image_kind\": ...}")
        return None
    unknown = sorted(set(p) - set(POPULATION_KEYS))
    if unknown:
        c.add(w, f"unknown key(s) {', '.join(map(str, unknown))[:200]} (allowed: {', '.join(POPULATION_KEYS)})")
    n = len(c.problems)
    age = _range(c, p["age_years"], w + ".age_years", 0, 150) if p.get("age_years") is not None else None
    views = p.get("view_positions", [])
    if not (isinstance(views, list) and len(views) <= 20
            and all(isinstance(x, str) and 0 < len(x.strip()) <= 16 for x in views)):
        c.add(w + ".view_positions", f"must be a list of DICOM ViewPosition values (got {str(views)[:60]})")
        views = []
    kind = p.get("image_kind", "")
    if kind and kind not in IMAGE_KINDS:
        c.add(w + ".image_kind", f"must be one of {', '.join(IMAGE_KINDS)} (got {str(kind)[:60]})")
        kind = ""
    data = p.get("data", "")
    if not isinstance(data, str) or len(data) > 2000:
        c.add(w + ".data", "must be a text of at most 2000 characters")
        data = ""
    if len(c.problems) > n:
        return None
    return Population(age, [v.upper().strip() for v in views], kind or "", data)


def check_quality_checks(c, q, task, labels) -> QualityChecks | None:
    """Validate ``quality_checks`` (segmenters only; label names must be the card's)."""
    if q is None:
        return None
    w = "quality_checks"
    if not isinstance(q, dict):
        c.add(w, "must be an object {\"area_fraction\": [lo, hi], \"max_pieces_per_label\": n, ...}")
        return None
    if task is not None and task != "segmentation":
        c.add(w, "is only used by segmenters")
        return None
    unknown = sorted(set(q) - set(QUALITY_KEYS))
    if unknown:
        c.add(w, f"unknown key(s) {', '.join(map(str, unknown))[:200]} (allowed: {', '.join(QUALITY_KEYS)})")
    n = len(c.problems)
    area = _range(c, q["area_fraction"], w + ".area_fraction", 0, 1) if q.get("area_fraction") is not None else None
    pieces = q.get("max_pieces_per_label")
    if pieces is not None and not (isinstance(pieces, int) and not isinstance(pieces, bool) and 1 <= pieces <= 1000):
        c.add(w + ".max_pieces_per_label", f"must be an integer from 1 to 1000 (got {str(pieces)[:60]})")
    mpf = q.get("min_piece_fraction", 0.05)
    if isinstance(mpf, bool) or not isinstance(mpf, (int, float)) or not (0 <= mpf < 1):
        c.add(w + ".min_piece_fraction", f"must be a number in [0, 1) (got {str(mpf)[:60]})")
    ratio = (_range(c, q["left_right_ratio"], w + ".left_right_ratio", 0, 1e6)
             if q.get("left_right_ratio") is not None else None)
    rl = q.get("ratio_labels")
    fg = [x for x in (labels or [])[1:] if isinstance(x, str)]
    if ratio is not None:
        if rl is None:  # the structures named right... and left...
            right = [x for x in fg if x.lower().startswith("right")]
            left = [x for x in fg if x.lower().startswith("left")]
            if len(right) != 1 or len(left) != 1:
                c.add(w + ".ratio_labels", "is required when the labels are not one right_* and one left_* structure")
            else:
                rl = [right[0], left[0]]
        if rl is not None and not (isinstance(rl, list) and len(rl) == 2 and all(x in fg for x in rl)
                                   and rl[0] != rl[1]):
            c.add(w + ".ratio_labels", f"must name two different structures of the card's labels (got {str(rl)[:60]})")
    data = q.get("data", "")
    if not isinstance(data, str) or len(data) > 2000:
        c.add(w + ".data", "must be a text of at most 2000 characters")
    if len(c.problems) > n:
        return None
    if area is None and pieces is None and ratio is None:
        c.add(w, "names no check (area_fraction, max_pieces_per_label or left_right_ratio)")
        return None
    return QualityChecks(area, pieces, float(mpf), ratio, tuple(rl) if ratio is not None else None, data)
