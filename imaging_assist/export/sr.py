"""Comprehensive 3D SR, TID 1500 Measurement Report, with highdicom: one per model.

Content (per model): device observer context (this software, the model), algorithm
identification on every group; for a classifier one group per label with the probability,
the operating threshold and the decision (present/absent) — or, when the input was flagged
as outside the model's training data (``ood.flagged``), that statement and no decision; for
a segmenter one ROI group per structure referencing its SEG segment, with its volume (mL) or
area (mm², or pixels when the spacing is unknown) and, when the input was flagged as outside
the training data or the segmentation failed its quality checks, that statement; the viewer's measurements (length in mm,
ROI mean/SD with the region) when exported from the GUI.  The image library lists the
source images and the Parametric Maps; SEGs are referenced from their segments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..jsonvalues import is_number
from ..models.operating_point import label_state
from ..privacy.audit import record_export
from . import dicom_common as dc

_UNITS = {"ml": ("ml", "milliliter"), "mm2": ("mm2", "square millimeter"),
          "mm": ("mm", "millimeter"), "1": ("1", "no units"), "px": ("{pixels}", "pixels"),
          "px2": ("{pixels}", "pixels"), "hu": ("[hnsf'U]", "Hounsfield unit"), "deg": ("deg", "degree"),
          "mm3": ("mm3", "cubic millimeter"), "%": ("%", "percent"), "d": ("d", "day")}

_FINDING_CODES = {
    "pneumonia": ("233604007", "SCT", "Pneumonia"),
    "normal": ("17621005", "SCT", "Normal"),
    "malignant": ("363346000", "SCT", "Malignant neoplastic disease"),
    "benign": ("20376005", "SCT", "Benign neoplastic disease"),
}


def _cc(value, scheme, meaning):
    from highdicom.sr import CodedConcept

    return CodedConcept(str(value), scheme, str(meaning)[:64])


def _unit(key: str):
    v, m = _UNITS[key]
    return _cc(v, "UCUM", m)


def _local(value: str, meaning: str):
    v = ("".join(c if c.isalnum() else "-" for c in value.upper()))[:16] or "X"
    return _cc(v, dc.LOCAL_SCHEME, meaning)


def _state(decision, label: str, fallback: str) -> str:
    """The decision state of ``label`` (positive / review / negative) as the engine decided it."""
    x = label_state(decision if isinstance(decision, dict) else None, label)
    return str(x.get("state")) if x and x.get("state") in ("positive", "review", "negative") else fallback


def _finding_evaluation(label: str, state: str):
    """TID 1501 qualitative evaluation of a decision state: the finding Present or Absent; for
    "review" (above a rule-out threshold while another class is more likely) the model's
    decision "Review", since Present would state a finding the engine did not make."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if state == "review":
        return hd.sr.QualitativeEvaluation(_local("DECISION", "Model decision"),
                                           _local("REVIEW", "Review: above the rule-out threshold, not the most likely class"))
    return hd.sr.QualitativeEvaluation(finding_code(label), codes.DCM.Present if state == "positive" else codes.DCM.Absent)


def finding_code(label: str):
    key = " ".join(str(label).lower().replace("_", " ").split())
    if key in _FINDING_CODES:
        return _cc(*_FINDING_CODES[key])
    _, typ, standard = dc.label_codes(label)
    return typ if standard else _local("F-" + key, str(label))


def _algo(model_id, version):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=str(model_id)[:64], version=str(version or "unknown")[:64])


def _frames_of_segment(seg, segment_number: int) -> list[int]:
    """SEG frame numbers of a segment (the segment identification is per frame, or shared
    when the SEG has a single segment)."""
    shared = (getattr(seg, "SharedFunctionalGroupsSequence", None) or [None])[0]
    if shared is not None and "SegmentIdentificationSequence" in shared:
        same = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == segment_number
        return list(range(1, int(getattr(seg, "NumberOfFrames", 1)) + 1)) if same else []
    out = []
    for n, item in enumerate(getattr(seg, "PerFrameFunctionalGroupsSequence", []) or [], 1):
        sid = item.get("SegmentIdentificationSequence")
        if sid and int(sid[0].ReferencedSegmentNumber) == segment_number:
            out.append(n)
    return out


