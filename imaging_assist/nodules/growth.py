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
years that measurement noise alone can produce).  When either size is a lower bound (the nodule
reaches the models' window or the series' edge) or flagged (out of distribution, segmenter
unsure), the verdict and the VDT are withheld, with the reason.  Two studies are compared
only when they are of the same patient (a keyed pseudonym of the Patient ID) and their dates
are equally original or equally shifted by de-identification.
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
#: The segmenter's outline lies about 2 mm (in diameter) outside a nodule's edge, a rim of nearly
#: constant width (docs/ct_nodules_workflow.md; weights/ct-nodule-seg/phantom_sizes.json, solid
#: spheres of 4-12 mm): each size step of the phantom reads a smaller volume ratio than the truth
#: (8 -> 10 mm: x1.95 reads x1.78; 10 -> 12 mm: x1.73 reads x1.58, the VDT ~20% longer), so
#: growth is underestimated up to the largest sphere measured.  The bound is that sphere's
#: reported volume (12 mm, 905 mm³ true, read 1,367 mm³): below it the squeeze is measured;
#: above it the rim weighs less and was not measured.  No correction is applied (the sizes would
#: leave the reader outlines the card is validated on); the growth says so instead.
RIM_BIAS_MAX_VOLUME_MM3 = 1367.1
#: the phantom's example quoted in the warning: true 8 -> 10 mm spheres, volume ratios true / read
RIM_BIAS_EXAMPLE = (8, 10, 523.6 / 268.1, 866.8 / 486.1)
#: a nodule's own warnings (nodules.analysis / nodules.measure) that make its size a lower bound
LOWER_BOUND_MARKS = ("lower bound", "underestimated")


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
    """A DICOM DA (YYYYMMDD, YYYY.MM.DD) or ISO date (the viewer's reading,
    :func:`imaging_assist.viewing.parse_date`); ValueError (one line) when it is none of them."""
    from ..viewing import parse_date as as_date

    d = as_date(value)
    if d is None:
        s = str(value or "").strip()
        raise ValueError(f"study date {s[:20]!r} is not a date (YYYYMMDD)" if s else "no study date")
    return d


def patient_key(patient_id, issuer="") -> str | None:
    """A keyed pseudonym (site key, own role) of a Patient ID and its issuer: what results.json
    records to tell two studies' patients apart without naming them; None without a Patient ID
    or when the site key cannot be read."""
    pid = str(patient_id or "").strip()
    if not pid:
        return None
    from ..errors import UserError
    from ..privacy.sitekey import pseudonym

    try:
        return pseudonym(f"{str(issuer or '').strip()}\0{pid}", "growth:patient")
    except (UserError, OSError):
        return None


def study_facts(volume) -> dict:
    """``study_date`` (ISO, or None), ``slice_thickness_mm``, ``patient_key`` (:func:`patient_key`)
    and ``dates_modified`` (LongitudinalTemporalInformationModified, e.g. "MODIFIED" when
    de-identification shifted the dates; None when absent) of a loaded series, as the nodule
    results record them for a later comparison."""
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
    extra = _unindexed(rec, ("IssuerOfPatientID", "LongitudinalTemporalInformationModified"))
    if extra is None:  # the header could not be read again: said by compare's refusal, never guessed
        return {"study_date": date, "slice_thickness_mm": th, "patient_key": None, "dates_modified": "UNREADABLE"}
    mod = str(extra["LongitudinalTemporalInformationModified"] or "").strip().upper() or None
    return {"study_date": date, "slice_thickness_mm": th,
            "patient_key": patient_key(get("PatientID"), extra["IssuerOfPatientID"]), "dates_modified": mod}


def _unindexed(rec, keywords) -> dict | None:
    """Attributes the index does not keep (``dicom.header.WANTED``), from the record's file (one
    header read); a plain mapping (tests) is asked directly.  None when the file cannot be read."""
    if rec is None:
        return dict.fromkeys(keywords)
    if not hasattr(rec, "path"):
        return {kw: rec.get(kw) for kw in keywords}
    from ..dicom.header import read_dataset

    try:
        ds = read_dataset(rec, stop_before_pixels=True)
        return {kw: ds.get(kw) for kw in keywords}
    except Exception:  # noqa: BLE001 - any unreadable header is the same refusal later
        return None


@dataclass(frozen=True)
class Measured:
    """One nodule as measured on one CT: volume, long and short axis, study date, slice thickness."""

    volume_mm3: float
    date: _dt.date
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    slice_thickness_mm: float | None = None
    label: str = ""
    #: why its size is not a measure to compare (a lower bound, flagged): the verdict is withheld
    limits: tuple = ()

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
                        num(d.get("short_axis_mm")), num(slice_thickness_mm), label or str(d.get("id", "")),
                        limits_of(d))


def limits_of(d: dict) -> tuple:
    """Why a ``nodules[]`` entry's size cannot be compared, from its own flags: a warning that
    it reaches the models' window or the series' edge (volume and diameters are lower bounds),
    ``ood.flagged`` (outside the training data), the segmenter unsure of its outline
    (``ood.segmentation_confidence`` below its threshold)."""
    warns = d.get("warnings") if isinstance(d.get("warnings"), list) else []
    ood = d.get("ood") if isinstance(d.get("ood"), dict) else {}
    out = []
    if any(isinstance(w, str) and any(k in w for k in LOWER_BOUND_MARKS) for w in warns):
        out.append("a lower bound (the nodule reaches the edge of the models' window or of the series)")
    sc = ood.get("segmentation_confidence") if isinstance(ood.get("segmentation_confidence"), dict) else {}
    conf, thr = _number(sc.get("mean_probability")), _number(sc.get("threshold"))
    unsure = conf is not None and thr is not None and conf < thr
    others = [r for r in ood.get("reasons") or [] if not (isinstance(r, str) and "less sure" in r)] \
        if isinstance(ood.get("reasons"), list) else []
    if ood.get("flagged") is True and (others or not unsure):
        out.append("unreliable (outside what the models were trained on)")
    if unsure:
        out.append(f"unreliable (the segmenter is unsure of its outline: mean probability {conf:.2f} < {thr:.2f})")
    return tuple(out)


