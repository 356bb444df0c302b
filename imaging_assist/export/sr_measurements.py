"""The viewer's measurements and annotations as a DICOM SR (TID 1500 Measurement Report).

No Qt here.  Rulers, ellipses and rectangles are written by :mod:`.sr` (``_viewer_groups``);
this module adds the other kinds there (:func:`annotation_group`) and writes a report of
measurements alone (:func:`write_measurement_sr`):

* polygon / freehand ROI: a planar ROI group (TID 1410) whose region is a closed POLYLINE
  SCOORD on the referenced slice, with mean, SD, min, max (HU for CT) and area (mm², or
  pixels when the spacing is unknown);
* angle: a planar ROI group, POLYLINE of its three points, with the angle in degrees;
* arrow and text: a planar ROI group with the arrow's POLYLINE (tip first) or the note's
  POINT, and the note as a TEXT item "Comment" (DCM 121106).  TID 1410 has no row for free
  text: this is a private extension readers may ignore (the geometry is standard).

SCOORD coordinates put the first pixel's centre at (0.5, 0.5) (the viewer's at (0, 0)).
:func:`read_measurement_sr` reads a written report back (tests, and a check after writing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COMMENT = ("121106", "DCM", "Comment")


def _region(m, src, frames):
    import highdicom as hd

    pts = np.asarray(m.points, float) + 0.5
    if m.kind in ("polygon", "freehand"):
        pts = np.vstack([pts, pts[:1]])  # a closed polyline repeats its first point
        from . import dicom_common as dc

        pts = dc.at_most_points(pts, closed=True)  # readable by others (FL, not UN)
    if m.kind == "arrow":
        pts = pts[::-1]  # tip (the first point drawn) last -> first
    gt = hd.sr.GraphicTypeValues.POINT if m.kind == "text" else hd.sr.GraphicTypeValues.POLYLINE
    rsrc = (hd.sr.SourceImageForRegion.from_source_image(src, referenced_frame_numbers=frames)
            if frames else hd.sr.SourceImageForRegion.from_source_image(src))
    data = pts[:1] if m.kind == "text" else pts
    return hd.sr.ImageRegion(graphic_type=gt, graphic_data=data, source_image=rsrc)


def annotation_group(m, r: dict, volume, src, frames, tid):
    """A TID 1500 group for a polygon, freehand, angle, arrow or text item, or None (the
    caller warns) when the kind is not one of these or it has no value yet."""
    import highdicom as hd

    from . import dicom_common as dc
    from .sr import _cc, _unit

    mm = r.get("length_unit", "mm") == "mm"
    meas = []
    if m.kind in ("polygon", "freehand") and r.get("n"):
        unit = _unit("hu") if (r.get("units") or getattr(volume, "units", "")) == "HU" else _unit("1")
        for code, meaning, key in (("373098007", "Mean", "mean"), ("386136009", "Standard Deviation", "sd"),
                                   ("255605001", "Minimum", "min"), ("56851009", "Maximum", "max")):
            meas.append(hd.sr.Measurement(name=_cc(code, "SCT", meaning), value=float(r[key]), unit=unit))
        meas.append(hd.sr.Measurement(name=_cc("42798000", "SCT", "Area"), value=float(r["area_mm2"]),
                                      unit=_unit("mm2" if mm else "px2")))
    elif m.kind == "angle" and "angle" in r:
        meas.append(hd.sr.Measurement(name=_cc("1483009", "SCT", "Angle"), value=float(r["angle"]),
                                      unit=_unit("deg")))
    elif m.kind not in ("arrow", "text") or (m.kind == "text" and not m.text):
        return None
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tid, referenced_region=_region(m, src, frames), measurements=meas or None)
    if m.text:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=_cc(*COMMENT), value=dc.dicom_text(m.text), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def build_measurement_sr(volume, measurements, *, warnings: list | None = None, datasets=None,
                         series_number: int = 9905):
    """A Comprehensive 3D SR of the viewer's measurements alone (no model results)."""
    from . import dicom_common as dc
    from .sr import build_sr

    sr = build_sr(volume, [], measurements=measurements, datasets=datasets, series_number=series_number,
                  warnings=warnings)
    sr.SeriesDescription = dc.described("Measurements and annotations")
    return sr


def write_measurement_sr(volume, measurements, out_path, *, warnings: list | None = None) -> Path:
    """Write the SR (raises :class:`~.dicom_common.DicomExportError` in one line when nothing
    can be written, e.g. no measurement on a native slice): under a temporary name, renamed over
    ``out_path`` once complete (an existing file is never truncated; nothing is left on an error)."""
    from ..outputs import written_beside
    from ..privacy.audit import record_export
    from . import dicom_common as dc

    with dc.building("SR"):
        sr = build_measurement_sr(volume, measurements, warnings=warnings)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with written_beside(out_path) as tmp, dc.building("SR"):
        sr.save_as(tmp)
    record_export("SR", out_path, volume)  # the audit trail (never raises)
    return out_path


def read_measurement_sr(path) -> list[dict]:
    """Every measurement group of a TID 1500 SR: tracking id, kind (from our tracking id),
    graphic type and data, referenced SOP Instance UID, values {meaning: (value, unit)}, text."""
    import highdicom as hd

    sr = hd.sr.srread(str(path))
    out = []
    groups = list(sr.content.get_planar_roi_measurement_groups()) + list(sr.content.get_image_measurement_groups())
    for g in groups:
        tid = str(g.tracking_identifier or "")
        item = {"tracking_id": tid, "kind": tid.split()[1] if tid.startswith("viewer ") else "",
                "values": {ms.name.meaning: (float(ms.value), ms.unit.value) for ms in g.get_measurements()},
                "text": ""}
        roi = getattr(g, "roi", None)
        if roi is not None:
            item["graphic_type"] = roi.graphic_type.value
            item["graphic_data"] = np.asarray(roi.value, float).tolist()
            ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
            item["sop_instance_uid"] = str(ref.ReferencedSOPInstanceUID)
        for ci in g[0].ContentSequence:
            if ci.ValueType == "TEXT" and ci.ConceptNameCodeSequence[0].CodeValue == COMMENT[0]:
                item["text"] = str(ci.TextValue)
        out.append(item)
    return out


__all__ = ["annotation_group", "build_measurement_sr", "write_measurement_sr", "read_measurement_sr"]