def _classifier_groups(res: dict, datasets, warnings: list) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = _algo(res.get("model"), res.get("model_version"))
    ood = res.get("ood") or {}
    flagged = bool(ood.get("flagged"))
    groups = []
    decisions = res.get("decisions") or {}
    for label, p in (res.get("probabilities") or {}).items():
        if p is None or not np.isfinite(float(p)):
            continue
        meas = [hd.sr.Measurement(name=codes.DCM.Probability, value=float(p), unit=_unit("1"),
                                  algorithm_id=algo)]
        qual = []
        dec = decisions.get(label)
        if flagged:
            qual.append(hd.sr.QualitativeEvaluation(
                _local("IN-TRAIN-DOMAIN", "Input within the model's training data"),
                _cc("373067005", "SCT", "No")))
        elif dec and (dec.get("withheld") or dec.get("positive") is None):
            # a withheld decision (research override: the card does not fit) is neither Present
            # nor Absent: "Absent" would state a finding the result does not make
            qual.append(hd.sr.QualitativeEvaluation(_local("DECISION", "Model decision"),
                                                    _local("WITHHELD", "Withheld")))
            warnings.append(f"SR {res.get('model')} {label}: decision withheld "
                            f"({dec.get('withheld') or 'no decision'}): no Present/Absent written")
        elif dec:
            meas.append(hd.sr.Measurement(name=_local("OP-THRESHOLD", "Operating threshold"),
                                          value=float(dec["threshold"]), unit=_unit("1"),
                                          algorithm_id=algo))
            # TID 1501 qualitative evaluation: the finding, present/absent at the card's threshold;
            # "review" (above a rule-out threshold, another class more likely) is neither
            qual.append(_finding_evaluation(label, _state(res.get("decision"), label,
                                                          "positive" if dec.get("positive") else "negative")))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(identifier=f"{res.get('model')} {label}"[:64]),
            finding_type=finding_code(label), algorithm_id=algo, measurements=meas,
            qualitative_evaluations=qual or None,
            # a single image is the source; for a series the evidence lists every slice
            source_images=([hd.sr.SourceImageForMeasurementGroup.from_source_image(datasets[0])]
                           if len(datasets) == 1 and "NumberOfFrames" not in datasets[0] else None)))
    if flagged:
        warnings.append(f"SR {res.get('model')}: input outside the model's training data: no decision written")
    return groups


def _segmentation_checks(res: dict, warnings: list | None) -> list:
    """Qualitative evaluations of a segmentation that failed a trust check: outside the
    model's training data (``ood.flagged``, coded as the classifier's) and quality checks
    failed (``quality.passed`` false); none when both passed."""
    import highdicom as hd

    ood = res.get("ood") if isinstance(res.get("ood"), dict) else {}
    q = res.get("quality") if isinstance(res.get("quality"), dict) else {}
    failed = [(ood.get("flagged"), "IN-TRAIN-DOMAIN", "Input within the model's training data",
               "input outside the model's training data"),
              (q.get("checked", True) and q.get("passed") is False, "QUALITY-CHECKS",
               "Segmentation passed the model's quality checks", "segmentation quality checks failed")]
    qual = []
    for bad, code, meaning, said in failed:
        if bad:
            qual.append(hd.sr.QualitativeEvaluation(_local(code, meaning), _cc("373067005", "SCT", "No")))
            if warnings is not None:
                warnings.append(f"SR {res.get('model')}: {said}: stated with each structure")
    return qual


