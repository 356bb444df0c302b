"""DICOM result objects (issue 13): SEG, Parametric Map, TID 1500 SR, Encapsulated PDF.

Round trips on real data (the 140-slice CT, the gantry-tilt series, a CR, an ultrasound
image) and an oblique volume built here: write -> read (highdicom, pydicom) -> label maps
equal voxel for voxel, geometry within 1e-4 mm, heat maps equal to float32 precision; every
object passes dciodvfy with 0 errors (the test fails when dciodvfy is missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import CT_PHANTOM, DICOM, ROOT, need

import highdicom  # noqa: E402 - pinned in pyproject: missing must fail, never skip

from imaging_assist.dicom import load_series, scan  # noqa: E402
from imaging_assist.export.dicom import NO_SOURCE_NOTE, DicomExportError, write_dicom_results  # noqa: E402
from imaging_assist.inference.results import ClassificationResult, HeatMap, SegmentationResult  # noqa: E402
from imaging_assist.measure import Measurement  # noqa: E402

TILT = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"
CR = DICOM / "cr_chest_monochrome1_fuji"
US = ROOT / "imaging_assist" / "data" / "demo" / "breast_us" / "us_01_breast.dcm"
CXR = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm"  # adult PA: fits cxr-lung-seg
MINI_PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]"
            b"/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


def _dciodvfy() -> str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is missing: scripts/test installs it")
    return exe


def dciodvfy_errors(path) -> list[str]:
    r = subprocess.run([_dciodvfy(), "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


def _load(path) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_series(scan(str(need(Path(path)))).image_series()[0])


def _oblique(folder: Path):
    from _synth import write_ct_series

    a, b = np.radians(25), np.radians(-12)
    r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    iop = (*r[:, 0], *r[:, 1])
    n = np.cross(r[:, 0], r[:, 1])
    pos = [tuple(np.array([-20.5, 13.25, 40.0]) + 1.5 * k * n) for k in range(7)]
    write_ct_series(folder, pos, iop=iop, rows=20, cols=18,
                    extra={"FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.4242"})
    return _load(folder)


def _results(vol, *, ood=None, labels=("background", "right lung", "left lung")):
    n, r, c = vol.shape[:3]
    lm = np.zeros((n, r, c), np.uint8)
    lm[n // 4: 3 * n // 4 + 1, r // 4: r // 2, c // 4: c // 2] = 1
    lm[n // 4: 3 * n // 4 + 1, r // 2: 3 * r // 4, c // 2: 3 * c // 4] = 2
    lm[n // 2, 1, 1] = 2  # a lone voxel: never lost
    lm = np.minimum(lm, len(labels) - 1).astype(np.uint8)  # a one-structure model: one segment
    counts = {lab: int((lm == i).sum()) for i, lab in enumerate(labels) if i}
    geo = vol.has_geometry and vol.n_slices > 1
    seg = SegmentationResult("cxr-lung-seg", "1.0.0", "segmentation", list(labels), label_map=lm,
                             voxel_counts=counts,
                             volume_ml={k: v * 1e-3 for k, v in counts.items()} if geo else None,
                             area_px=None if geo else counts, spacing_source=vol.spacing_source)
    heat = np.random.default_rng(3).random((n, r, c), dtype=np.float32) * 1.7 - 0.3
    heat[0, 0, :5] = np.nan  # not computed there
    cl = ClassificationResult("cxr-pneumonia", "2.1.0", "classification", ["normal", "pneumonia"],
                              probabilities={"normal": 0.19, "pneumonia": 0.81},
                              decisions={"normal": None, "pneumonia": {
                                  "threshold": 0.7477, "positive": True, "sensitivity": 0.98,
                                  "specificity": 0.76}},
                              heatmaps=[HeatMap("pneumonia", "gradcam", heat)])
    if ood is not None:
        cl.ood = ood
        cl.to_dict = (lambda f=cl.to_dict: dict(f(), ood=ood))
    return seg, cl


CASES = {"ct140": lambda tmp: _load(CT_PHANTOM), "gantry_tilt": lambda tmp: _load(TILT),
         "oblique": lambda tmp: _oblique(tmp / "oblique_src"), "cr": lambda tmp: _load(CR),
         "us": lambda tmp: _load(US)}


@pytest.fixture(scope="module", params=list(CASES))
def written(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    vol = CASES[request.param](tmp)
    seg, cl = _results(vol)
    k = vol.n_slices // 2
    ms = [Measurement("ruler", [(2, 3), (9, 7)], index=k), Measurement("ellipse", [(3, 3), (10, 9)], index=k)]
    for m in ms:
        m.compute_on(vol)
    pdf = tmp / "report.pdf"
    pdf.write_bytes(MINI_PDF)
    notes: list[str] = []
    objs = write_dicom_results(vol, [seg, cl], tmp / "dicom", report_pdf=pdf, measurements=ms, warnings=notes)
    return request.param, vol, seg, cl, objs, notes, ms


def _by_kind(objs, kind):
    return [o for o in objs if o.kind == kind]


def test_one_new_series_per_object_in_the_source_study(written):
    _, vol, _, _, objs, _, _ = written
    assert sorted(o.kind for o in objs) == ["PDF", "PM", "SEG", "SR", "SR"]
    src = pydicom.dcmread(vol.headers[0].path, stop_before_pixels=True, force=True)
    series = set()
    for o in objs:
        ds = pydicom.dcmread(o.path)
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.PatientID == src.get("PatientID", "")
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        series.add(ds.SeriesInstanceUID)
        assert str(o.path).startswith(str(Path(objs[0].path).parent))
    assert len(series) == len(objs)
    assert {o.sop_class_name for o in objs} == {"Segmentation Storage", "Parametric Map Storage",
                                                "Comprehensive 3D SR Storage", "Encapsulated PDF Storage"}


def test_every_object_passes_dciodvfy_with_no_error(written):
    for o in written[4]:
        assert dciodvfy_errors(o.path) == [], o.path.name


def _source_uids(vol):
    return [str(pydicom.dcmread(h.path, stop_before_pixels=True, force=True).SOPInstanceUID)
            for h in vol.headers]


def test_seg_round_trip_voxel_for_voxel_and_geometry(written):
    case, vol, seg_res, _, objs, _, _ = written
    seg = highdicom.seg.segread(_by_kind(objs, "SEG")[0].path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["right lung", "left lung"]
    rl = seg.SegmentSequence[0]
    assert (rl.SegmentedPropertyTypeCodeSequence[0].CodeValue, rl.SegmentedPropertyTypeCodeSequence[0]
            .CodingSchemeDesignator) == ("3341006", "SCT")
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "44029006"
    assert rl.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    algo = rl.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("cxr-lung-seg", "1.0.0")
    uids = _source_uids(vol)
    back = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    assert back.shape == seg_res.label_map.shape
    assert np.array_equal(back, seg_res.label_map)
    if case in ("cr", "us"):
        assert "PlanePositionSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
        return
    # every frame lies on the source slice it references, within 1e-4 mm
    by_uid = {u: pydicom.dcmread(h.path, stop_before_pixels=True, force=True) for u, h in zip(uids, vol.headers)}
    sfg = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array(sfg.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    # slices of different thickness carry their Pixel Measures per frame (thickness_per_frame)
    measures = sfg if "PixelMeasuresSequence" in sfg else seg.PerFrameFunctionalGroupsSequence[0]
    ps = np.array(measures.PixelMeasuresSequence[0].PixelSpacing, float)
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        src = by_uid[str(ref)]
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.abs(ipp - np.array(src.ImagePositionPatient, float)).max() < 1e-4
        assert np.abs(iop - np.array(src.ImageOrientationPatient, float)).max() < 1e-4
        assert np.abs(ps - np.array(src.PixelSpacing, float)).max() < 1e-4


def test_parametric_map_round_trip_float32(written):
    case, vol, _, cl, objs, notes, _ = written
    path = _by_kind(objs, "PM")[0].path
    ds = pydicom.dcmread(path)
    pm = highdicom.imread(path)
    assert ds.BitsAllocated == 32 and "FloatPixelData" in ds
    rwv = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    q = rwv.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (q.CodeValue, q.CodingSchemeDesignator) == ("130403", "DCM")  # Grad-CAM
    assert rwv.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    frames = pm.pixel_array if ds.NumberOfFrames > 1 else pm.pixel_array[None]
    uids = _source_uids(vol)
    heat = cl.heatmaps[0].array
    got = np.full_like(heat, -999.0)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ref = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        got[uids.index(ref)] = frames[f]
    assert np.array_equal(np.isnan(got), np.isnan(heat))
    assert np.array_equal(got[~np.isnan(got)], heat[~np.isnan(heat)])  # float32 exactly
    if case in ("cr", "us"):
        # no patient geometry: its own frame of reference, said in the object and to the caller
        assert ds.FrameOfReferenceUID != pydicom.dcmread(vol.headers[0].path, force=True).get("FrameOfReferenceUID")
        assert "without patient geometry" in ds.ImageComments
        assert any("without patient geometry" in n for n in notes)


def _sr_items(ds):
    for it in getattr(ds, "ContentSequence", None) or []:
        yield it
        yield from _sr_items(it)


def _named(ds, meaning):
    return [it for it in _sr_items(ds) if "ConceptNameCodeSequence" in it
            and it.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def _decisions(ds):
    return [(it.ConceptNameCodeSequence[0].CodeMeaning, it.ConceptCodeSequence[0].CodeMeaning)
            for it in _sr_items(ds) if "ConceptCodeSequence" in it
            and it.ConceptCodeSequence[0].CodeMeaning in ("Present", "Absent")]


def test_sr_findings_sizes_measurements_and_references(written):
    case, vol, seg_res, cl, objs, _, ms = written
    srs = {o.path.name: pydicom.dcmread(o.path) for o in _by_kind(objs, "SR")}
    seg_sr = srs["cxr-lung-seg_SR.dcm"]
    cls_sr = srs["cxr-pneumonia_SR.dcm"]
    for ds in srs.values():
        hsr = highdicom.sr.srread(ds.filename)  # highdicom reads it back
        assert hsr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
        assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        dev = _named(ds, "Device Observer Name")
        assert dev and dev[0].TextValue.startswith(("cxr-lung-seg", "cxr-pneumonia"))
    # classifier: probability, threshold, decision, algorithm
    probs = [float(it.MeasuredValueSequence[0].NumericValue) for it in _named(cls_sr, "Probability")]
    assert sorted(probs) == pytest.approx([0.19, 0.81])
    assert [float(it.MeasuredValueSequence[0].NumericValue) for it in _named(cls_sr, "Operating threshold")] \
        == pytest.approx([0.7477])
    assert _decisions(cls_sr) == [("Pneumonia", "Present")]
    assert {it.TextValue for it in _named(cls_sr, "Algorithm Name")} == {"cxr-pneumonia"}
    # the Parametric Map is referenced (evidence), the SEG from its segments
    pm_uid = pydicom.dcmread(_by_kind(objs, "PM")[0].path).SOPInstanceUID
    seg_uid = pydicom.dcmread(_by_kind(objs, "SEG")[0].path).SOPInstanceUID
    ev = [r.ReferencedSOPInstanceUID for s in cls_sr.CurrentRequestedProcedureEvidenceSequence
          for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence]
    assert pm_uid in ev
    seg_refs = [r for it in _sr_items(seg_sr) for r in (getattr(it, "ReferencedSOPSequence", None) or [])
                if r.ReferencedSOPInstanceUID == seg_uid]
    assert sorted(int(r.ReferencedSegmentNumber) for r in seg_refs) == [1, 2]
    unit = "ml" if seg_res.volume_ml else "{pixels}"
    sizes = [float(it.MeasuredValueSequence[0].NumericValue)
             for it in _named(seg_sr, "Volume" if seg_res.volume_ml else "Area")
             if it.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == unit]
    expect = seg_res.volume_ml or seg_res.area_px
    assert sizes[:2] == pytest.approx([expect["right lung"], expect["left lung"]])  # then the viewer ROI
    # the viewer's measurements: length and ROI mean/SD (HU on CT) with the region
    lengths = _named(seg_sr, "Length")
    assert [float(it.MeasuredValueSequence[0].NumericValue) for it in lengths] == pytest.approx(
        [ms[0].result["length"]], rel=1e-6)
    means = _named(seg_sr, "Mean")
    assert [float(it.MeasuredValueSequence[0].NumericValue) for it in means] == pytest.approx([ms[1].result["mean"]])
    if vol.units == "HU":
        assert means[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"
    regions = [it for it in _sr_items(seg_sr) if "GraphicType" in it]
    assert [it.GraphicType for it in regions] == ["POLYLINE", "ELLIPSE"]
    # the ruler's line where it was measured (SCOORD: first pixel's centre at 0.5, 0.5)
    assert np.allclose(np.reshape(regions[0].GraphicData, (-1, 2)), np.add(ms[0].points, 0.5))


def test_out_of_distribution_input_gets_no_decision(tmp_path):
    vol = _load(CXR)
    seg, cl = _results(vol, ood={"flagged": True, "score": 9.1, "threshold": 3.0, "reasons": ["x"]})
    notes: list[str] = []
    objs = write_dicom_results(vol, [cl], tmp_path / "dicom", warnings=notes)
    sr = pydicom.dcmread(_by_kind(objs, "SR")[0].path)
    assert _decisions(sr) == []  # no present/absent
    assert _named(sr, "Operating threshold") == []
    ood = _named(sr, "Input within the model's training data")
    assert ood and all(it.ConceptCodeSequence[0].CodeMeaning == "No" for it in ood)
    assert _named(sr, "Probability")  # the numbers are still reported
    assert any("outside the model's training data" in n for n in notes)
    assert dciodvfy_errors(_by_kind(objs, "SR")[0].path) == []


def test_plain_image_cannot_be_referenced_one_line(tmp_path):
    from imaging_assist.inference.images import read_image

    png = need(DICOM.parent / "cxr")
    img = next(p for p in sorted(png.rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    vol = read_image(img)
    seg, cl = _results(vol)
    with pytest.raises(DicomExportError) as e:
        write_dicom_results(vol, [seg, cl], tmp_path / "dicom")
    assert str(e.value) == NO_SOURCE_NOTE and "\n" not in str(e.value)
    assert not (tmp_path / "dicom").exists()


def test_never_written_into_the_source_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(need(CXR), src / "a.dcm")
    vol = _load(src)
    seg, cl = _results(vol)
    for bad in (src, src / "dicom"):
        with pytest.raises(DicomExportError, match="source folder"):
            write_dicom_results(vol, [seg], bad)
    assert sorted(p.name for p in src.iterdir()) == ["a.dcm"]


def test_bad_arrays_and_geometry_are_one_line_errors(tmp_path):
    from imaging_assist.export.parametric_map import build_parametric_map
    from imaging_assist.export.seg import build_seg

    vol = _load(CXR)
    lm = np.zeros(vol.shape[:3], np.uint8)
    lm[0, 5:9, 5:9] = 1
    kw = dict(model_id="m", model_version="1")
    bad_calls = [
        lambda: build_seg(vol, lm[:, :-1], ["bg", "lung"], **kw),  # wrong shape
        lambda: build_seg(vol, lm.astype(np.int16) - 1, ["bg", "lung"], **kw),  # negative
        lambda: build_seg(vol, lm * 3, ["bg", "lung"], **kw),  # value without a name
        lambda: build_seg(vol, lm, ["bg"], **kw),  # nothing but background
        lambda: build_parametric_map(vol, np.full(vol.shape[:3], np.nan, np.float32), label="x",
                                     method="gradcam", **kw),
        lambda: build_parametric_map(vol, np.full(vol.shape[:3], np.inf, np.float32), label="x",
                                     method="gradcam", **kw),
    ]
    for call in bad_calls:
        with pytest.raises(DicomExportError) as e:
            call()
        assert "\n" not in str(e.value)
    ct = _oblique(tmp_path / "o")
    ct.direction = np.full((3, 3), np.nan)
    with pytest.raises(DicomExportError, match="geometry is unusable"):
        build_seg(ct, np.ones(ct.shape[:3], np.uint8), ["bg", "x"], **kw)


@pytest.mark.parametrize("mutation", ["no_study_uid", "no_sop_uid", "empty_patient_module", "nan_spacing",
                                      "absurd_spacing", "truncated", "flipped_1", "flipped_2", "flipped_8",
                                      "flipped_23", "flipped_25"])
def test_mutated_real_sources_are_written_validly_or_refused(tmp_path, mutation):
    """Mutated copies of the real CR: each loads and then gives either valid objects
    (dciodvfy 0 errors, label map round trip) or a one-line DicomExportError - never a
    traceback or an object that references nothing."""
    from imaging_assist.errors import UserError

    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(need(CXR))
    if mutation == "no_study_uid":
        del ds.StudyInstanceUID
    elif mutation == "no_sop_uid":
        ds.SOPInstanceUID = ""
    elif mutation == "empty_patient_module":
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
            if kw in ds:
                delattr(ds, kw)
    elif mutation == "nan_spacing":
        ds.PixelSpacing = ["NaN", "NaN"]
    elif mutation == "absurd_spacing":
        ds.PixelSpacing = ["1e9", "1e-9"]
    ds.save_as(src / "m.dcm")
    if mutation == "truncated":
        data = (src / "m.dcm").read_bytes()
        (src / "m.dcm").write_bytes(data[: len(data) - 100])
    if mutation.startswith("flipped_"):  # 2 random bytes of the header flipped (seeds: some load, some not)
        data = bytearray((src / "m.dcm").read_bytes())
        end = data.find(b"\xe0\x7f\x10\x00") if b"\xe0\x7f\x10\x00" in data else len(data) // 10
        rng = np.random.default_rng(int(mutation.split("_")[1]))
        for pos in rng.integers(132, end, 2):
            data[pos] ^= 0xFF
        (src / "m.dcm").write_bytes(bytes(data))
    index = scan(str(src))
    if not index.image_series():  # the index refused it, with a reason
        assert index.problems
        return
    try:
        vol = load_series(index.image_series()[0])
    except UserError as e:  # the loader refusing (one line) is fine; it has its own tests
        assert "\n" not in str(e)
        return
    seg, cl = _results(vol)
    try:
        objs = write_dicom_results(vol, [seg, cl], tmp_path / "out")
    except DicomExportError as e:
        assert "\n" not in str(e)
        return
    for o in objs:
        assert dciodvfy_errors(o.path) == [], (mutation, o.path.name)
    back = highdicom.seg.segread(_by_kind(objs, "SEG")[0].path)
    sfg = back.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in sfg:  # only the spacing the engine accepted, never the file's absurd one
        assert vol.spacing_known
        assert list(map(float, sfg.PixelMeasuresSequence[0].PixelSpacing)) == [vol.spacing[1], vol.spacing[0]]
    uid = str(pydicom.dcmread(src / "m.dcm", force=True, stop_before_pixels=True).SOPInstanceUID)
    assert np.array_equal(back.get_pixels_by_source_instance([uid], combine_segments=True), seg.label_map)


def test_unknown_label_gets_a_local_code_and_a_warning(tmp_path):
    vol = _load(US)
    seg, _ = _results(vol, labels=("background", "lesion core", "halo"))
    notes: list[str] = []
    objs = write_dicom_results(vol, [seg], tmp_path / "d", warnings=notes)
    s = pydicom.dcmread(_by_kind(objs, "SEG")[0].path)
    typ = s.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert typ.CodingSchemeDesignator == "99IMGAST" and typ.CodeMeaning == "lesion core"
    assert any("no SNOMED CT code" in n and "lesion core" in n for n in notes)
    assert re.fullmatch(r"[A-Z0-9-]{1,16}", typ.CodeValue)


def _cli(*argv):
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "imaging_assist", *map(str, argv)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    return r.returncode, r.stdout, r.stderr


def test_cli_analyze_dicom_writes_valid_objects_into_dir_dicom(tmp_path):
    out = tmp_path / "out"
    rc, so, se = _cli("analyze", need(CXR), "--model", "cxr-lung-seg", "--out", out, "--dicom")
    assert rc in (0, 1), se  # 1: an item may fail the card's quality check; objects are still written
    assert "Traceback" not in se
    names = sorted(p.name for p in (out / "dicom").iterdir())
    assert any(n.endswith("_SEG.dcm") for n in names) and any(n.endswith("_SR.dcm") for n in names)
    assert "report_PDF.dcm" in names
    for n in names:
        assert dciodvfy_errors(out / "dicom" / n) == [], n
    pdf = pydicom.dcmread(out / "dicom" / "report_PDF.dcm")
    assert pdf.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength] == (out / "report.pdf").read_bytes()
    assert pdf.StudyInstanceUID == pydicom.dcmread(CXR, stop_before_pixels=True).StudyInstanceUID
    assert re.search(r"wrote \d+ DICOM object\(s\) in .*dicom", se)


def test_cli_dicom_for_a_plain_image_says_so_in_one_line_and_writes_the_pdf(tmp_path):
    img = next(p for p in sorted((need(DICOM.parent / "cxr") / "lung_masks_jsrt").rglob("*.png")))
    out = tmp_path / "out"
    rc, so, se = _cli("analyze", img, "--model", "cxr-lung-seg", "--out", out, "--dicom")
    assert "Traceback" not in se
    assert [ln for ln in se.splitlines() if "DICOM" in ln] == [f"note: {NO_SOURCE_NOTE}"]
    assert (out / "report.pdf").is_file() and not (out / "dicom").exists()


def test_gui_export_results_dicom_lists_then_writes_the_same_objects(tmp_path_factory, tmp_path):
    from _qt import open_window

    from imaging_assist.models.registry import Registry

    w = open_window(tmp_path_factory, str(need(CXR)))
    try:
        assert w.a_export_dicom.text().startswith("Export results (&DICOM)")
        vol = w.doc.volume
        seg, _ = _results(vol)
        panel = w.model_panel  # as a finished run leaves it, then its signal
        panel._run_ctx = {"card": Registry().get("cxr-lung-seg").card, "volume": vol, "settings": {},
                          "live_warnings": []}
        panel.last_result = seg
        panel.runFinished.emit("done")
        m = Measurement("ruler", [(20, 30), (120, 90)], index=0)
        m.compute_on(vol)
        w.doc.add_measurement(m)
        plan = w.dicom_exporter.plan()
        assert [ln.split(":")[0] for ln in plan] == ["SEG", "SR", "PDF"]
        written = w.dicom_exporter.export(folder=str(tmp_path / "dicom"), confirm=False)
        assert sorted(o.kind for o in written) == ["PDF", "SEG", "SR"]
        for o in written:
            assert dciodvfy_errors(o.path) == [], o.path.name
        sr = pydicom.dcmread(next(o.path for o in written if o.kind == "SR"))
        assert [float(it.MeasuredValueSequence[0].NumericValue) for it in _named(sr, "Length")] == \
            pytest.approx([m.result["length"]])
    finally:
        w.close()


def test_explanation_region_structures_get_a_seg_the_sr_references(tmp_path):
    vol = _load(CXR)
    seg, cl = _results(vol)
    cl.region_map = seg.label_map.copy()
    cl.explanation_region = {"name": "lungs", "model": "cxr-lung-seg", "model_version": "1.0.0",
                             "labels": ["right_lung", "left_lung"], "area_unit": "px",
                             "areas": {"right_lung": 111.0, "left_lung": 222.0}, "fraction_inside": 0.4}
    objs = write_dicom_results(vol, [cl], tmp_path / "d")
    assert sorted(o.kind for o in objs) == ["PM", "SEG", "SR"]
    s = pydicom.dcmread(_by_kind(objs, "SEG")[0].path)
    assert [x.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for x in s.SegmentSequence] == ["Right lung", "Left lung"]
    sr = pydicom.dcmread(_by_kind(objs, "SR")[0].path)
    refs = [r for it in _sr_items(sr) for r in (getattr(it, "ReferencedSOPSequence", None) or [])
            if r.ReferencedSOPInstanceUID == s.SOPInstanceUID]
    assert sorted(int(r.ReferencedSegmentNumber) for r in refs) == [1, 2]
    assert [float(it.MeasuredValueSequence[0].NumericValue) for it in _named(sr, "Area")] == [111.0, 222.0]
    for o in objs:
        assert dciodvfy_errors(o.path) == [], o.path.name


@pytest.mark.parametrize("folder", ["mr_enhanced_multiframe_philips", "mr_enhanced_siemens_series_jpeg2000_lossless_derived"])
def test_enhanced_mr_round_trip(tmp_path, folder):
    """Enhanced MR (geometry per frame in the functional groups, an empty Referenced Study
    Sequence in the source): valid objects, label map voxel for voxel, frames on their source
    frames within 1e-4 mm (highdicom 0.28.2 alone refused per-frame orientation/measures)."""
    vol = _load(DICOM / folder)
    seg_res, cl = _results(vol, labels=("background", "brain"))
    objs = write_dicom_results(vol, [seg_res, cl], tmp_path / "d")
    for o in objs:
        assert dciodvfy_errors(o.path) == [], o.path.name
    seg = highdicom.seg.segread(_by_kind(objs, "SEG")[0].path)
    srcs = {}
    for h in vol.headers:
        srcs.setdefault(h.path, pydicom.dcmread(h.path, stop_before_pixels=True, force=True))
    if len(srcs) == 1:  # one multi-frame file: frames of it
        (src,) = srcs.values()
        frames = [f + 1 for f in vol.frames]
        back = seg.get_pixels_by_source_frame(str(src.SOPInstanceUID), frames, combine_segments=True,
                                              assert_missing_frames_are_empty=True,  # empty frames omitted
                                              skip_overlap_checks=True)
    else:
        back = seg.get_pixels_by_source_instance(_source_uids(vol), combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(back, seg_res.label_map)
    by_uid = {str(d.SOPInstanceUID): d for d in srcs.values()}
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        src = by_uid[str(ref.ReferencedSOPInstanceUID)]
        f = int(ref.get("ReferencedFrameNumber", 1))
        pf = src.PerFrameFunctionalGroupsSequence[f - 1] if "PerFrameFunctionalGroupsSequence" in src else src
        want = np.array((pf.PlanePositionSequence[0].ImagePositionPatient if "PlanePositionSequence" in pf
                         else src.ImagePositionPatient), float)
        assert np.abs(np.array(item.PlanePositionSequence[0].ImagePositionPatient, float) - want).max() < 1e-4


@pytest.mark.parametrize("path", [CR, TILT, DICOM / "rgb_jpeg_lossless_secondary_capture"])
def test_one_structure_model_seg_is_referenced_by_the_sr(tmp_path, path):
    """A one-segment SEG shares its segment identification (highdicom's from_segmentation
    crashed on it): the SR still references the segment, everything valid."""
    vol = _load(path)
    seg_res, _ = _results(vol, labels=("background", "lesion"))
    objs = write_dicom_results(vol, [seg_res], tmp_path / "d")
    seg_uid = pydicom.dcmread(_by_kind(objs, "SEG")[0].path).SOPInstanceUID
    sr = pydicom.dcmread(_by_kind(objs, "SR")[0].path)
    refs = [r for it in _sr_items(sr) for r in (getattr(it, "ReferencedSOPSequence", None) or [])
            if r.ReferencedSOPInstanceUID == seg_uid]
    assert [int(r.ReferencedSegmentNumber) for r in refs] == [1]
    for o in objs:
        assert dciodvfy_errors(o.path) == [], o.path.name


def test_unwritable_output_is_a_one_line_error(tmp_path):
    vol = _load(US)
    seg, _ = _results(vol)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad in (blocker, blocker / "dicom"):
        with pytest.raises(DicomExportError) as e:
            write_dicom_results(vol, [seg], bad)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
