"""Reading result objects back (issue 13): SEG, Parametric Map and SR written by another tool
(highdicom, with different options) land on the exact source voxels; the index lists them as
result series of their study, linked to the series they reference; bad objects are one line."""

import io
import json
import os
import random
import shutil
import warnings

import numpy as np
import pydicom
import pytest

from conftest import CT_PHANTOM, DICOM, need

import highdicom as hd  # noqa: E402 - pinned in pyproject: missing must fail, never skip
from pydicom.sr.codedict import codes  # noqa: E402

from imaging_assist.dicom import load_series, scan  # noqa: E402
from imaging_assist.layers import Plane  # noqa: E402
from imaging_assist.dicom.result_objects import (ResultObjectError, read_parametric_map,  # noqa: E402
                                                 read_result, read_segmentation, read_sr, result_kind)

CR_DIR = DICOM / "cr_chest_monochrome1_fuji"


def _sources(volume):
    """The volume's source datasets in slice order (headers only)."""
    out = []
    for rec in volume.headers:
        with open(rec.path, "rb") as fh:
            out.append(pydicom.dcmread(fh, stop_before_pixels=True, force=True))
    for ds in out:  # the CR has no file meta; highdicom wants a transfer syntax
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        for kw, v in (("PatientID", "CR1"), ("StudyID", "1"), ("StudyDate", "20000101"), ("StudyTime", "120000"), ("AccessionNumber", ""),
                      ("ReferringPhysicianName", ""), ("PatientBirthDate", ""), ("PatientSex", "")):
            if kw not in ds:  # the writer needs them; the CR file lacks some (only in memory)
                setattr(ds, kw, v)
    return out


def _desc(n, label):
    return hd.seg.SegmentDescription(
        segment_number=n, segment_label=label,
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="test", version="1", family=codes.DCM.ArtificialIntelligence))


def write_seg(sources, pixel_array, labels, seg_type="BINARY", omit_empty_frames=True, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            sources, pixel_array, seg_type, [_desc(i + 1, lab) for i, lab in enumerate(labels)],
            hd.UID(), 300, hd.UID(), 1, "Other Tool", "writer", "1", "0",
            omit_empty_frames=omit_empty_frames, series_description="test seg", **kw)
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def ds_of(data: bytes):
    return pydicom.dcmread(io.BytesIO(data), force=True)


@pytest.fixture(scope="module")
def ct(ct_volume):
    return ct_volume, _sources(ct_volume)


@pytest.fixture(scope="module")
def ct_masks(ct_volume):
    """Two non-overlapping blobs on different slices (values 1, 2) on the volume grid."""
    shape = ct_volume.array.shape
    lab = np.zeros(shape, np.uint8)
    lab[40:52, 200:260, 180:300] = 1
    lab[45:90, 300:330, 100:140] = 2
    lab[100, 10:20, 500:511] = 1  # an edge blob
    return lab


@pytest.fixture(scope="module")
def cr():
    idx = scan(str(need(CR_DIR)))
    vol = load_series(idx.image_series()[0])
    return vol, _sources(vol)


