"""Growth of one nodule between a prior and a current CT (no Qt): volume change, volume
doubling time (VDT) and the change of its mean diameter.

Follow-up of a pulmonary nodule is read as growth: the British Thoracic Society guideline
(Callister et al., Thorax 2015) and the NELSON trial count a volume change under 25% as within
the measurement variability of semi-automatic volumetry, and read a VDT under 400 days as
suspicious, over 600 days as reassuring; Lung-RADS v2022 calls an increase of the mean diameter
over 1.5 mm growth.  This module computes the numbers; the reader links the two nodules (no
registration between studies is attempted) and decides.  NOT FOR CLINICAL USE.

    VDT = interval (days) x ln 2 / ln(V_current / V_prior)

given only when the volume grew by at least the variability (a smaller change gives a VDT of
years that measurement noise alone can produce).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

#: relative volume change within semi-automatic volumetry's variability (BTS 2015, NELSON)
VOLUMETRY_VARIABILITY = 0.25
#: Lung-RADS v2022: growth is a mean-diameter increase over 1.5 mm
DIAMETER_GROWTH_MM = 1.5
MIN_INTERVAL_DAYS = 30
#: slice thicknesses that differ by more than this make the two volumes not comparable within 25%
THICKNESS_MISMATCH_MM = 1.0


#: what a nodule's volume and lengths may be in a results.json read back (a file can be edited or
#: damaged: a list, a string or 1e300 is said in one line, never computed with)
MIN_VOLUME_MM3, MAX_VOLUME_MM3 = 1e-3, 1e7
MAX_LENGTH_MM = 1000.0


def _number(x) -> float | None:
    """``x`` as a finite float, or None when it is not a real number (bool, str, list, NaN...)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def parse_date(value) -> _dt.date:
    """A DICOM DA (YYYYMMDD) or ISO date; ValueError (one line) when it is neither."""
    if isinstance(value, _dt.date):
        return value
    s = str(value or "").strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(s, fmt).date()
        except ValueError:
            pass
    raise ValueError(f"study date {s[:20]!r} is not a date (YYYYMMDD)" if s else "no study date")


def study_facts(volume) -> dict:
    """``study_date`` (ISO, or None) and ``slice_thickness_mm`` of a loaded series, as the
    nodule results record them for a later comparison."""
    rec = volume.headers[0] if getattr(volume, "headers", None) else None
    get = (lambda kw: rec.get(kw)) if rec is not None else (lambda kw: None)
    try:
        date = parse_date(get("StudyDate")).isoformat()
    except ValueError:
        date = None
    try:
        th = float(get("SliceThickness"))
        th = th if math.isfinite(th) and 0 < th < 100 else None
    except (TypeError, ValueError):
        th = None
    if th is None and getattr(volume, "has_geometry", False) and rec is not None:
        th = float(volume.spacing[2])  # the slice spacing stands in for a missing thickness
    return {"study_date": date, "slice_thickness_mm": th}


@dataclass(frozen=True)
class Measured:
    """One nodule as measured on one CT: volume, long and short axis, study date, slice thickness."""

    volume_mm3: float
    date: _dt.date
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    slice_thickness_mm: float | None = None
    label: str = ""

    def __post_init__(self):
        who = f"nodule {self.label}" if self.label else "nodule"
        v = _number(self.volume_mm3)
        if v is None or not MIN_VOLUME_MM3 <= v <= MAX_VOLUME_MM3:
            raise ValueError(f"{who}: volume {str(self.volume_mm3)[:40]!r} mm³ is not a positive number "
                             f"up to {MAX_VOLUME_MM3:,.0f}")
        for name in ("long_axis_mm", "short_axis_mm", "slice_thickness_mm"):
            x = getattr(self, name)
            if x is not None and (_number(x) is None or not 0 <= _number(x) <= MAX_LENGTH_MM):
                raise ValueError(f"{who}: {name} {str(x)[:40]!r} is not a length in mm (0-{MAX_LENGTH_MM:g})")

    @property
    def mean_diameter_mm(self) -> float | None:
        a, b = self.long_axis_mm, self.short_axis_mm
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            return None
        return (float(a) + float(b)) / 2.0

    @staticmethod
    def from_result(d: dict, study_date, slice_thickness_mm=None, label: str = "") -> "Measured":
        """From a ``nodules[]`` entry of results.json (or ``NoduleResult.to_dict()``)."""
        if not d.get("found", True):
            raise ValueError(f"nodule {label or d.get('id', '')}: {d.get('reason') or 'not found'}")

        def num(x):  # numbers written as text are read; anything else goes to the checks
            if isinstance(x, str):
                try:
                    return float(x) if x.strip() else None
                except ValueError:
                    return x
            return x

        return Measured(num(d.get("volume_mm3")), parse_date(study_date), num(d.get("long_axis_mm")),
                        num(d.get("short_axis_mm")), num(slice_thickness_mm), label or str(d.get("id", "")))