def _segmentation_groups(res: dict, seg, volume, datasets, warnings: list | None = None) -> list:
    import highdicom as hd

    algo = _algo(res.get("model"), res.get("model_version"))
    # the same statement on every structure's group, as the classifier's on every label's
    qual = _segmentation_checks(res, warnings) or None
    labels = res.get("labels") or {}
    names = [labels[k] for k in sorted(labels, key=int)] if isinstance(labels, dict) else list(labels)
    if res.get("volume_ml") is not None and not res.get("volume_ml"):
        res = dict(res, volume_ml=None)
    if res.get("volume_ml"):
        sizes, unit, name = res["volume_ml"], "ml", _cc("118565006", "SCT", "Volume")
    elif res.get("area_mm2"):
        sizes, unit, name = res["area_mm2"], "mm2", _cc("42798000", "SCT", "Area")
    else:
        sizes, unit, name = (res.get("area_px") or {}), "px", _cc("42798000", "SCT", "Area")
    volumetric = seg is not None and dc.has_patient_geometry(volume, datasets) and volume.n_slices > 1
    groups = []
    for s, label in enumerate(names[1:], 1):
        v = sizes.get(label)
        meas = ([hd.sr.Measurement(name=name, value=float(v), unit=_unit(unit), algorithm_id=algo)]
                if v is not None and np.isfinite(float(v)) else None)
        tid = hd.sr.TrackingIdentifier(identifier=f"{res.get('model')} {label}"[:64])
        _, typ, _std = dc.label_codes(label)
        frames = _frames_of_segment(seg, s) if seg is not None else []
        # references built here, not with highdicom's from_segmentation, which expects the
        # segment identification per frame (a one-segment SEG shares it)
        if frames and volumetric:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid,
                referenced_segment=hd.sr.ReferencedSegment(
                    str(seg.SOPClassUID), str(seg.SOPInstanceUID), s,
                    source_series=hd.sr.SourceSeriesForSegmentation(str(datasets[0].SeriesInstanceUID))),
                finding_type=typ, algorithm_id=algo, measurements=meas, qualitative_evaluations=qual))
        elif frames:
            src = datasets[0]
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid,
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    str(seg.SOPClassUID), str(seg.SOPInstanceUID), frame_number=frames[0], segment_number=s,
                    source_image=hd.sr.SourceImageForSegmentation(str(src.SOPClassUID), str(src.SOPInstanceUID))),
                finding_type=typ, algorithm_id=algo, measurements=meas, qualitative_evaluations=qual))
        else:  # nothing segmented: the size (0) without a region
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid, finding_type=typ, algorithm_id=algo, measurements=meas,
                qualitative_evaluations=qual))
    return groups


