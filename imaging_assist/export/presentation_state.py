"""The viewer's measurements and annotations as a Grayscale Softcopy Presentation State (GSPS).

No Qt here.  Many PACS viewers and reading workstations draw a GSPS's annotations and not an
SR's regions; :mod:`.sr_measurements` writes the TID 1500 SR (the measurements as coded
values), this module the same items as graphics a reader sees over the image (highdicom's
``GrayscaleSoftcopyPresentationState``, which validates the object):

* ruler, angle, arrow (tail to tip): POLYLINE; polygon and freehand: a closed POLYLINE;
  rectangle: a closed POLYLINE of its corners; ellipse: ELLIPSE (its axes are the box's);
  a note: a text object anchored at its point;
* each item's values as the viewer labels it ("12.3 mm", "Mean 35.2 HU ...") in a text object
  beside it, and an arrow's text at its tail;
* PIXEL units, (column, row) with the first pixel's top left corner at (0, 0): the viewer's
  (u, v) + 0.5; one graphic annotation per image, on the acquired slices only (an item on a
  reformatted plane is named in a warning, as for the SR); one graphic layer,
  "MEASUREMENTS", in the viewer's measurement colour.

The window stays the images' own (highdicom copies it): the state adds annotations, not a
different display (a MONOCHROME1 image's state says Presentation LUT Shape INVERSE, so that it
shows the way round the image itself does).  :func:`imaging_assist.dicom.presentation_state.read_presentation_state`
reads it back (tests, and any GSPS a workstation wrote).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import dicom_common as dc

LAYER = "MEASUREMENTS"
LAB_CYAN = (77.0, -27.0, -33.0)  # CIELab of the viewer's measurement colour #4fd1ff
GRAPHIC_KINDS = ("ruler", "angle", "arrow", "polygon", "freehand", "rectangle", "ellipse", "text")


ELLIPSE_VERTICES = 72  # an ellipse that leaves the image is written as its outline, clipped


def _objects(m, cols: int, rows: int, warnings: list | None = None) -> tuple[list, list]:
    """(graphic objects, text objects) of one measurement, in PIXEL units."""
    import highdicom as hd

    P = hd.pr.AnnotationUnitsValues.PIXEL
    pts = np.asarray(m.points, float) + 0.5
    if m.kind == "ellipse":
        (u0, v0), (u1, v1) = pts[0], pts[1]
        if min(u0, u1) < 0 or min(v0, v1) < 0 or max(u0, u1) > cols or max(v0, v1) > rows:
            # clipping its box would move the centre and swap the axes (another ellipse): the
            # outline as a closed polyline, cut at the edge, is the part of the ellipse shown
            t = np.linspace(0.0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
            cu, cv, ru, rv = (u0 + u1) / 2, (v0 + v1) / 2, abs(u1 - u0) / 2, abs(v1 - v0) / 2
            pts = np.stack([cu + ru * np.cos(t), cv + rv * np.sin(t)], axis=1)
            m = _Outline(m, "polygon")
    # highdicom (rightly) refuses coordinates off the image: a point dragged past the edge is
    # drawn on the edge, and the label says the line is cut there
    clipped = bool(((pts[:, 0] < 0) | (pts[:, 0] > cols) | (pts[:, 1] < 0) | (pts[:, 1] > rows)).any())
    pts[:, 0] = np.clip(pts[:, 0], 0.0, float(cols))
    pts[:, 1] = np.clip(pts[:, 1], 0.0, float(rows))
    if clipped and warnings is not None:
        warnings.append(f"GSPS: measurement {m.id} ({m.kind}) reaches past the image: drawn cut at its edge, "
                        "the values are those of the whole measurement")
    graphics, texts = [], []
    if m.kind in ("ruler", "angle"):
        graphics.append(hd.pr.GraphicObject("POLYLINE", pts, P))
    elif m.kind == "arrow":
        graphics.append(hd.pr.GraphicObject("POLYLINE", pts[::-1], P))  # tail to tip (the tip is drawn first)
    elif m.kind in ("polygon", "freehand"):
        graphics.append(hd.pr.GraphicObject("POLYLINE", dc.at_most_points(np.vstack([pts, pts[:1]]), closed=True), P))
    elif m.kind == "rectangle":
        (u0, v0), (u1, v1) = pts[0], pts[1]
        graphics.append(hd.pr.GraphicObject("POLYLINE", np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1], [u0, v0]]), P))
    elif m.kind == "ellipse":
        (u0, v0), (u1, v1) = pts[0], pts[1]
        cu, cv, ru, rv = (u0 + u1) / 2, (v0 + v1) / 2, abs(u1 - u0) / 2, abs(v1 - v0) / 2
        data = dc.ellipse_axes(cu, cv, ru, rv)
        graphics.append(hd.pr.GraphicObject("ELLIPSE", data, P))
    lines = [str(t) for t in ((m.result or {}).get("display_text") or (m.result or {}).get("text") or [])]
    note = dc.dicom_text(getattr(m, "text", "") or "", backslash=False).strip()
    if m.kind == "text":
        if note:
            texts.append(hd.pr.TextObject(note, P, anchor_point=tuple(pts[0]), anchor_point_visible=False))
    elif m.kind == "arrow":
        if note:
            texts.append(hd.pr.TextObject(note, P, anchor_point=tuple(pts[1]), anchor_point_visible=False))
    elif lines:
        right = float(min(pts[:, 0].max() + 4.0, cols))
        top = float(pts[:, 1].min())
        if clipped:
            lines = lines + ["(drawn cut at the image edge)"]
        texts.append(hd.pr.TextObject(dc.dicom_text("; ".join(lines), backslash=False), P, anchor_point=(right, top),
                                      anchor_point_visible=False))
    return graphics, texts


class _Outline:
    """A measurement seen as another kind (its values and id kept)."""

    def __init__(self, m, kind: str):
        self._m, self.kind = m, kind

    def __getattr__(self, name):
        return getattr(self._m, name)


def _lut_kwargs(volume, datasets, multiframe: bool, warnings: list) -> dict:
    """The Modality and VOI LUT arguments of highdicom's GSPS where it cannot take them from the
    referenced multi-frame images (``datasets``) itself (it reads one image's functional groups only):

    * multi-frame images without functional groups (XA/US/NM cine, also several runs of a
      series): the files' own rescale (else the identity), refused in one line when they differ,
      and each file's own window (else the viewer's automatic window, said);
    * an enhanced image whose frames carry their rescale per frame: that rescale when every
      frame has the same (a presentation state holds one, PS3.3 C.11.1), else refused in one line."""
    import highdicom as hd

    if not multiframe:
        return {}
    ds = datasets[0]
    if any("SharedFunctionalGroupsSequence" in d for d in datasets) and len(datasets) > 1:
        raise dc.DicomExportError(
            f"presentation state not written: the measurements lie on {len(datasets)} enhanced multi-frame "
            "images: it is written only when they all lie on one of them")
    if "SharedFunctionalGroupsSequence" in ds:
        pf = ds.get("PerFrameFunctionalGroupsSequence") or []
        pvt = [it.PixelValueTransformationSequence[0] for it in pf if it.get("PixelValueTransformationSequence")]
        if not pvt:
            return {}
        found = {(float(x.get("RescaleSlope", 1) or 1), float(x.get("RescaleIntercept", 0) or 0),
                  str(x.get("RescaleType", "") or "")) for x in pvt}
        if len(pvt) != len(pf) or len(found) > 1:
            raise dc.DicomExportError(
                f"presentation state not written: the frames of this image have {len(found)} different rescales "
                f"({len(pvt)} of {len(pf)} frames give one); a presentation state holds one for all")
        slope, icpt, rtype = found.pop()
        return {"modality_lut_transformation": hd.ModalityLUTTransformation(
            rescale_intercept=icpt, rescale_slope=slope, rescale_type=rtype or "US")}
    found = {(float(d.get("RescaleIntercept", 0) or 0), float(d.get("RescaleSlope", 1) or 1),
              str(d.get("RescaleType", "") or "US")) for d in datasets}
    if len(found) > 1:
        raise dc.DicomExportError(
            f"presentation state not written: the {len(datasets)} images the measurements lie on have "
            f"{len(found)} different rescales; a presentation state holds one for all")
    icpt, slope, rtype = found.pop()
    kw = {"modality_lut_transformation": hd.ModalityLUTTransformation(
        rescale_intercept=icpt, rescale_slope=slope, rescale_type=rtype)}
    first = (lambda v: float(v[0]) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else float(v))
    by_window: dict[tuple[float, float], list] = {}
    for d in datasets:
        c, w = d.get("WindowCenter"), d.get("WindowWidth")
        if c is not None and w is not None:
            center, width = first(c), first(w)
        else:
            from ..display import default_window

            win = default_window(volume)
            center, width = float(win.center), float(win.width)
            why = f"GSPS: the image has no window of its own: the viewer's automatic window (C {center:g} W {width:g}) is written"
            if why not in warnings:
                warnings.append(why)
        if width <= 0:
            raise dc.DicomExportError(f"presentation state not written: the image's window width {width:g} is not positive")
        by_window.setdefault((center, width), []).append(d)
    # one window for all the images, or each item naming the images it applies to (highdicom
    # requires that of several items)
    kw["voi_lut_transformations"] = [hd.pr.SoftcopyVOILUTTransformation(
        window_center=c, window_width=w,
        referenced_images=hd.ReferencedImageSequence(referenced_images=ims) if len(by_window) > 1 else None)
        for (c, w), ims in by_window.items()]
    return kw


def _presentation_lut_kwargs(datasets) -> dict:
    """The Presentation LUT Shape of images shown as their files say: INVERSE for MONOCHROME1
    (minimum white), which highdicom would write IDENTITY - a state over a MONOCHROME1 image
    would then show it inverted in other viewers (dcmtk's dcmpsmk writes INVERSE too).  One
    state holds one Presentation LUT: images of both kinds are refused in one line."""
    import highdicom as hd

    kinds = {str(d.get("PhotometricInterpretation", "") or "").strip().upper() for d in datasets}
    if "MONOCHROME1" not in kinds:
        return {}
    if len(kinds) > 1:
        raise dc.DicomExportError(
            "presentation state not written: the measurements lie on MONOCHROME1 and "
            f"{'/'.join(sorted(k or 'unknown' for k in kinds - {'MONOCHROME1'}))} images; a presentation "
            "state shows them all through one presentation LUT (inverted or not)")
    return {"presentation_lut_transformation": hd.PresentationLUTTransformation(
        presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE)}


def _pixel_aspect(ps, volume) -> None:
    """The displayed area's Presentation Pixel Aspect Ratio (row spacing : column spacing, PS3.3
    C.10.4) of the image as the viewer shows it; highdicom always writes 1:1, which would show
    non-square pixels square."""
    from fractions import Fraction

    sx, sy = (float(v) for v in tuple(volume.spacing)[:2])
    if not (sx > 0 and sy > 0) or abs(sy / sx - 1.0) < 1e-6:
        return
    r = Fraction(sy / sx).limit_denominator(10000)
    for item in ps.DisplayedAreaSelectionSequence:
        if "PresentationPixelAspectRatio" in item:
            item.PresentationPixelAspectRatio = [r.numerator, r.denominator]


def build_presentation_state(volume, measurements, *, warnings: list | None = None, datasets=None,
                             series_number: int | None = None):
    """A GSPS of the measurements on the acquired slices (raises
    :class:`~.dicom_common.DicomExportError` in one line when there is nothing to draw)."""
    import warnings as _warnings

    import highdicom as hd

    warnings = warnings if warnings is not None else []
    datasets = datasets if datasets is not None else dc.source_datasets(volume)
    rows, cols = int(volume.array.shape[1]), int(volume.array.shape[2])
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="measurements and annotations",
                               display_color=hd.color.CIELabColor(*LAB_CYAN))
    per_slice: dict[int, tuple[list, list]] = {}
    for m in measurements or []:
        if getattr(m, "axis", 0) != 0:
            warnings.append(f"GSPS: measurement {m.id} on a reformatted plane is not exported "
                            "(DICOM references acquired images)")
            continue
        if m.kind not in GRAPHIC_KINDS:
            warnings.append(f"GSPS: measurement {m.id} ({m.kind}) is not exported")
            continue
        g, t = _objects(m, cols, rows, warnings)
        if not g and not t:
            continue
        acc = per_slice.setdefault(int(m.index), ([], []))
        acc[0].extend(g)
        acc[1].extend(t)
    if not per_slice:
        raise dc.DicomExportError("nothing to export on the acquired images: no measurement or annotation there")
    annotations, referenced = [], []
    for k in sorted(per_slice):
        src, frames = dc.slice_source(volume, datasets, k)
        g, t = per_slice[k]
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[src], graphic_layer=layer, graphic_objects=g or None, text_objects=t or None,
            **({"referenced_frame_number": frames[0]} if frames else {})))
        if all(src is not r for r in referenced):
            referenced.append(src)
    # the LUTs are those of the images the state references (highdicom reads them from one
    # multi-frame image only, and from its functional groups)
    multiframe = dc.is_multiframe_source(volume, datasets) or any(dc.n_frames(ds) > 1 for ds in referenced)
    lut_kw = _lut_kwargs(volume, referenced, multiframe, warnings)
    lut_kw.update(_presentation_lut_kwargs(referenced))
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # highdicom's notes on the source's person names
        ps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=referenced, series_instance_uid=dc.new_uid(),
            series_number=series_number or dc.series_number_after(datasets, 6), sop_instance_uid=dc.new_uid(),
            instance_number=1, content_label="MEASUREMENTS",
            content_description="Measurements and annotations; not for clinical use",
            graphic_layers=[layer], graphic_annotations=annotations,
            specific_character_set=dc.CHARSET,
            **lut_kw, **dc.equipment_kwargs())
    _pixel_aspect(ps, volume)
    ps.SeriesDescription = dc.described("Measurements and annotations (presentation state)")
    dc.finalize(ps, datasets)
    dc.add_laterality(ps, datasets)  # General Series Laterality, Type 2C (dciodvfy)
    return ps


def write_presentation_state(volume, measurements, out_path, *, warnings: list | None = None) -> Path:
    """Write the GSPS (atomically enough for one file: a temporary name, renamed over ``out_path``
    once complete, removed on any error)."""
    from ..outputs import written_beside
    from ..privacy.audit import record_export

    with dc.building("presentation state"):
        ps = build_presentation_state(volume, measurements, warnings=warnings)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with written_beside(out_path) as tmp, dc.building("presentation state"):
        ps.save_as(tmp)
    record_export("GSPS", out_path, volume)  # the audit trail (never raises)
    return out_path


__all__ = ["build_presentation_state", "write_presentation_state", "GRAPHIC_KINDS"]