@dataclass
class Growth:
    prior: Measured
    current: Measured
    interval_days: int
    change_pct: float
    vdt_days: float | None
    verdict: str  # "grew", "stable", "smaller"
    diameter_change_mm: float | None
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One line, e.g. ``+42% in 182 days (VDT 340 days), mean diameter +1.8 mm``."""
        d = self.interval_days
        span = f"{self.change_pct:+.0f}% in {d} day{'s' if d != 1 else ''}"
        if self.verdict == "grew":
            s = f"grew {span} (VDT {self.vdt_days:.0f} days)"
        elif self.verdict == "smaller":
            s = f"smaller: {span}"
        else:
            s = f"stable: {span} (within ±{VOLUMETRY_VARIABILITY:.0%} volumetry variability)"
        if self.diameter_change_mm is not None:
            s += f", mean diameter {self.diameter_change_mm:+.1f} mm"
        return s

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 2)  # noqa: E731
        return {"prior": {"label": self.prior.label, "date": self.prior.date.isoformat(),
                          "volume_mm3": r(self.prior.volume_mm3)},
                "current": {"label": self.current.label, "date": self.current.date.isoformat(),
                            "volume_mm3": r(self.current.volume_mm3)},
                "interval_days": self.interval_days, "volume_change_pct": r(self.change_pct),
                "vdt_days": r(self.vdt_days), "verdict": self.verdict,
                "mean_diameter_change_mm": r(self.diameter_change_mm),
                "text": self.text(), "warnings": list(self.warnings)}


def growth(prior: Measured, current: Measured) -> Growth:
    """Compare a nodule's two measurements; ValueError (one line) when the prior is not older."""
    days = (current.date - prior.date).days
    if days <= 0:
        raise ValueError(f"the prior ({prior.date.isoformat()}) must be older than the current study "
                         f"({current.date.isoformat()})")
    ratio = float(current.volume_mm3) / float(prior.volume_mm3)
    change = (ratio - 1.0) * 100.0
    warnings = []
    if ratio >= 1.0 + VOLUMETRY_VARIABILITY:
        verdict, vdt = "grew", days * math.log(2.0) / math.log(ratio)
    elif ratio <= 1.0 - VOLUMETRY_VARIABILITY:
        verdict, vdt = "smaller", None
    else:
        verdict, vdt = "stable", None
    if days < MIN_INTERVAL_DAYS:
        warnings.append(f"interval of {days} days: under {MIN_INTERVAL_DAYS} days a change is mostly "
                        "measurement variability")
    ta, tb = prior.slice_thickness_mm, current.slice_thickness_mm
    if ta is not None and tb is not None and abs(ta - tb) > THICKNESS_MISMATCH_MM:
        warnings.append(f"slice thickness {ta:g} vs {tb:g} mm: the volumes are not comparable within "
                        f"±{VOLUMETRY_VARIABILITY:.0%}")
    elif ta is None or tb is None:
        warnings.append("slice thickness of a study unknown: volumes from different reconstructions "
                        "are not comparable within ±25%")
    da, db = prior.mean_diameter_mm, current.mean_diameter_mm
    dd = None if da is None or db is None else db - da
    return Growth(prior, current, days, change, vdt, verdict, dd, warnings)


def compare(prior: dict, prior_facts: dict, current: dict, current_facts: dict) -> dict:
    """The ``growth`` entry of a current nodule (``nodules[]`` of results.json) since the same
    nodule in a prior analysis, as the reader linked them: :meth:`Growth.to_dict` plus the prior's
    series UID.  ``*_facts``: ``study_date``, ``slice_thickness_mm``, ``series_uid`` of each
    study (:func:`study_facts`, or a results.json item).  ValueError (one line) when the two
    cannot be compared (a nodule not found, no date, the prior not older, the same series).
    One code path for the viewer's link and ``analyze --prior``."""
    pu, cu = (f.get("series_uid") if isinstance(f.get("series_uid"), str) else None
              for f in (prior_facts, current_facts))
    if pu and pu == cu:
        raise ValueError("the prior is the same series: nothing to compare")
    pm = Measured.from_result(prior, prior_facts.get("study_date"), prior_facts.get("slice_thickness_mm"),
                              label=str(prior.get("id", "")))
    cm = Measured.from_result(current, current_facts.get("study_date"), current_facts.get("slice_thickness_mm"),
                              label=str(current.get("id", "")))
    d = growth(pm, cm).to_dict()
    d["prior"]["series_uid"] = pu or None
    return d