def _nodule_groups(res: dict, seg, volume, datasets, warnings: list) -> list:
    """CT nodules (imaging_assist/nodules): one volumetric ROI group per nodule found, with its
    Tracking ID/UID (the same as its SEG segment), volume (mm3), long and short axis (mm, on
    the axial slice of largest area), mean HU, the density impression, and the malignancy
    likelihood with the operating threshold and decision (none when withheld)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    volumetric = seg is not None and dc.has_patient_geometry(volume, datasets) and volume.n_slices > 1
    groups = []
    for nd in res.get("nodules") or []:
        if not nd.get("found"):
            continue
        models = nd.get("models") or {}
        seg_id = next((k for k in models if "seg" in k), res.get("model"))
        mal_id = next((k for k in models if "malignan" in k), res.get("model"))
        seg_algo, mal_algo = _algo(seg_id, models.get(seg_id)), _algo(mal_id, models.get(mal_id))
        meas = []
        for key, name, unit in (("volume_mm3", codes.SCT.Volume, "mm3"), ("long_axis_mm", codes.SCT.LongAxis, "mm"),
                                ("short_axis_mm", codes.SCT.ShortAxis, "mm"), ("mean_hu", codes.SCT.Mean, "hu")):
            v = nd.get(key)
            if v is not None and np.isfinite(float(v)):
                meas.append(hd.sr.Measurement(name=name, value=float(v), unit=_unit(unit), algorithm_id=seg_algo))
        qual = []
        if nd.get("density"):
            qual.append(hd.sr.QualitativeEvaluation(
                _local("DENSITY", "Nodule density impression"),
                _local("D-" + nd["density"], f"{nd['density']} (from HU, not a reader's call)")))
        dec = nd.get("decision") or {}
        if nd.get("p_malignant") is not None:
            # the engine's unrounded probability where the decision has it (results written
            # before session 23 rounded p_malignant to 4 decimals, which can cross the threshold)
            st = label_state(dec, "malignant")
            p_mal = float(st["probability"]) if st and is_number(st.get("probability"), 0, 1) else float(nd["p_malignant"])
            meas.append(hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=p_mal,
                                          unit=_unit("1"), algorithm_id=mal_algo))
            if dec.get("withheld"):
                qual.append(hd.sr.QualitativeEvaluation(
                    _local("IN-TRAIN-DOMAIN", "Input within the model's training data"),
                    _cc("373067005", "SCT", "No")))
                warnings.append(f"SR nodule {nd.get('id')}: decision withheld ({dec.get('withheld_reason')})")
            elif nd.get("threshold") is not None:
                meas.append(hd.sr.Measurement(name=_local("OP-THRESHOLD", "Operating threshold"),
                                              value=float(nd["threshold"]), unit=_unit("1"), algorithm_id=mal_algo))
                # the engine's state (from the unrounded probability; "review" is not Present)
                fallback = "positive" if p_mal >= float(nd["threshold"]) else "negative"
                qual.append(_finding_evaluation("malignant", _state(dec, "malignant", fallback)))
        g_meas, g_qual = _growth_items(nd.get("growth"), seg_algo)
        meas += g_meas
        qual += g_qual
        uid = nd.get("tracking_uid") or dc.new_uid()
        tid = hd.sr.TrackingIdentifier(uid=uid, identifier=f"nodule {nd.get('id')}"[:64])
        s = int(nd.get("label_value") or 0)
        if volumetric and s and _frames_of_segment(seg, s):
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid,
                referenced_segment=hd.sr.ReferencedSegment(
                    str(seg.SOPClassUID), str(seg.SOPInstanceUID), s,
                    source_series=hd.sr.SourceSeriesForSegmentation(str(datasets[0].SeriesInstanceUID))),
                finding_type=codes.SCT.Nodule, algorithm_id=seg_algo, measurements=meas or None,
                qualitative_evaluations=qual or None))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid, finding_type=codes.SCT.Nodule, algorithm_id=seg_algo,
                measurements=meas or None, qualitative_evaluations=qual or None))
        groups += _axis_groups(nd, uid, volume, datasets, seg_algo)
    return groups


def _growth_items(g, algo) -> tuple[list, list]:
    """A nodule's growth since the prior the reader linked (``nodules.growth.compare``) as
    measurements and one qualitative evaluation of its group: the prior's volume, the interval,
    the volume change, the volume doubling time (only when it grew beyond the volumetry
    variability) and the mean-diameter change.  PS3.16 has no concepts for these (its
    "Fractional Change" is not a volume change against a dated prior), so they are local codes
    with full meanings, like the operating threshold."""
    import highdicom as hd

    if not isinstance(g, dict):
        return [], []
    meas = []
    for value, key, meaning, unit in (
            ((g.get("prior") or {}).get("volume_mm3"), "PRIOR-VOLUME", "Volume in the prior study", "mm3"),
            (g.get("interval_days"), "PRIOR-INTERVAL", "Interval since the prior study", "d"),
            (g.get("volume_change_pct"), "VOLUME-CHANGE", "Volume change since the prior study", "%"),
            (g.get("vdt_days"), "VDT", "Volume doubling time", "d"),
            (g.get("mean_diameter_change_mm"), "DIAMETER-CHANGE", "Mean diameter change since the prior study", "mm")):
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(v):
            meas.append(hd.sr.Measurement(name=_local(key, meaning), value=v, unit=_unit(unit), algorithm_id=algo))
    qual = []
    if g.get("verdict") in ("grew", "stable", "smaller"):
        qual.append(hd.sr.QualitativeEvaluation(
            _local("GROWTH", "Growth since the prior study (+-25% volumetry variability)"),
            _local("GROWTH-" + g["verdict"], g["verdict"])))
    return meas, qual


def _axis_groups(nd: dict, uid: str, volume, datasets, algo) -> list:
    """A nodule's long and short axis as lines: one planar ROI group each, with the nodule's
    Tracking ID/UID (groups of one finding share them, TID 1500), the length, and a two-point
    POLYLINE on the slice of largest area where it was measured, so a viewer (ours, OHIF)
    draws the calipers.  Left out when the ends do not lie on that slice (no line rather than
    a wrong one) or the series has no patient geometry."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    m = nd.get("measurements") or {}
    k = m.get("largest_slice")
    if k is None or not dc.has_patient_geometry(volume, datasets) or not 0 <= int(k) < volume.n_slices:
        return []
    k = int(k)
    src, frames = dc.slice_source(volume, datasets, k)
    from ..nodules.measure import axis_ends_ijk

    on_slice = axis_ends_ijk(m, volume, k)
    out = []
    for key, axis, name in (("long_axis_mm", "long", codes.SCT.LongAxis),
                            ("short_axis_mm", "short", codes.SCT.ShortAxis)):
        v = nd.get(key)
        if axis not in on_slice or v is None or not np.isfinite(float(v)):
            continue
        ijk = on_slice[axis]
        rsrc = (hd.sr.SourceImageForRegion.from_source_image(src, referenced_frame_numbers=frames)
                if frames else hd.sr.SourceImageForRegion.from_source_image(src))
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                   graphic_data=ijk[:, :2] + 0.5, source_image=rsrc)  # SCOORD: centre at 0.5
        tid = hd.sr.TrackingIdentifier(uid=uid, identifier=f"nodule {nd.get('id')}"[:64])
        out.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tid, referenced_region=region,  # its finding type is the nodule group's
            measurements=[hd.sr.Measurement(name=name, value=float(v), unit=_unit("mm"), algorithm_id=algo)]))
    return out


