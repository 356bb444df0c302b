"""DICOM Parametric Map of a heat map (float32, real-world value mapping), with highdicom.

Values are written as computed (float32, NaN where nothing was computed), so a reader gets
the same numbers as ``results.json``'s heat-map file.  The quantity is coded: Grad-CAM as
DCM 130403 "Gradient-weighted class activation", saliency DCM 130404, other attribution
methods (integrated gradients, occlusion) with a local code, as DICOM has none for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dicom.result_objects import FLAGGED_PREFIX
from ..privacy.audit import record_export
from . import dicom_common as dc

_METHOD_CODES = {
    "gradcam": ("130403", "DCM", "Gradient-weighted class activation"),
    "saliency": ("130404", "DCM", "Saliency"),
    "integrated_gradients": ("IG", dc.LOCAL_SCHEME, "Integrated gradients attribution"),
    "occlusion": ("OCCL", dc.LOCAL_SCHEME, "Occlusion attribution"),
}


def quantity_code(method: str):
    from highdicom.sr import CodedConcept

    v, s, m = _METHOD_CODES.get(method, ("ATTR", dc.LOCAL_SCHEME, f"{method} attribution"[:64]))
    return CodedConcept(v, s, m)


_NOMINAL_NOTE = ("Parametric Map of an image without patient geometry: written on its own new frame "
                 "of reference with a nominal plane over the source pixel grid ({sp}); it matches the "
                 "source pixel for pixel, not a position in the patient")


def build_parametric_map(volume, heat: np.ndarray, *, label: str, method: str, model_id: str,
                         model_version: str, series_number: int = 9902, datasets=None,
                         series_uid: str | None = None, warnings: list | None = None,
                         flags: list | None = None):
    """A ``highdicom.pm.ParametricMap`` of ``heat`` ([k, j, i] float on the Volume's grid);
    ``flags``: the engine's reasons not to trust the map (results.json ``heatmaps[].flags``)."""
    import highdicom as hd

    datasets = datasets if datasets is not None else dc.source_datasets(volume)
    h = np.asarray(heat)
    if h.ndim == 2:
        h = h[None]
    if h.shape != tuple(volume.shape[:3]):
        raise dc.DicomExportError(f"heat map shape {h.shape} is not the image's {tuple(volume.shape[:3])}")
    h = h.astype(np.float32, copy=False)
    if np.isinf(h).any():
        raise dc.DicomExportError(f"heat map {label}/{method} holds infinite values")
    finite = h[np.isfinite(h)]
    if finite.size == 0:
        raise dc.DicomExportError(f"heat map {label}/{method} has no computed value (all NaN)")
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    rwvm = hd.pm.RealWorldValueMapping(
        lut_label=method[:16], lut_explanation=f"{method} for {label}"[:64],
        unit=hd.sr.CodedConcept("1", "UCUM", "no units"), value_range=(lo, hi),
        slope=1.0, intercept=0.0, quantity_definition=quantity_code(method))
    kw = dict(source_images=datasets, series_instance_uid=series_uid or dc.new_uid(),
              series_number=series_number, sop_instance_uid=dc.new_uid(), instance_number=1,
              contains_recognizable_visual_features=False, real_world_value_mappings=[rwvm],
              content_label="AI_HEATMAP",
              content_description=dc.described(f"{model_id} {model_version} {method} {label}"),
              series_description=dc.described(f"AI {model_id} heat map {label}"),
              specific_character_set=dc.CHARSET, **dc.equipment_kwargs())
    # LINEAR_EXACT: a LINEAR window narrower than 1 is not allowed (PS3.3 C.11.2.1.2), and
    # heat maps usually span [0, 1]
    kw["voi_lut_transformations"] = [hd.VOILUTTransformation(
        window_center=(lo + hi) / 2.0, window_width=hi - lo, voi_lut_function="LINEAR_EXACT")]
    # The Parametric Map IOD requires a Frame of Reference and plane position/orientation,
    # which a CR/DX/US image without patient geometry does not have.  The map then gets a
    # NEW frame of reference of its own (shared with nothing, so it cannot be mistaken for
    # the patient's) on a nominal plane over the source's pixel grid, and says so; pixel
    # correspondence with the source is carried by the derivation reference.
    nominal = not dc.has_patient_geometry(volume, datasets)
    if not nominal:
        kw["source_images"] = dc.shared_geometry_source(volume, datasets)
    pos = dc.slice_positions_lps(volume)
    kw["plane_positions"] = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, p) for p in pos]
    kw["plane_orientation"] = hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT,
                                                          dc.orientation(volume))
    kw["pixel_measures"] = hd.PixelMeasuresSequence(dc.pixel_spacing(volume),
                                                    dc.slice_thickness(volume, datasets))
    try:
        if nominal:
            srcs = _nominal_sources(volume, datasets, pos)
            pm = hd.pm.ParametricMap(pixel_array=h, **dict(kw, source_images=srcs))
            pm.ImageComments = _NOMINAL_NOTE.format(sp="nominal plane")[:10240]
        else:
            pm = hd.pm.ParametricMap(pixel_array=h, **kw)
    except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as e:
        raise dc.DicomExportError(f"Parametric Map not written: {e}".splitlines()[0]) from None
    said = [str(f) for f in flags or () if f]
    if said:
        note = FLAGGED_PREFIX + " | ".join(said)
        pm.ImageComments = (f"{pm.ImageComments}. {note}" if "ImageComments" in pm else note)[:10240]
    if not nominal:
        dc.point_frames_at_the_stack(pm, volume, datasets)
        dc.thickness_per_frame(pm, volume, datasets)
    elif warnings is not None:  # said once the map is there (not for one that failed)
        warnings.append(_NOMINAL_NOTE.format(sp="the image's pixel spacing" if volume.spacing_known
                                            else "1 mm per pixel, nominal: the pixel size is unknown"))
    dc.finalize(pm, datasets)
    dc.add_laterality(pm, datasets)
    return pm