# ---------------------------------------------------------------- SEG on the 140-slice CT
@pytest.mark.parametrize("omit", [True, False])
def test_binary_seg_on_the_ct_lands_on_the_source_voxels(ct, ct_masks, omit):
    vol, src = ct
    assert vol.array.shape[0] == 140
    stacked = np.stack([ct_masks == 1, ct_masks == 2], axis=-1)
    data = write_seg(src, stacked, ["blob one", "blob two"], omit_empty_frames=omit)
    seg = read_segmentation(ds_of(data), vol)
    assert seg.segmentation_type == "BINARY" and not seg.overlaps and not seg.warnings
    assert [s.label for s in seg.segments] == ["blob one", "blob two"]
    assert np.array_equal(seg.label_map(), ct_masks.astype(np.uint16))
    assert [s.voxels for s in seg.segments] == [int((ct_masks == 1).sum()), int((ct_masks == 2).sum())]
    (layer,) = seg.layers()
    assert np.array_equal(np.asarray(layer.array), ct_masks)
    # the placement is by world position too: every non-empty slice's first voxel agrees
    d = ds_of(data)
    for f, item in enumerate(d.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = [r.get("SOPInstanceUID") for r in vol.headers].index(uid)
        assert np.abs(vol.index_to_lps(0, 0, k) - ipp).max() < 1e-4


def test_labelmap_seg_on_the_ct_lands_on_the_source_voxels(ct, ct_masks):
    vol, src = ct
    data = write_seg(src, ct_masks, ["one", "two"], seg_type="LABELMAP")
    d = ds_of(data)
    assert d.SegmentationType == "LABELMAP"
    seg = read_segmentation(d, vol)
    assert np.array_equal(seg.label_map(), ct_masks) and not seg.overlaps


def test_seg_with_plane_positions_only_is_placed_by_position(ct, ct_masks):
    """Another tool may leave out the source references: the plane position places the frame."""
    vol, src = ct
    d = ds_of(write_seg(src, ct_masks == 2, ["two"]))
    for item in d.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    seg = read_segmentation(d, vol)
    assert np.array_equal(seg.mask(1), ct_masks == 2)


@pytest.mark.parametrize("refs", [True, False])
def test_seg_on_the_gantry_tilt_series_with_uneven_spacing_lands_on_its_slices(refs):
    """Sheared affine and uneven gaps: frames are placed at each slice's own position."""
    vol = load_series(scan(str(need(DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"))).image_series()[0])
    assert any("gantry tilt" in w for w in vol.warnings) and any("uneven" in w for w in vol.warnings)
    m = np.zeros(vol.array.shape, np.uint8)
    m[1:7, 100:200, 150:300] = 1
    m[3, 300:400, 100:200] = 2
    d = ds_of(write_seg(_sources(vol), np.stack([m == 1, m == 2], -1), ["a", "b"], omit_empty_frames=False))
    if not refs:
        for item in d.PerFrameFunctionalGroupsSequence:
            del item.DerivationImageSequence
    seg = read_segmentation(d, vol)
    assert np.array_equal(seg.label_map(), m)


def test_fractional_seg_is_thresholded_at_half_and_keeps_its_values(ct):
    vol, src = ct
    prob = np.zeros(vol.array.shape, np.float32)
    prob[70:74, 100:200, 100:200] = np.linspace(0, 1, 100, dtype=np.float32)[None, None, :]
    data = write_seg(src, prob, ["prob"], seg_type="FRACTIONAL", max_fractional_value=255)
    seg = read_segmentation(ds_of(data), vol)
    assert seg.fractional
    stored = np.round(prob * 255) / 255
    assert np.abs(seg.fraction(1) - stored).max() < 1e-6
    assert np.array_equal(seg.mask(1), stored >= 0.5)
    assert seg.segments[0].voxels == int((stored >= 0.5).sum())


def test_overlapping_segments_are_never_merged_silently(ct):
    vol, src = ct
    a = np.zeros(vol.array.shape, bool)
    b = np.zeros(vol.array.shape, bool)
    c = np.zeros(vol.array.shape, bool)
    a[50:55, 100:200, 100:200] = True
    b[52:60, 150:250, 150:250] = True
    c[10:20, 10:50, 10:50] = True
    seg = read_segmentation(ds_of(write_seg(src, np.stack([c, a, b], -1), ["c", "a", "b"])), vol)
    assert seg.overlaps == {(2, 3): int((a & b).sum())}
    assert any("overlap" in w and "a / b" in w and "layer of its own" in w for w in seg.warnings)
    with pytest.raises(ResultObjectError):
        seg.label_map()
    layers = seg.layers()
    assert [layer.name for layer in layers] == ["test seg", "test seg: a", "test seg: b"]
    assert np.array_equal(np.asarray(layers[0].array), c.astype(np.uint8))
    assert np.array_equal(np.asarray(layers[1].array) > 0, a)
    assert np.array_equal(np.asarray(layers[2].array) > 0, b)
    assert int(np.asarray(layers[2].array).max()) == 3  # its own colour


# ---------------------------------------------------------------- SEG on a CR (no geometry)
@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL"])
def test_seg_on_a_cr_lands_on_its_pixels(cr, seg_type):
    vol, src = cr
    _, rows, cols = vol.array.shape
    m = np.zeros((1, rows, cols), np.float32)
    m[0, rows // 4: rows // 2, cols // 5: cols // 2] = 1.0
    m[0, rows // 3: rows // 2 + 30, cols // 3: cols // 2 + 40] = 0.75 if seg_type == "FRACTIONAL" else 1.0
    arr = m if seg_type == "FRACTIONAL" else m.astype(bool)
    seg = read_segmentation(ds_of(write_seg(src, arr, ["lung"], seg_type=seg_type)), vol)
    assert np.array_equal(seg.mask(1), m >= 0.5)
    assert seg.segments[0].voxels == int((m >= 0.5).sum())


# ---------------------------------------------------------------- Parametric Map
def test_parametric_map_on_the_ct_is_a_heat_map_in_float32_precision(ct):
    vol, src = ct
    ks = list(range(60, 80))
    rng = np.random.default_rng(0)
    vals = rng.random((len(ks),) + vol.array.shape[1:], dtype=np.float32) * 3.5 - 1.0
    rwvm = hd.pm.RealWorldValueMapping(lut_label="CAM", lut_explanation="class activation",
                                       unit=codes.UCUM.NoUnits, value_range=(-1.0, 2.5),
                                       slope=1.0, intercept=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = hd.pm.ParametricMap([src[k] for k in ks], vals, hd.UID(), 301, hd.UID(), 1, "Other Tool",
                                 "writer", "1", "0", False, [rwvm], window_center=0.5, window_width=3.0,
                                 series_description="heat")
    out = read_parametric_map(pm, vol)
    assert out.array.dtype == np.float32
    assert np.array_equal(out.array[ks], vals)  # float32 written, float32 read: exact
    assert np.isnan(out.array[:60]).all() and np.isnan(out.array[80:]).all()
    assert out.label == "class activation"
    layer = out.layer()
    assert np.asarray(layer.array).shape == vol.array.shape
    # slices without a frame are transparent, not drawn as the colour of 0 (inside -1..2.5)
    assert (layer.render_argb32(Plane.native(), 10) >> 24 == 0).all()
    assert (layer.render_argb32(Plane.native(), 70) >> 24 > 0).any()


# ---------------------------------------------------------------- SR (TID 1500)
def _sr(vol, src, k):
    ref = hd.sr.SourceImageForRegion.from_source_image(src[k])
    region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
                                 graphic_data=np.array([vol.index_to_lps(i, j, k) for i, j in
                                                        ((100, 100), (200, 100), (200, 200), (100, 100))]),
                                 frame_of_reference_uid=src[k].FrameOfReferenceUID)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 1"),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=123.5, unit=codes.UCUM.SquareMillimeter)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding,
                                                             value=hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"))])
    img_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="slice finding"),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src[k + 5])],
        measurements=[hd.sr.Measurement(name=codes.SCT.Length, value=42.0, unit=codes.UCUM.Millimeter)])
    obs = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Person, observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Doe^J")))
    report = hd.sr.MeasurementReport(observation_context=obs, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=[group, img_group])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hd.sr.Comprehensive3DSR(evidence=[src[k], src[k + 5]], content=report[0], series_number=302,
                                       series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(),
                                       instance_number=1, manufacturer="Other Tool",
                                       series_description="measurements")


def test_tid1500_sr_lists_findings_and_measurements_that_jump_to_their_image(ct):
    vol, src = ct
    sr = read_sr(_sr(vol, src, 30))
    by_name = {(i.group, i.name): i for i in sr.items}
    area = by_name[("lesion 1", "Area")]
    assert area.kind == "measurement" and area.number == pytest.approx(123.5) and area.unit == "mm²"
    assert area.slice_in(vol) == 30
    finding = by_name[("lesion 1", "Finding")]
    assert finding.kind == "finding" and finding.value == "Pneumonia" and finding.slice_in(vol) == 30
    length = by_name[("slice finding", "Length")]
    assert length.number == pytest.approx(42.0) and length.slice_in(vol) == 35
    assert not any(i.name in ("Person Observer Name", "Tracking Identifier") for i in sr.items)
    # the list: every item's slice with one slice table (what the Results dock shows)
    import imaging_assist.dicom.result_objects as ro

    built = []
    real = ro._Grid.__init__

    def counting(self, volume):
        built.append(volume)
        real(self, volume)

    ro._Grid.__init__ = counting
    try:
        assert sr.slices_in(vol) == [i.slice_in(vol) for i in sr.items]
        n_each = len(built) - 1
        built.clear()
        sr.slices_in(vol)
    finally:
        ro._Grid.__init__ = real
    assert len(built) == 1 and n_each == len(sr.items) > 3


# ---------------------------------------------------------------- the index and the CLI
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, ct, ct_masks):
    """The CT (linked) with a SEG, a Parametric Map, an SR and an encapsulated PDF beside it."""
    vol, src = ct
    d = tmp_path_factory.mktemp("study")
    (d / "ct").mkdir()
    for f in sorted(need(CT_PHANTOM).glob("*.dcm")):
        os.symlink(f, d / "ct" / f.name)
    (d / "seg.dcm").write_bytes(write_seg(src, ct_masks == 1, ["blob"]))
    ks = [60, 61]
    rwvm = hd.pm.RealWorldValueMapping(lut_label="CAM", lut_explanation="cam", unit=codes.UCUM.NoUnits,
                                       value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = hd.pm.ParametricMap([src[k] for k in ks], np.full((2, 512, 512), 0.25, np.float32), hd.UID(), 301,
                                 hd.UID(), 1, "T", "w", "1", "0", False, [rwvm], window_center=0.5,
                                 window_width=1.0, series_description="heat")
        pm.save_as(d / "pm.dcm")
        _sr(vol, src, 30).save_as(d / "sr.dcm")
        pdf = hd.pdf.EncapsulatedDocument if hasattr(hd, "pdf") else None
    if pdf is None:  # Encapsulated PDF by hand (highdicom has no PDF class)
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = hd.UID()
        for kw in ("StudyInstanceUID", "PatientID", "PatientName"):
            setattr(ds, kw, src[0].get(kw))
        ds.SeriesInstanceUID = hd.UID()
        ds.Modality = "DOC"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
        ds.save_as(d / "report.dcm", enforce_file_format=True)
    return d


def test_index_lists_result_objects_as_result_series_linked_to_their_source(study_dir, ct):
    vol, _ = ct
    idx = scan(str(study_dir))
    assert not idx.problems, idx.problems
    images = idx.image_series()
    assert [s.uid for s in images] == [vol.series_uid]  # SEG / PM are not images to load
    results = {s.result_kind: s for s in idx.all_series() if s.result_kind}
    assert set(results) == {"SEG", "PM", "SR", "PDF"}
    for kind in ("SEG", "PM", "SR"):
        assert results[kind].references == [vol.series_uid], kind
        assert not results[kind].is_image
    (study,) = [st for p in idx.patients for st in p.studies]
    assert {s.result_kind for s in study.result_series()} == {"SEG", "PM", "SR", "PDF"}
    assert [s.key for s in idx.results_for(images[0])] and \
        {s.result_kind for s in idx.results_for(images[0])} == {"SEG", "PM", "SR"}
    d = results["SEG"].to_dict()
    assert d["result_kind"] == "SEG" and d["references"] == [vol.series_uid]


def test_scan_and_info_show_result_objects(study_dir, capsys):
    from imaging_assist.cli.main import main
    assert main(["scan", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert "Segmentation" in out and "Parametric Map" in out and "Structured Report" in out
    assert "Encapsulated PDF" in out and "refers to series" in out
    assert main(["scan", "--json", str(study_dir)]) == 0
    js = json.loads(capsys.readouterr().out)
    kinds = {s["result_kind"] for p in js["patients"] for st in p["studies"] for s in st["series"]}
    assert {"SEG", "PM", "SR", "PDF"} <= kinds
    assert main(["info", str(study_dir / "seg.dcm")]) == 0
    out = capsys.readouterr().out
    assert "Segmentation" in out and "blob" in out and "voxels" in out
    assert main(["info", "--json", str(study_dir / "sr.dcm")]) == 0
    js = json.loads(capsys.readouterr().out)
    assert any(i["name"] == "Area" for i in js["items"])
    assert main(["info", str(study_dir / "sr.dcm")]) == 0
    out = capsys.readouterr().out
    assert "Length = 42 mm  [series 202 image" in out and "Area = 123.5 mm²  [at " in out
    # its region as the viewer draws it (imaging_assist.dicom.sr_regions)
    assert "region      lesion 1: outline of 3 points on image 31" in out
    assert main(["info", "--json", str(study_dir / "sr.dcm")]) == 0
    (placed,) = json.loads(capsys.readouterr().out)["regions_placed"]
    assert placed["image"] == 31 and placed["closed"] and placed["points_kji"][0] == [30.0, 100.0, 100.0]
    assert main(["info", str(study_dir / "pm.dcm")]) == 0
    assert "Parametric Map" in capsys.readouterr().out


def test_seg_whose_source_series_is_missing_is_one_line(tmp_path, study_dir, capsys):
    from imaging_assist.cli.main import main
    shutil.copy(study_dir / "seg.dcm", tmp_path / "seg.dcm")
    idx = scan(str(tmp_path))
    (s,) = idx.all_series()
    assert s.result_kind == "SEG" and any("not in this index" in w for w in s.warnings)
    rc = main(["info", str(tmp_path / "seg.dcm")])
    err = capsys.readouterr()
    assert rc == 2 and err.err.startswith("error: ") and len(err.err.strip().splitlines()) == 1
    assert "Traceback" not in err.err


# ---------------------------------------------------------------- bad and hostile objects
@pytest.fixture(scope="module")
def seg_bytes(ct, ct_masks):
    _, src = ct
    return write_seg(src, np.stack([ct_masks == 1, ct_masks == 2], -1), ["one", "two"])


def _expect_one_line(fn, *args, match=None):
    with pytest.raises(ResultObjectError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg and len(msg) < 300
    if match:
        assert match in msg, msg
    return msg


def test_seg_of_another_series_is_refused(ct, seg_bytes):
    vol, _ = ct
    d = ds_of(seg_bytes)
    d.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"
    _expect_one_line(read_segmentation, d, vol, match="references series 1.2.3.4")


def test_seg_of_another_size_or_spacing_or_position_is_refused(ct, seg_bytes):
    vol, _ = ct
    d = ds_of(seg_bytes)
    d.Rows = 256
    _expect_one_line(read_segmentation, d, vol, match="256x512")
    d = ds_of(seg_bytes)
    d.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.5]
    _expect_one_line(read_segmentation, d, vol, match="pixel spacing")
    d = ds_of(seg_bytes)
    ipp = d.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0].ImagePositionPatient
    ipp[0] = float(ipp[0]) + 0.5
    _expect_one_line(read_segmentation, d, vol, match="frame 4")
    d = ds_of(seg_bytes)
    d.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    _expect_one_line(read_segmentation, d, vol, match="orientation")


def test_absurd_segment_counts_and_frames_are_refused(ct, seg_bytes):
    vol, _ = ct
    d = ds_of(seg_bytes)
    item = d.SegmentSequence[0]
    d.SegmentSequence = [item] * 5000
    _expect_one_line(read_segmentation, d, vol, match="5000 segments")
    d = ds_of(seg_bytes)
    d.SegmentSequence = []
    _expect_one_line(read_segmentation, d, vol, match="no segments")
    d = ds_of(seg_bytes)
    d.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 9
    _expect_one_line(read_segmentation, d, vol, match="segment 9")
    d = ds_of(seg_bytes)
    d.NumberOfFrames = 100000
    _expect_one_line(read_segmentation, d, vol, match="100000 frames")


def test_truncated_seg_is_one_line(ct, seg_bytes, tmp_path):
    vol, _ = ct
    for cut in (len(seg_bytes) // 2, len(seg_bytes) - 100, 400):
        p = tmp_path / f"cut{cut}.dcm"
        p.write_bytes(seg_bytes[:cut])
        _expect_one_line(read_segmentation, str(p), vol)


def test_fuzzed_segs_load_exactly_or_fail_in_one_line(ct, seg_bytes, ct_masks, tmp_path):
    vol, _ = ct
    rnd = random.Random(13)
    header_end = seg_bytes.index(b"\xe0\x7f\x10\x00")  # Pixel Data tag
    ok = failed = 0
    for n in range(60):
        data = bytearray(seg_bytes)
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(132, header_end)
            data[pos] = rnd.randrange(256)
        p = tmp_path / f"f{n}.dcm"
        p.write_bytes(bytes(data))
        idx = scan(str(p))  # the index never raises: a series or a problem with its reason
        assert len(idx.all_series()) + len(idx.problems) == 1
        assert all(s.result_kind == "SEG" for s in idx.all_series() if s.is_image is False and s.instances)
        try:
            seg = read_segmentation(str(p), vol)
        except ResultObjectError as e:
            assert "\n" not in str(e)
            failed += 1
            continue
        ok += 1
        # loaded: then it is either exactly the written segmentation, or flagged
        got = np.zeros(vol.array.shape, np.uint8)
        for s in seg.segments:
            got[seg.mask(s.number)] = s.number
        if not np.array_equal(got, ct_masks):
            assert seg.warnings or [s.label for s in seg.segments] != ["one", "two"], n
    assert ok + failed == 60


def test_result_kinds_and_wrong_kinds():
    assert result_kind("1.2.840.10008.5.1.4.1.1.66.4") == "SEG"
    assert result_kind("1.2.840.10008.5.1.4.1.1.30") == "PM"
    assert result_kind("1.2.840.10008.5.1.4.1.1.88.34") == "SR"
    assert result_kind("1.2.840.10008.5.1.4.1.1.104.1") == "PDF"
    assert result_kind("1.2.840.10008.5.1.4.1.1.2") is None
    with pytest.raises(ResultObjectError):
        read_result(pydicom.Dataset())


# ---------------------------------------------------------------- round trip through the app's exporters
@pytest.mark.parametrize("which", ["ct", "tilt", "cr"])
def test_round_trip_through_the_app_exporters(which, ct, cr, ct_masks, tmp_path):
    """imaging_assist.export (SEG, Parametric Map) -> file -> read back: voxel for voxel."""
    from imaging_assist.export.parametric_map import write_parametric_map
    from imaging_assist.export.seg import write_seg as app_write_seg
    if which == "ct":
        vol, lab = ct[0], ct_masks
    elif which == "tilt":
        vol = load_series(scan(str(need(DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"))).image_series()[0])
        lab = np.zeros(vol.array.shape, np.uint8)
        lab[2:6, 100:200, 150:300] = 1
        lab[4, 300:400, 100:200] = 2
    else:
        vol = cr[0]
        lab = np.zeros(vol.array.shape, np.uint8)
        lab[0, 100:400, 100:300] = 1
        lab[0, 100:400, 400:600] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = app_write_seg(vol, lab, ["background", "right lung", "left lung"], tmp_path / "seg.dcm",
                          model_id="test-model", model_version="1")
    seg = read_segmentation(str(p), vol)
    assert np.array_equal(seg.label_map(), lab)
    assert [s.label for s in seg.segments][:2] == ["right lung", "left lung"]
    heat = np.random.default_rng(1).random(vol.array.shape, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = write_parametric_map(vol, heat, tmp_path / "pm.dcm", label="pneumonia", method="gradcam",
                                 model_id="test-model", model_version="1")
    pm = read_parametric_map(str(p), vol)
    assert np.abs(pm.array - heat).max() <= np.finfo(np.float32).eps * 4


def test_more_hostile_values_are_one_line(ct, seg_bytes):
    vol, src = ct
    d = ds_of(seg_bytes)
    d.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient = ["nan", "0", "0"]
    _expect_one_line(read_segmentation, d, vol, match="frame 3")
    d = ds_of(seg_bytes)  # two frames of one segment on one slice
    per = d.PerFrameFunctionalGroupsSequence
    per[1].DerivationImageSequence = per[0].DerivationImageSequence
    per[1].PlanePositionSequence = per[0].PlanePositionSequence
    per[1].SegmentIdentificationSequence = per[0].SegmentIdentificationSequence
    _expect_one_line(read_segmentation, d, vol, match="two frames")
    d = ds_of(seg_bytes)
    d.BitsAllocated = 8
    _expect_one_line(read_segmentation, d, vol, match="BitsAllocated")
    d = ds_of(write_seg(src, np.zeros(vol.array.shape, np.float32) + 0.6, ["f"], seg_type="FRACTIONAL"))
    d.MaximumFractionalValue = 0
    _expect_one_line(read_segmentation, d, vol, match="MaximumFractionalValue")
    d = ds_of(seg_bytes)
    d.SegmentationType = "OTHER"
    _expect_one_line(read_segmentation, d, vol, match="OTHER")
    d = ds_of(seg_bytes)
    del d.PerFrameFunctionalGroupsSequence[5]
    _expect_one_line(read_segmentation, d, vol, match="per-frame")
    _expect_one_line(read_segmentation, pydicom.Dataset(), vol, match="not a segmentation")


def test_hostile_structured_reports_are_one_line(ct):
    vol, src = ct

    def plain_sr():
        buf = io.BytesIO()
        _sr(vol, src, 30).save_as(buf)
        return ds_of(buf.getvalue())

    sr = plain_sr()
    deep = pydicom.Dataset()
    deep.ValueType, deep.RelationshipType = "CONTAINER", "CONTAINS"
    node = deep
    for _ in range(200):
        child = pydicom.Dataset()
        child.ValueType, child.RelationshipType = "CONTAINER", "CONTAINS"
        node.ContentSequence = [child]
        node = child
    sr.ContentSequence.append(deep)
    _expect_one_line(read_sr, sr, match="nested")
    sr = plain_sr()
    item = pydicom.Dataset()
    item.ValueType, item.RelationshipType, item.TextValue = "TEXT", "CONTAINS", "x"
    sr.ContentSequence = [item] * 100_001
    _expect_one_line(read_sr, sr, match="content items")
    sr = plain_sr()  # one measurement without a value: left out and said, the rest listed
    group = next(i for i in sr.ContentSequence if i.ValueType == "CONTAINER"
                 and i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements")
    num = next(i for g in group.ContentSequence for i in g.get("ContentSequence", []) if i.ValueType == "NUM")
    del num.MeasuredValueSequence[0].NumericValue
    out = read_sr(sr)
    assert any("no numeric value" in w for w in out.warnings)
    assert any(i.name == "Length" for i in out.items) and not any(i.name == "Area" for i in out.items)


def test_a_result_object_sharing_its_source_series_uid_never_hides_the_images(tmp_path, ct, seg_bytes):
    """A writer that reuses the source's SeriesInstanceUID: the images stay one loadable stack
    and the SEG becomes a result part of its own (a series is never both)."""
    vol, _ = ct
    for f in sorted(need(CT_PHANTOM).glob("*.dcm")):
        os.symlink(f, tmp_path / f.name)
    d = ds_of(seg_bytes)
    d.SeriesInstanceUID = vol.series_uid
    d.save_as(tmp_path / "seg.dcm")
    idx = scan(str(tmp_path))
    images = idx.image_series()
    assert len(images) == 1 and images[0].n_instances == 140
    (res,) = [s for s in idx.all_series() if s.result_kind]
    assert res.result_kind == "SEG" and res.n_instances == 1 and res.key != images[0].key


def test_a_single_frame_seg_sharing_a_projection_series_uid_is_its_own_part(tmp_path, cr):
    vol, src = cr
    ds = pydicom.dcmread(str(vol.headers[0].path), force=True)
    ds.PhotometricInterpretation = "MONOCHROME2"  # same size and colour model as the SEG
    ds.file_meta = src[0].file_meta
    ds.save_as(tmp_path / "cr.dcm")
    m = np.zeros(vol.array.shape, bool)
    m[0, 100:200, 100:200] = True
    d = ds_of(write_seg(src, m, ["x"]))
    d.SeriesInstanceUID = vol.series_uid
    d.save_as(tmp_path / "seg.dcm")
    idx = scan(str(tmp_path))
    assert [s.n_instances for s in idx.image_series()] == [1]
    assert [s.result_kind for s in idx.all_series() if s.result_kind] == ["SEG"]
    img = idx.image_series()[0]
    assert img.instances[0].path.endswith("cr.dcm")


def test_analyze_never_takes_a_result_object_as_model_input(tmp_path, cr):
    """Even under --research-override, a SEG beside the image is skipped with its reason."""
    from imaging_assist.cli.analyze import _collect_inputs
    from imaging_assist.models.card import load_card
    from conftest import ROOT
    vol, src = cr
    os.symlink(vol.headers[0].path, tmp_path / "cr.dcm")
    m = np.zeros(vol.array.shape, bool)
    m[0, 100:200, 100:200] = True
    (tmp_path / "seg.dcm").write_bytes(write_seg(src, m, ["x"]))
    card = load_card(ROOT / "weights" / "cxr-pneumonia")
    items, notes = _collect_inputs(tmp_path, card, override=True)
    assert [p.result_kind for kind, p, _ in items if kind == "series"] == [None]
    assert any("skipped: a result object" in n for n in notes)
