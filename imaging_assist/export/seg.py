"""DICOM Segmentation (SEG) of a label map, with highdicom.

One SEG per label map: BINARY segments (one per structure the model names), SNOMED CT
coded category/type where known, algorithm identification (model id, version).  3D series
carry per-frame Plane Position (Patient) from the engine's Volume (:mod:`.dicom_common`);
single-frame projection/US images without patient geometry are referenced pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..privacy.audit import record_export
from . import dicom_common as dc


def build_seg(volume, label_map: np.ndarray, labels, *, model_id: str, model_version: str,
              series_number: int = 9901, datasets=None, series_uid: str | None = None,
              warnings: list | None = None, code_labels=None, tracking=None):
    """A ``highdicom.seg.Segmentation`` of ``label_map`` ([k, j, i] on the Volume's grid;
    value = index into ``labels``, 0 background).  ``warnings`` collects what was assumed.

    ``code_labels`` (parallel to ``labels``): the names whose codes describe each segment when
    the segment labels are instance names (CT nodules: "nodule N1" coded as "nodule");
    ``tracking``: per segment (1..n) a (Tracking ID, Tracking UID) pair, shared with the SR."""
    import highdicom as hd

    datasets = datasets if datasets is not None else dc.source_datasets(volume)
    lm = np.asarray(label_map)
    if lm.ndim == 2:
        lm = lm[None]
    if lm.shape != tuple(volume.shape[:3]):
        raise dc.DicomExportError(f"label map shape {lm.shape} is not the image's {tuple(volume.shape[:3])}")
    if lm.size and (lm.min() < 0 or not np.all(np.isfinite(lm))):
        raise dc.DicomExportError("label map holds negative or non-finite values")
    names = [str(x) for x in (labels.values() if isinstance(labels, dict) else labels)]
    n_seg = int(lm.max(initial=0))
    if n_seg >= len(names):
        raise dc.DicomExportError(f"label map value {n_seg} has no name (labels: {', '.join(names)})")
    n_seg = len(names) - 1  # every structure the model names is described, present or not
    if n_seg < 1:
        raise dc.DicomExportError("the label map has no structure besides the background")
    lm = lm.astype(np.uint8 if n_seg < 256 else np.uint16, copy=False)
    algo = dc.algorithm_identification(model_id, model_version)
    descs = []
    coded = [str(x) for x in code_labels] if code_labels is not None else names
    for s in range(1, n_seg + 1):
        cat, typ, standard = dc.label_codes(coded[s])
        tid, tuid = (tracking[s - 1] if tracking is not None else (None, None))
        if not standard and warnings is not None:
            warnings.append(f"SEG: label {names[s]!r} has no SNOMED CT code here; written with a "
                            f"local code ({dc.LOCAL_SCHEME})")
        descs.append(hd.seg.SegmentDescription(
            segment_number=s, segment_label=names[s][:64],
            segmented_property_category=cat, segmented_property_type=typ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, tracking_id=tid, tracking_uid=tuid))
    kw = dict(source_images=datasets, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
              segment_descriptions=descs, series_instance_uid=series_uid or dc.new_uid(),
              series_number=series_number, sop_instance_uid=dc.new_uid(), instance_number=1,
              content_description=dc.described(f"{model_id} {model_version} labels"),
              content_label="AI_LABELS", series_description=dc.described(f"AI {model_id} SEG"),
              omit_empty_frames=bool(lm.any()), specific_character_set=dc.CHARSET,
              **dc.equipment_kwargs())
    if dc.has_patient_geometry(volume, datasets):
        kw["source_images"] = dc.shared_geometry_source(volume, datasets)
        pos = dc.slice_positions_lps(volume)
        kw["plane_positions"] = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, p)
                                 for p in pos]
        kw["plane_orientation"] = hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT,
                                                              dc.orientation(volume))
        kw["pixel_measures"] = hd.PixelMeasuresSequence(dc.pixel_spacing(volume),
                                                        dc.slice_thickness(volume, datasets))
    else:
        if len(datasets) != lm.shape[0] and not dc.is_multiframe_source(volume, datasets):
            raise dc.DicomExportError("the image has no patient geometry and its frames do not match "
                                      "its source files one to one")
        kw["source_images"] = dc.projection_sources(volume, datasets)
        if "PixelSpacing" in kw["source_images"][0]:
            kw["pixel_measures"] = hd.PixelMeasuresSequence(dc.pixel_spacing(volume),
                                                            dc.slice_thickness(volume, datasets))
    try:
        seg = hd.seg.Segmentation(pixel_array=lm, **kw)
    except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as e:
        raise dc.DicomExportError(f"SEG not written: {e}".splitlines()[0]) from None
    dc.point_frames_at_the_stack(seg, volume, datasets)
    if dc.has_patient_geometry(volume, datasets):
        dc.thickness_per_frame(seg, volume, datasets)
    dc.finalize(seg, datasets)
    return seg


def write_seg(volume, label_map, labels, out_path, **kw) -> Path:
    seg = build_seg(volume, label_map, labels, **kw)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path)
    record_export("SEG", out_path, volume)  # the audit trail (never raises)
    return out_path