def _nominal_sources(volume, datasets, pos):
    """The source headers on the nominal plane (:func:`dc.with_nominal_geometry`).  highdicom
    reads a multi-frame source's geometry from its functional groups only, which a US/XA cine
    does not have: the copy of one gets shared Pixel Measures / Plane Orientation and each
    frame the nominal position of the slice that shows it, so that every map frame references
    its own source frame (never written: the map's own groups are made from ``pos``)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.valuerep import format_number_as_ds

    srcs = [dc.with_nominal_geometry(ds, volume) for ds in datasets]
    if len(srcs) != 1 or dc.n_frames(srcs[0]) <= 1:
        if any(dc.n_frames(ds) > 1 for ds in srcs):
            # highdicom takes the first file's frames only: the others' would reference nothing
            raise dc.DicomExportError(f"Parametric Map not written: the series is {len(srcs)} multi-frame "
                                      "files without patient geometry; a map is written for one such file only")
        return srcs
    src = dc.shared_geometry_source(volume, srcs)[0]
    n = dc.n_frames(src)
    at = {dc.frame_number(volume, k) - 1: k for k in range(len(pos))}
    step = (pos[1] - pos[0]) if len(pos) > 1 else np.array([0.0, 0.0, 1.0])
    per = []
    for f in range(n):
        k = at.get(f)
        # a frame no slice shows: a position past the stack, which no map frame matches
        p = pos[k] if k is not None else pos[-1] + step * (len(pos) + f)
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [format_number_as_ds(float(v)) for v in p]
        item.PlanePositionSequence = Sequence([plane])
        per.append(item)
    src.PerFrameFunctionalGroupsSequence = Sequence(per)
    return [src]


def write_parametric_map(volume, heat, out_path, **kw) -> Path:
    pm = build_parametric_map(volume, heat, **kw)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pm.save_as(out_path)
    record_export("PM", out_path, volume)  # the audit trail (never raises)
    return out_path