def _viewer_groups(measurements, volume, datasets, warnings: list) -> list:
    """The viewer's measurements (imaging_assist.measure.Measurement on native slices)."""
    import highdicom as hd

    groups = []
    for m in measurements or []:
        r = m.result or {}
        if getattr(m, "axis", 0) != 0:
            warnings.append(f"SR: measurement {m.id} on a reformatted plane is not exported "
                            "(DICOM references native slices)")
            continue
        src, frames = dc.slice_source(volume, datasets, int(m.index))
        img = hd.sr.SourceImageForMeasurement.from_source_image(src, referenced_frame_numbers=frames) \
            if frames else hd.sr.SourceImageForMeasurement.from_source_image(src)
        mm = r.get("length_unit", "mm") == "mm"
        tid = hd.sr.TrackingIdentifier(identifier=f"viewer {m.kind} {m.id}"[:64])
        pts = np.asarray(m.points, float)
        if m.kind == "ruler" and "length" in r:
            # a planar ROI group whose region is the ruler's line (a POLYLINE of its two end
            # points, as OHIF writes a length), so a viewer can draw it where it was measured
            meas = [hd.sr.Measurement(name=_cc("410668003", "SCT", "Length"), value=float(r["length"]),
                                      unit=_unit("mm" if mm else "px"), referenced_images=[img])]
            rsrc = (hd.sr.SourceImageForRegion.from_source_image(src, referenced_frame_numbers=frames)
                    if frames else hd.sr.SourceImageForRegion.from_source_image(src))
            region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                       graphic_data=(pts[:2] + 0.5).astype(float), source_image=rsrc)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid, referenced_region=region, measurements=meas))
        elif m.kind in ("ellipse", "rectangle") and "mean" in r and r.get("n") \
                and all(np.isfinite(float(r.get(k, np.nan))) for k in ("mean", "sd")):
            # (no pixel centre inside, e.g. an ellipse smaller than a pixel: no statistics, and
            # a NaN made the whole SR fail; it is left out with the warning below)
            unit = _unit("hu") if (r.get("units") or getattr(volume, "units", "")) == "HU" else _unit("1")
            meas = [hd.sr.Measurement(name=_cc("373098007", "SCT", "Mean"), value=float(r["mean"]), unit=unit),
                    hd.sr.Measurement(name=_cc("386136009", "SCT", "Standard Deviation"),
                                      value=float(r["sd"]), unit=unit)]
            if r.get("area_mm2") is not None:
                meas.append(hd.sr.Measurement(name=_cc("42798000", "SCT", "Area"), value=float(r["area_mm2"]),
                                              unit=_unit("mm2" if mm else "px")))
            # viewer points are (column, row) with pixel centres at integers; DICOM SCOORD puts
            # the first pixel's centre at (0.5, 0.5)
            (u0, v0), (u1, v1) = pts[0] + 0.5, pts[1] + 0.5
            if m.kind == "rectangle":
                gt = hd.sr.GraphicTypeValues.POLYLINE
                data = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1], [u0, v0]])
            else:
                cu, cv, ru, rv = (u0 + u1) / 2, (v0 + v1) / 2, abs(u1 - u0) / 2, abs(v1 - v0) / 2
                gt = hd.sr.GraphicTypeValues.ELLIPSE
                data = dc.ellipse_axes(cu, cv, ru, rv)
            rsrc = (hd.sr.SourceImageForRegion.from_source_image(src, referenced_frame_numbers=frames)
                    if frames else hd.sr.SourceImageForRegion.from_source_image(src))
            region = hd.sr.ImageRegion(graphic_type=gt, graphic_data=data.astype(float), source_image=rsrc)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tid, referenced_region=region, measurements=meas))
        elif (g := _annotation_group(m, r, volume, src, frames, tid)) is not None:
            groups.append(g)  # polygon, freehand, angle, arrow, text (sr_measurements)
        else:
            warnings.append(f"SR: viewer measurement {m.id} ({m.kind}) is not exported (the SR carries "
                            "lengths and ROI statistics) or has no value yet")
    return groups


