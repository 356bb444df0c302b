"""How the viewer names the pixel size behind a length or area (``Volume.spacing_source``).

No Qt here.  Every length/area the viewer shows carries :func:`spacing_note`; the corner
annotation carries :func:`corner_note` when lengths are not plain patient mm."""

from __future__ import annotations

# sources whose mm are patient mm as measured (no corner note needed)
PATIENT_MM = ("PixelSpacing", "calibrated")


def spacing_note(source: str | None) -> str:
    """``(ImagerPixelSpacing/ERMF)``, ``(no pixel spacing)``; "" when the source is unknown."""
    if not source:
        return ""
    return "(no pixel spacing)" if source == "none" else f"({source})"


def corner_note(source: str | None, regions: bool = False) -> str | None:
    """One annotation line when lengths are not patient mm, else None.  ``regions``: the image
    has calibrated ultrasound regions (``Volume.calibrated_regions``) and no pixel size as a whole."""
    if source in (None, "", *PATIENT_MM):
        return None
    if source == "none":
        return "Lengths in mm inside the calibrated region, else px" if regions else \
            "Lengths in px (no pixel spacing)"
    # kept short: the corner has half the view's width
    if source == "ImagerPixelSpacing":
        return "mm at the detector (ImagerPixelSpacing)"
    if source == "ImagerPixelSpacing/ERMF":
        return "mm est. at patient (ImagerPixelSpacing/ERMF)"
    return f"Lengths in mm ({source})"
