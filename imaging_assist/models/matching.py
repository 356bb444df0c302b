"""Does a model card fit a series?  One rule set for ``analyze``, the headless demo and the
viewer's model panel (before there were two, with different answers).

:class:`SeriesFacts` is what the rules look at.  It is built from the study index
(:meth:`SeriesFacts.from_series`, headers only: before loading) and/or a loaded
:class:`~imaging_assist.volume.Volume` (:func:`series_facts`).  A fact that is not known yet
is ``None``; the rule that needs it is listed in :attr:`Match.unchecked` and must be checked
again once the series is loaded (``analyze`` does: index first, then the loaded volume).

The rules of :func:`match_card`, one per field (a *reason* refuses the model, a *warning*
lets it run and says what was not checked):

* ``is_image`` -- a series without pixel data never fits.
* ``modality`` -- the series' DICOM Modality must be one of the card's; a card listing ``OT``
  takes any modality.  A plain image (PNG/JPEG/TIFF, ``is_dicom`` False) has no modality:
  it fits with a warning (the shipped radiograph models were trained on such exports, so
  refusing them would be wrong, but nothing checks that the picture is what the card wants).
  A DICOM series without Modality fits only ``OT`` cards.
* ``body_part`` -- when both the card and the series name one, one must contain the other
  (``CHEST`` fits ``CHEST``, ``ABDOMENCHEST``...).  When the series does not say, it fits
  with a warning.
* dimensions -- a 3D card needs a volume: several parallel slices with 3D geometry, not a
  cine loop and not colour (``is_volume``); before loading only a single image is refused.
  A 2D card runs on every image (volumes slice by slice).
* ``units`` -- a card with ``input.units`` (e.g. ``HU``) needs values in those units.
* colour -- a 3-channel microscopy model (``population.image_kind`` ``microscopy``: stained
  tissue, e.g. H&E, whose colour is the signal) refuses a grayscale image; a plain image not
  loaded yet is unchecked.

The score ranks the models that fit: an exact modality 2, a body part that agrees 1, the
model's dimensionality equal to the series' 1 (2D model on one image, 3D on a volume).
* population -- the card's optional ``population`` block (``models/population.py``): the
  image kind given by the modality (projection radiograph, cross-sectional, ultrasound,
  microscopy...), the patient's age (``PatientAge``, else study date - birth date) in
  completed years, and ``ViewPosition``, of every image of the series.  A known value outside
  the population (on any image: a lateral film inside an AP series) refuses the model; an
  unknown one (a plain image, no PatientAge) fits with a warning naming it.

No Qt, no torch: cheap to import (the viewer uses it on every series it shows).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field


@dataclass
class SeriesFacts:
    """What the model matching knows about a series.  ``None``: not known (yet)."""

    modality: str = ""
    body_part: str = ""
    n_slices: int = 1
    is_volume: bool | None = False  # several parallel slices with 3D geometry (3D models can run)
    units: str | None = ""  # "HU" for CT; None: not known before loading
    is_color: bool = False
    photometric: str = ""
    is_image: bool = True  # the series holds pixel data
    is_dicom: bool = True  # False for plain PNG/JPEG/TIFF images (no DICOM attributes at all)
    patient_age_years: float | None = None
    view_position: str = ""  # DICOM ViewPosition (AP, PA, LL...), "" when not given
    # every image's values, distinct, in image order (ages: the known ones; views: "" for an
    # image without one): a lateral film inside an AP series is refused, not passed on the
    # first image's view.  Empty: only the single values above are known.
    patient_ages: tuple = ()
    view_positions: tuple = ()
    loaded: bool = True  # built from a loaded volume (False: index headers only)

    def describe(self) -> str:
        parts = [self.modality or ("plain image" if not self.is_dicom else "no modality")]
        if self.body_part:
            parts.append(self.body_part)
        if self.is_volume:
            parts.append(f"3D, {self.n_slices} slices")
        elif self.n_slices > 1:
            parts.append(f"{self.n_slices} images")
        else:
            parts.append("2D")
        return " · ".join(parts)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_series(cls, series) -> "SeriesFacts":
        """Facts from the index only (headers; nothing decoded): ``is_volume`` and ``units``
        are unknown (``None``) unless the series has a single image."""
        recs = list(getattr(series, "instances", None) or [])
        n = int(getattr(series, "n_frames", 0) or 0) or int(getattr(series, "n_instances", 1) or 1)
        samples = _first(recs, "SamplesPerPixel")
        return cls(
            modality=str(getattr(series, "modality", "") or "").upper().strip(),
            body_part=str(getattr(series, "body_part", "") or "").upper().strip(),
            n_slices=max(1, n),
            is_volume=False if n < 2 else None,
            units=None,
            is_color=_int(samples, 1) == 3,
            photometric=str(_first(recs, "PhotometricInterpretation") or "").upper(),
            is_image=bool(getattr(series, "is_image", True)),
            is_dicom=True,
            loaded=False,
            **_population(recs),
        )


def series_facts(volume, series=None) -> SeriesFacts | None:
    """Facts of a loaded volume (with its index entry when known); None without a volume."""
    if volume is None:
        return None
    recs = list(getattr(volume, "headers", None) or []) or list(getattr(series, "instances", None) or [])
    is_dicom = bool(recs) or series is not None
    mod = (volume.modality or (getattr(series, "modality", "") if series is not None else "") or "")
    bp = (getattr(series, "body_part", "") or "") if series is not None else (_first(recs, "BodyPartExamined") or "")
    n = int(volume.n_slices)
    is_vol = bool(n > 1 and volume.has_geometry and not volume.is_cine and not volume.is_color)
    return SeriesFacts(
        modality=str(mod).upper().strip(), body_part=str(bp).upper().strip(), n_slices=n,
        is_volume=is_vol, units=volume.units or "", is_color=bool(volume.is_color),
        photometric=str(getattr(volume, "photometric", "") or "").upper(),
        is_image=True, is_dicom=is_dicom,
        loaded=True, **_population(recs))


@dataclass
class Match:
    ok: bool
    score: int = 0
    reasons: list[str] = field(default_factory=list)  # why it does not fit
    warnings: list[str] = field(default_factory=list)  # fits, but this was not checked
    unchecked: list[str] = field(default_factory=list)  # rules that need the loaded series

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def match_card(card, facts: SeriesFacts | None) -> Match:
    """Does a model card fit the series?  The rules are in the module docstring."""
    if card is None:
        return Match(False, reasons=["the model card is invalid"])
    if facts is None:
        return Match(False, reasons=["no series is open"])
    reasons: list[str] = []
    warnings: list[str] = []
    unchecked: list[str] = []
    score = 0
    mods = [m.upper() for m in card.modality]
    want_mods = "/".join(mods)
    if not facts.is_image:
        reasons.append("the series holds no images")
    # modality
    if facts.modality and facts.modality in mods:
        score += 2
    elif "OT" in mods:
        # a model for any modality (a card, or a bundle whose metadata says "regular"/"rgb"):
        # taken, but never silently on a DICOM series of a named modality
        if facts.is_dicom and facts.modality and facts.modality != "OT":
            warnings.append(f"the model names no modality (OT): it was not checked that it fits "
                            f"{facts.modality} images")
    elif not facts.is_dicom and not facts.modality:
        warnings.append(f"plain image without a modality: the model is for {want_mods}, not checked")
    else:
        have = facts.modality or "DICOM without Modality"
        reasons.append(f"model is for {want_mods}, the series is {have}")
    # body part
    want_bp = (card.body_part or "").upper()
    if want_bp:
        bp = facts.body_part
        if bp and (want_bp in bp or bp in want_bp):
            score += 1
        elif bp:
            reasons.append(f"model is for {want_bp}, the series shows {bp}")
        elif facts.is_dicom:
            warnings.append(f"the series does not say the body part (BodyPartExamined): "
                            f"the model is for {want_bp}, not checked")
        else:
            warnings.append(f"the model is for {want_bp} (body part), not checked on a plain image")
    # dimensions
    if card.spatial_dims == 3:
        if facts.is_volume:
            score += 1
        elif facts.is_volume is None:
            unchecked.append("3D volume")
        elif facts.n_slices < 2:
            reasons.append("3D model, the series has a single image")
        else:
            reasons.append("3D model, the series is not a volume (no 3D geometry, a cine loop or colour)")
    elif facts.n_slices == 1:
        score += 1
    # units
    inp = getattr(card, "input", None)
    units = (getattr(inp, "units", None) or "") if inp is not None else ""
    if units:
        if facts.units is None:
            unchecked.append(f"values in {units}")
        elif facts.units.upper() != units.upper():
            have = f"values in {facts.units}" if facts.units else "no physical units"
            reasons.append(f"model needs values in {units}, the series has {have}")
    # colour: stained tissue is read by its colour; a grayscale picture is not what such a
    # model saw (a chest film through the H&E model only got as far as its OOD flag before)
    pop = getattr(card, "population", None)
    if (getattr(inp, "channels", None) == 3 and pop is not None and pop.image_kind == "microscopy"
            and facts.is_image):
        if not facts.loaded and not facts.is_dicom:
            unchecked.append("colour image")
        elif not facts.is_color:
            reasons.append("model is for colour microscopy (stained tissue, 3 channels), "
                           "the image is grayscale")
    # population (card "population": image kind, age, view position)
    _match_population(pop, facts, reasons, warnings)
    ok = not reasons
    return Match(ok, score if ok else 0, reasons, warnings if ok else [], unchecked if ok else [])


def _match_population(pop, facts: SeriesFacts, reasons: list[str], warnings: list[str]) -> None:
    """The card's population: a known value outside it refuses, an unknown one is a warning
    (never a silent pass: the user is told what was not checked)."""
    if pop is None:
        return
    from .population import image_kind_of

    if pop.image_kind:
        kind = image_kind_of(facts.modality)
        if kind and kind != pop.image_kind:
            reasons.append(f"model is for a {pop.image_kind}, the series is a {kind} ({facts.modality})")
        elif not kind:
            warnings.append(f"the model is for a {pop.image_kind}: the image kind of "
                            f"{facts.modality or 'a plain image'} is not known, not checked")
    if pop.age_years is not None:
        ages = facts.patient_ages or (facts.patient_age_years,)
        known = [a for a in ages if a is not None]
        out = [a for a in known if not pop.age_fits(a)]
        if out:
            said = list(dict.fromkeys(_age_text(a) for a in known))
            reasons.append(f"model was trained on patients aged {pop.age_text()}, the patient is "
                           + (said[0] if len(said) == 1 else
                              f"{' or '.join(said)} (the images disagree)"))
        elif not known:
            warnings.append(f"patient age not given or not readable (PatientAge / birth date): the model was "
                            f"trained on patients aged {pop.age_text()}, not checked")
    if pop.view_positions:
        want = "/".join(pop.view_positions)
        vps = facts.view_positions or ((facts.view_position or "").upper().strip(),)
        known = [v for v in vps if v]
        out = [v for v in known if v not in pop.view_positions]
        if out:
            reasons.append(f"model was trained on {want} views, the series is {known[0]}" if len(known) == 1
                           else f"model was trained on {want} views, the series has {' and '.join(known)} "
                                f"images ({'/'.join(out)} not trained on)")
        elif not known:
            warnings.append(f"view position not given (ViewPosition): the model was trained on "
                            f"{want} views, not checked")
        elif "" in vps:
            warnings.append(f"view position not given (ViewPosition) on some images of the series: "
                            f"the model was trained on {want} views, not checked on those")


def _age_text(age: float) -> str:
    if age >= 2:
        return f"{int(age)} years"
    months = int(round(age * 12, 6))
    return f"{months} months" if months >= 1 else f"{int(round(age * 365.25))} days"


# =========================================================================== header values
def _first(recs, kw):
    for r in recs:
        get = getattr(r, "get", None)
        v = get(kw) if get is not None else None
        if v not in (None, ""):
            return v
    return None


def _int(v, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _extra_header(recs, kws: tuple[str, ...]) -> dict:
    """Population attributes (PatientAge, ViewPosition) as the index read them
    (``dicom.header.WANTED`` keeps both); None when the file does not have them."""
    return {k: _first(recs, k) for k in kws}


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.I)
_AGE_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _population(recs) -> dict:
    """``patient_age_years`` and ``view_position`` of the series (None / "" when unknown: the
    first values given), and every image's: ``patient_ages`` (the distinct known ages) and
    ``view_positions`` (distinct, "" for an image without one)."""
    if not recs:
        return {"patient_age_years": None, "view_position": "", "patient_ages": (), "view_positions": ()}
    extra = _extra_header(recs, ("PatientAge", "ViewPosition"))
    vp = extra["ViewPosition"]
    age = _age_years(recs, extra["PatientAge"])
    ages, vps, seen = [], [], set()
    for r in recs:
        raw = tuple(_first([r], k) for k in ("PatientAge", "PatientBirthDate", "StudyDate", "ViewPosition"))
        if raw in seen:  # the images of a series mostly agree: each distinct header once
            continue
        seen.add(raw)
        a = _age_years([r], raw[0])
        if a is not None and a not in ages:
            ages.append(a)
        v = _view(raw[3])
        if v not in vps:
            vps.append(v)
    return {"patient_age_years": age, "view_position": _view(vp),
            # the age is the patient's: an image without one is not a gap when another says it
            "patient_ages": tuple(ages) or ((age,) if age is not None else ()),
            "view_positions": tuple(vps)}


def _view(v) -> str:
    return str(v).upper().strip(" \x00") if v is not None else ""


def _age_years(recs, v) -> float | None:
    """PatientAge (``nnnD/W/M/Y``), else StudyDate - PatientBirthDate; None when unknown or
    implausible (no guess)."""
    if v is not None:
        m = _AGE.match(str(v))
        if m:
            years = int(m.group(1)) * _AGE_UNIT[m.group(2).upper()]
            return round(years, 3) if years <= 130 else None  # "999Y": unknown, never a guess
    born, when = _date(_first(recs, "PatientBirthDate")), _date(_first(recs, "StudyDate"))
    if born and when and when >= born:
        # completed calendar years (the card's age_years), plus the share of the current year:
        # days / 365.25 made a first birthday 0.999 years and a sixth 5.999
        done = when.year - born.year - ((when.month, when.day) < (born.month, born.day))
        last, nxt = _birthday(born, born.year + done), _birthday(born, born.year + done + 1)
        years = done + (when - last).days / (nxt - last).days
        if years <= 130:
            return min(round(years, 3), done + 0.999)
    return None


def _birthday(born: _dt.date, year: int) -> _dt.date:
    """The birthday in ``year`` (29 February on the 28th in other years)."""
    try:
        return born.replace(year=year)
    except ValueError:
        return born.replace(year=year, day=28)


def _date(v) -> _dt.date | None:
    """A DA (``YYYYMMDD``, or ``YYYY.MM.DD`` as PS3.5 asks readers to accept) as a date; None
    for anything else ("19940305XYZ", a partial date), as the priors read a StudyDate."""
    from ..viewing import parse_date  # viewing imports no Qt (and not this module)

    return parse_date(v)