def _annotation_group(*args):
    from .sr_measurements import annotation_group  # imports this module: not at the top

    return annotation_group(*args)


def _fix_references(ds, single_frame_uids: set) -> None:
    """highdicom 0.28.2 writes a segmentation-frame reference with both Referenced Frame
    Number and Referenced Segment Number, and a frame number on single-frame source images;
    the Image SOP Instance Reference Macro (PS3.3 Table 10-3) allows neither.  A segment number
    identifies the frames of that segment, so the frame number is dropped there."""
    for item in getattr(ds, "ContentSequence", None) or []:
        for ref in getattr(item, "ReferencedSOPSequence", None) or []:
            if "ReferencedFrameNumber" in ref and (
                    "ReferencedSegmentNumber" in ref
                    or str(ref.ReferencedSOPInstanceUID) in single_frame_uids):
                del ref.ReferencedFrameNumber
        _fix_references(item, single_frame_uids)


def _in_content(volume, datasets, measurements) -> list:
    """The source images the content references directly (a single image; the instances of
    the viewer's measurements' slices).  The image library lists those, not every slice of a
    series: a 140-slice library took ~10 s to build and adds nothing the evidence (all
    source instances) and the SEG references do not already say."""
    if len(datasets) == 1:
        return list(datasets)
    ks = sorted({int(m.index) for m in measurements or [] if getattr(m, "axis", 0) == 0})
    out = []
    for k in ks:
        if 0 <= k < volume.n_slices:
            src, _ = dc.slice_source(volume, datasets, k)
            if all(src is not x for x in out):
                out.append(src)
    return out