@dataclass
class Growth:
    prior: Measured
    current: Measured
    interval_days: int
    change_pct: float
    vdt_days: float | None
    verdict: str  # "grew", "stable", "smaller"; "withheld" when a size is a lower bound or flagged
    diameter_change_mm: float | None
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One line, e.g. ``+42% in 182 days (VDT 340 days), mean diameter +1.8 mm``."""
        d = self.interval_days
        span = f"{self.change_pct:+.0f}% in {d} day{'s' if d != 1 else ''}"
        if self.verdict == "withheld":  # "prior size a lower bound and unreliable" (details: the warnings)
            why = "; ".join(f"{side} size {' and '.join(dict.fromkeys(x.split(' (')[0] for x in m.limits))}"
                            for side, m in (("prior", self.prior), ("current", self.current)) if m.limits)
            s = f"no verdict, no VDT: {span} ({why})"
        elif self.verdict == "grew":
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
    for side, m in (("prior", prior), ("current", current)):
        for x in m.limits:
            warnings.append(f"{side} nodule {m.label}: its size is {x}: the volume change does not measure "
                            "growth, so no verdict and no VDT")
    if prior.limits or current.limits:
        verdict, vdt = "withheld", None
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
    if dd is not None and dd > DIAMETER_GROWTH_MM and verdict != "grew":
        vol = {"stable": f"the volume change is within ±{VOLUMETRY_VARIABILITY:.0%}",
               "smaller": "the volume is smaller", "withheld": "no volume verdict is given"}[verdict]
        warnings.append(f"mean diameter {dd:+.1f} mm: Lung-RADS v2022 calls an increase over {DIAMETER_GROWTH_MM:g} mm "
                        f"growth, while {vol}")
    return Growth(prior, current, days, change, vdt, verdict, dd, warnings)


def _same_patient(prior_facts: dict, current_facts: dict) -> None:
    """ValueError (one line) unless both studies name the same patient and their dates are
    equally original or equally shifted by de-identification."""
    sides = (("the prior", prior_facts), ("the current study", current_facts))
    for side, f in sides:
        if "patient_key" not in f:
            raise ValueError(f"{side}'s results.json names no patient (written by an older version): analyse it again")
        if not isinstance(f.get("patient_key"), str) or not f["patient_key"]:
            raise ValueError(f"{side} records no patient (no Patient ID, or its header or the site key could not be "
                             "read): growth is computed only between two studies of one patient")
    mod = [str(f.get("dates_modified") or "UNMODIFIED").upper()[:20] for _, f in sides]
    if mod[0] != mod[1]:
        raise ValueError(f"the prior's dates are {mod[0]} and the current study's {mod[1]} "
                         "(LongitudinalTemporalInformationModified: de-identification shifts dates): the interval "
                         "would be wrong; compare two originals, or two copies de-identified together")
    if prior_facts["patient_key"] != current_facts["patient_key"]:
        raise ValueError("the prior and the current study are of different patients (their Patient IDs differ, or "
                         "they were analysed with different site keys): nothing to compare")


def compare(prior: dict, prior_facts: dict, current: dict, current_facts: dict) -> dict:
    """The ``growth`` entry of a current nodule (``nodules[]`` of results.json) since the same
    nodule in a prior analysis, as the reader linked them: :meth:`Growth.to_dict` plus the prior's
    series UID.  ``*_facts``: ``study_date``, ``slice_thickness_mm``, ``series_uid``,
    ``patient_key``, ``dates_modified`` of each study (:func:`study_facts`, or a results.json
    item).  ValueError (one line) when the two cannot be compared (the same series, not the same
    patient or an older results.json naming none, dates shifted on one side only, a nodule not
    found, no date, the prior not older).  Each nodule's own flags withhold the verdict
    (:func:`limits_of`); small nodules get the segmenter's size bias as a warning.
    One code path for the viewer's link, ``analyze --prior`` and ``nodule-growth``."""
    pu, cu = (f.get("series_uid") if isinstance(f.get("series_uid"), str) else None
              for f in (prior_facts, current_facts))
    if pu and pu == cu:
        raise ValueError("the prior is the same series: nothing to compare")
    _same_patient(prior_facts, current_facts)
    pm = Measured.from_result(prior, prior_facts.get("study_date"), prior_facts.get("slice_thickness_mm"),
                              label=str(prior.get("id", "")))
    cm = Measured.from_result(current, current_facts.get("study_date"), current_facts.get("slice_thickness_mm"),
                              label=str(current.get("id", "")))
    g = growth(pm, cm)
    if min(pm.volume_mm3, cm.volume_mm3) < RIM_BIAS_MAX_VOLUME_MM3:
        a, b, true, read = RIM_BIAS_EXAMPLE
        g.warnings.append(f"small nodule (under {RIM_BIAS_MAX_VOLUME_MM3:,.0f} mm³ as measured): the segmenter's "
                          "outline is about 2 mm wider than the nodule, so the volume change is underestimated and "
                          f"the VDT overestimated (phantom: a true {a} -> {b} mm growth, volume ×{true:.2f}, "
                          f"reads ×{read:.2f})")
    d = g.to_dict()
    d["prior"]["series_uid"] = pu or None
    return d