def _library(datasets) -> list:
    """The images highdicom can describe in the TID 1500 image library (it needs e.g.
    Imager Pixel Spacing for projection images); the others are still in the evidence."""
    import highdicom as hd

    out = []
    for ds in datasets:
        try:
            hd.sr.ImageLibraryEntryDescriptors(ds)
        except (AttributeError, ValueError, TypeError, KeyError, IndexError):
            # IndexError: a projection image with an empty Patient Orientation (an XA cine)
            continue
        out.append(ds)
    return out


def build_sr(volume, model_items: list[dict], *, segs: dict | None = None, region_segs: dict | None = None,
             pms: list | None = None,
             measurements=None, datasets=None, series_number: int = 9903,
             series_uid: str | None = None, warnings: list | None = None):
    """A ``highdicom.sr.Comprehensive3DSR`` for one model's results.json items on ``volume``.

    ``segs`` maps an item's index in ``model_items`` to its written SEG dataset; ``pms`` are
    the Parametric Map datasets (listed in the image library and the evidence)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    warnings = warnings if warnings is not None else []
    datasets = datasets if datasets is not None else dc.source_datasets(volume)
    segs = segs or {}
    region_segs = region_segs or {}
    pms = list(pms or [])
    model = model_items[0].get("model") if model_items else "viewer"
    version = model_items[0].get("model_version") if model_items else dc.software_version()
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=dc.new_uid(), name=f"{model} {version}"[:64], manufacturer_name=dc.MANUFACTURER,
        model_name=dc.MODEL_NAME, serial_number=dc.SERIAL)
    ctx = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = []
    for n, res in enumerate(model_items):
        if res.get("error"):
            continue
        if "probabilities" in res and isinstance(res.get("probabilities"), dict):
            groups += _classifier_groups(res, datasets, warnings)
            er = res.get("explanation_region") or {}
            if n in region_segs and er.get("labels"):
                # the structures the heat map was measured against, with their sizes
                unit = {"mm2": "area_mm2", "mL": "volume_ml", "px": "area_px"}.get(er.get("area_unit"))
                region_item = {"model": er.get("model"), "model_version": er.get("model_version"),
                               "labels": ["background"] + list(er["labels"]), "voxel_counts": {},
                               unit or "area_px": er.get("areas") if unit else None,
                               "quality": er.get("quality")}
                groups += _segmentation_groups(region_item, region_segs[n], volume, datasets)
        elif "voxel_counts" in res:
            groups += _segmentation_groups(res, segs.get(n), volume, datasets, warnings)
        elif res.get("nodules") is not None:
            groups += _nodule_groups(res, segs.get(n), volume, datasets, warnings)
    groups += _viewer_groups(measurements, volume, datasets, warnings)
    if not groups:
        raise dc.DicomExportError(f"SR for {model}: no finding or measurement to report")
    report = hd.sr.MeasurementReport(
        observation_context=ctx, procedure_reported=_cc("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups, referenced_images=_library(_in_content(volume, datasets, measurements) + pms) or None)
    evidence = list(datasets) + list(segs.values()) + list(region_segs.values()) + pms
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=series_uid or dc.new_uid(),
            series_number=series_number, sop_instance_uid=dc.new_uid(), instance_number=1,
            institution_name=None, series_description=dc.described(f"AI {model} report"),
            manufacturer=dc.MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            specific_character_set=dc.CHARSET)
    except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as e:
        raise dc.DicomExportError(f"SR not written: {e}".splitlines()[0]) from None
    _fix_references(sr, {str(ds.SOPInstanceUID) for ds in datasets if "NumberOfFrames" not in ds})
    dc.finalize(sr, datasets)
    return sr


def write_sr(volume, model_items, out_path, **kw) -> Path:
    sr = build_sr(volume, model_items, **kw)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out_path)
    record_export("SR", out_path, volume)  # the audit trail (never raises)
    return out_path
