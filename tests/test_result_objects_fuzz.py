"""Fuzzing the Parametric Map and SR readers (imaging_assist.dicom.result_objects) with mutated
files written by the app's own exporters: random bytes in the header, truncations and targeted
element edits.  Each either reads exactly what was written, or a genuinely changed value whose
geometry is still checked against the series (a frame never lands silently on another slice, a
measurement never on another image), or fails as one ResultObjectError line; ``scan()`` of a
mutated file never raises.  tests/test_result_objects.py fuzzes SEG the same way."""

import copy
import io
import random
import warnings

import numpy as np
import pydicom
import pytest

from conftest import DICOM, need

import highdicom as hd  # noqa: E402 - pinned in pyproject
from pydicom.sr.codedict import codes  # noqa: E402

from imaging_assist.dicom import load_series, scan  # noqa: E402
from imaging_assist.dicom.result_objects import (ParametricMap, ResultObjectError,  # noqa: E402
                                                 StructuredReport, read_parametric_map, read_result,
                                                 read_sr)
from test_result_objects import _sources  # noqa: E402

TILT = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"  # sheared affine, uneven gaps
MR = DICOM / "mr_enhanced_multiframe_philips"  # one multi-frame source: frames by number

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns on every invalid value


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tilt():
    return load_series(scan(str(need(TILT))).image_series()[0])


@pytest.fixture(scope="module")
def mr():
    return load_series(scan(str(need(MR))).image_series()[0])


def _ds(data: bytes):
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _frame_slices(ds, vol) -> list[int]:
    """The slice of every frame, from its source reference alone (the ground truth of a file
    as written; independent of the reader)."""
    uids = [str(r.get("SOPInstanceUID")) for r in vol.headers]
    frames = list(getattr(vol, "frames", None) or [0] * len(uids))
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        fr = int(src.get("ReferencedFrameNumber") or 1)
        out.append(next(k for k, u in enumerate(uids) if u == str(src.ReferencedSOPInstanceUID)
                        and frames[k] + 1 == fr))
    return out


def _write_pm(vol, heat, path):
    from imaging_assist.export.parametric_map import write_parametric_map
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_parametric_map(vol, heat, path, label="pneumonia", method="gradcam",
                             model_id="fuzz-model", model_version="1")
    return path.read_bytes()


@pytest.fixture(scope="module")
def tilt_pm(tilt, tmp_path_factory):
    """(bytes, heat): the app's Parametric Map on the tilted CT; the slice of the FIRST frame
    holds nothing (all NaN), as a heat map computed on part of a series does."""
    d = tmp_path_factory.mktemp("pm")
    heat = np.random.default_rng(5).random(tilt.array.shape, dtype=np.float32) * 4 - 1
    k0 = _frame_slices(_ds(_write_pm(tilt, heat, d / "probe.dcm")), tilt)[0]
    heat[k0] = np.nan
    data = _write_pm(tilt, heat, d / "pm.dcm")
    assert np.array_equal(read_parametric_map(str(d / "pm.dcm"), tilt).array, heat, equal_nan=True)
    return data, heat


@pytest.fixture(scope="module")
def mr_pm(mr, tmp_path_factory):
    heat = np.random.default_rng(6).random(mr.array.shape, dtype=np.float32)
    data = _write_pm(mr, heat, tmp_path_factory.mktemp("pm") / "pm.dcm")
    assert np.array_equal(read_parametric_map(_ds(data), mr).array, heat)
    return data, heat


def _measurements(vol):
    from imaging_assist.measure import Measurement
    items = [Measurement("polygon", [(100, 120), (160, 120), (160, 140), (100, 140)], index=3),
             Measurement("ruler", [(100, 256), (200, 256)], index=4),
             Measurement("ellipse", [(270, 180), (300, 210)], index=3),
             Measurement("text", [(30, 200)], index=2, text="see prior"),
             Measurement("angle", [(10, 10), (50, 10), (50, 60)], index=5)]
    for m in items:
        m.compute_on(vol)
    return items


@pytest.fixture(scope="module")
def app_sr(tilt, tmp_path_factory):
    """The app's measurement SR (TID 1500, SCOORD regions with IMAGE references)."""
    from imaging_assist.export.sr_measurements import write_measurement_sr
    p = tmp_path_factory.mktemp("sr") / "sr.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_measurement_sr(tilt, _measurements(tilt), p)
    return p.read_bytes()


@pytest.fixture(scope="module")
def sr3d(tilt):
    """A TID 1500 SR with an SCOORD3D region on slice 3 (as test_result_objects builds one)."""
    src = _sources(tilt)
    k = 3
    # on slice 3's own plane (its ImagePositionPatient: the gaps are uneven, the affine's mean
    # spacing would put k = 3 nearer slice 4)
    ipp = np.array([float(v) for v in tilt.headers[k].get("ImagePositionPatient")])
    d = np.asarray(tilt.direction, float)
    pts = [ipp + i * tilt.spacing[0] * d[:, 0] + j * tilt.spacing[1] * d[:, 1]
           for i, j in ((100, 100), (200, 100), (200, 200), (100, 100))]
    region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POLYGON, graphic_data=np.array(pts),
                                 frame_of_reference_uid=src[k].FrameOfReferenceUID)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 1"),
        referenced_region=region, finding_type=codes.SCT.Lesion,
        measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=123.5, unit=codes.UCUM.SquareMillimeter)])
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(),
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.Comprehensive3DSR(evidence=[src[k]], content=report[0], series_number=302,
                                     series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(),
                                     instance_number=1, manufacturer="Other Tool")
    buf = io.BytesIO()
    sr.save_as(buf)
    return buf.getvalue()


def _one_line(fn, *args, match=None) -> str:
    with pytest.raises(ResultObjectError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg.strip() and "\n" not in msg and "\r" not in msg and len(msg) < 400, msg
    if match:
        assert match in msg, msg
    return msg


def _flipped_files(data: bytes, tmp_path, seed: int, count: int = 150, end: int | None = None):
    """(n, path) of ``count`` copies of ``data`` with 1-4 random bytes after the preamble (and
    before ``end``) set to random values (the same copies for the same seed)."""
    rnd = random.Random(seed)
    end = len(data) if end is None else end
    for n in range(count):
        mutated = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            mutated[rnd.randrange(132, end)] = rnd.randrange(256)
        p = tmp_path / f"m{n}.dcm"
        p.write_bytes(bytes(mutated))
        yield n, p


def _scan_never_raises(path):
    idx = scan(str(path))  # the index never raises: a series or a problem with its reason
    assert len(idx.all_series()) + len(idx.problems) == 1


def _read_each(files, read, cls, outcomes: dict):
    """For each flipped file: the index never raises, and ``read(path)`` either fails in one
    line (counted in ``outcomes["error"]``) or gives a ``cls`` whose warnings are one line each
    (counted in ``outcomes["loaded"]`` and yielded as ``(n, object)``)."""
    for n, p in files:
        _scan_never_raises(p)
        try:
            obj = read(str(p))
        except ResultObjectError as e:
            assert "\n" not in str(e) and len(str(e)) < 300, n
            outcomes["error"] = outcomes.get("error", 0) + 1
            continue
        assert isinstance(obj, cls), n
        outcomes["loaded"] = outcomes.get("loaded", 0) + 1
        assert all(isinstance(w, str) and "\n" not in w for w in obj.warnings), n
        yield n, obj


# --------------------------------------------------------------------------- Parametric Map
def _expected_pm(ds, orig_slices, shape):
    """What a mutated map must read as: every frame on the slice it had in the file as
    written, in the real-world values of the mutated file (a changed slope is a changed value,
    a frame on another slice never is)."""
    from pydicom.pixels import pixel_array
    px = np.asarray(pixel_array(ds)).reshape((-1,) + shape[1:])
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    out = np.full(shape, np.nan, np.float32)
    for f, k in enumerate(orig_slices):
        vals = px[f].astype(np.float64)
        for it in (per[f] if per else None, shared):
            if it is not None and it.get("RealWorldValueMappingSequence"):
                rw = it.RealWorldValueMappingSequence[0]
                vals = vals * float(rw.RealWorldValueSlope) + float(rw.RealWorldValueIntercept)
                break
        out[k] = vals.astype(np.float32)
    return out


@pytest.mark.parametrize("which,count", [("mr", 150), ("tilt", 40)])
def test_pm_header_byte_fuzz_loads_exactly_or_fails_in_one_line(which, count, request, tmp_path):
    vol = request.getfixturevalue(which)
    data, heat = request.getfixturevalue(f"{which}_pm")
    orig_slices = _frame_slices(_ds(data), vol)
    header_end = max(data.find(t) for t in (b"\xe0\x7f\x08\x00", b"\xe0\x7f\x10\x00"))  # (Float) Pixel Data
    outcomes = {"error": 0, "exact": 0, "changed": 0}
    files = _flipped_files(data, tmp_path, seed=17, count=count, end=header_end)
    for n, pm in _read_each(files, lambda p: read_result(p, vol), ParametricMap, outcomes):
        mutated = (tmp_path / f"m{n}.dcm").read_bytes()
        assert pm.array.shape == vol.array.shape and pm.array.dtype == np.float32
        if np.array_equal(pm.array, heat, equal_nan=True):
            outcomes["exact"] += 1
            continue
        outcomes["changed"] += 1  # a changed slope/intercept: still each frame on its own slice
        want = _expected_pm(_ds(bytes(mutated)), orig_slices, vol.array.shape)
        assert np.array_equal(pm.array, want, equal_nan=True), f"mutation {n}: frames moved"
        if np.isinf(pm.array).any():
            assert any("infinite" in w for w in pm.warnings)
    assert outcomes["exact"] and outcomes["error"], outcomes


def _pf(d, f):
    return d.PerFrameFunctionalGroupsSequence[f]


def _shared(d):
    return d.SharedFunctionalGroupsSequence[0]


def _measures(d):
    """The Pixel Measures item: shared, or the first frame's (slices of different thickness
    carry theirs per frame)."""
    sfg = _shared(d)
    return (sfg if "PixelMeasuresSequence" in sfg else d.PerFrameFunctionalGroupsSequence[0]).PixelMeasuresSequence[0]


def _rw(d):
    return _shared(d).RealWorldValueMappingSequence[0]


def _src(d, f):
    return _pf(d, f).DerivationImageSequence[0].SourceImageSequence[0]


def _ipp(d, f, v):
    _pf(d, f).PlanePositionSequence[0].ImagePositionPatient = v


def _move_onto(f, g):
    """Frame f placed (by position alone) on the slice of frame g."""
    def edit(d):
        del _pf(d, f).DerivationImageSequence
        _ipp(d, f, list(_pf(d, g).PlanePositionSequence[0].ImagePositionPatient))
    return edit


# name -> (edit, expected): "error:<text in the message>", "exact" or "changed"
def _pm_cases():
    nan = float("nan")
    return {
        # the first frame holds only NaN: a second frame on its slice must still be refused
        "frame 2 onto the all-NaN slice of frame 1": (_move_onto(1, 0), "error:two frames on slice"),
        "frame 3 onto the slice of frame 2": (_move_onto(2, 1), "error:two frames on slice"),
        "position NaN": (lambda d: _ipp(d, 1, [nan, 0, 0]), "error:frame 2: unusable ImagePositionPatient"),
        "position inf": (lambda d: _ipp(d, 1, ["inf", 0, 0]), "error:frame 2: unusable ImagePositionPatient"),
        "position with 2 values": (lambda d: _ipp(d, 1, [1.0, 2.0]), "error:frame 2: unusable ImagePositionPatient"),
        "position absurd": (lambda d: _ipp(d, 1, [1e300, -1e300, 1e300]), "error:frame 2"),
        "position on another slice, reference kept": (
            lambda d: _ipp(d, 1, list(_pf(d, 2).PlanePositionSequence[0].ImagePositionPatient)), "error:frame 2 references"),
        "position removed": (lambda d: delattr(_pf(d, 1), "PlanePositionSequence"), "exact"),
        "references removed": (lambda d: [delattr(p, "DerivationImageSequence")
                                          for p in d.PerFrameFunctionalGroupsSequence], "exact"),
        "references and positions removed": (
            lambda d: [(delattr(p, "DerivationImageSequence"), delattr(p, "PlanePositionSequence"))
                       for p in d.PerFrameFunctionalGroupsSequence], "error:cannot place it"),
        "reference to another slice": (
            lambda d: setattr(_src(d, 1), "ReferencedSOPInstanceUID", _src(d, 2).ReferencedSOPInstanceUID), "error:frame 2"),
        "reference elsewhere": (lambda d: setattr(_src(d, 1), "ReferencedSOPInstanceUID", "1.2.3.4"),
                                "error:not in the series"),
        "frame number 0": (lambda d: setattr(_src(d, 1), "ReferencedFrameNumber", 0), "error:frame 2"),
        "frame number 0 without position": (
            lambda d: (setattr(_src(d, 1), "ReferencedFrameNumber", 0), delattr(_pf(d, 1), "PlanePositionSequence")),
            "error:frame 2 references an image that is not in the series"),
        "frame number 2 of a single-frame image": (lambda d: setattr(_src(d, 1), "ReferencedFrameNumber", 2),
                                                   "error:frame 2"),
        "series elsewhere": (lambda d: setattr(d.ReferencedSeriesSequence[0], "SeriesInstanceUID", "1.2.3"),
                             "error:references series 1.2.3"),
        "orientation NaN": (lambda d: setattr(_shared(d).PlaneOrientationSequence[0], "ImageOrientationPatient", [nan] * 6),
                            "error:ImageOrientationPatient"),
        "orientation of another plane": (
            lambda d: setattr(_shared(d).PlaneOrientationSequence[0], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]),
            "error:orientation"),
        "orientation with 5 values": (
            lambda d: setattr(_shared(d).PlaneOrientationSequence[0], "ImageOrientationPatient", [1, 0, 0, 0, 1]),
            "error:ImageOrientationPatient"),
        "pixel spacing NaN": (lambda d: setattr(_measures(d), "PixelSpacing", [nan, nan]),
                              "error:PixelSpacing"),
        "pixel spacing negative": (
            lambda d: setattr(_measures(d), "PixelSpacing", [-0.4882812, -0.4882812]),
            "error:PixelSpacing"),
        "pixel spacing 0": (lambda d: setattr(_measures(d), "PixelSpacing", [0, 0]),
                            "error:PixelSpacing"),
        "pixel spacing 1 value": (lambda d: setattr(_measures(d), "PixelSpacing", [0.5]),
                                  "error:PixelSpacing"),
        "Rows 0": (lambda d: setattr(d, "Rows", 0), "error:0x512"),
        "Rows 65535": (lambda d: setattr(d, "Rows", 65535), "error:65535x512"),
        "Rows missing": (lambda d: delattr(d, "Rows"), "error:0x512"),
        "Columns 256": (lambda d: setattr(d, "Columns", 256), "error:512x256"),
        "NumberOfFrames 7": (lambda d: setattr(d, "NumberOfFrames", 7), "error:per-frame"),
        "NumberOfFrames 100000": (lambda d: setattr(d, "NumberOfFrames", 100000), "error:100000 frames"),
        "NumberOfFrames -1": (lambda d: setattr(d, "NumberOfFrames", -1), "error:per-frame"),
        "NumberOfFrames 0": (lambda d: setattr(d, "NumberOfFrames", 0), "error:per-frame"),
        "NumberOfFrames missing": (lambda d: delattr(d, "NumberOfFrames"), "error:per-frame"),
        "slope NaN": (lambda d: setattr(_rw(d), "RealWorldValueSlope", nan), "error:slope"),
        "slope inf": (lambda d: setattr(_rw(d), "RealWorldValueSlope", float("inf")), "error:slope"),
        "slope 0": (lambda d: setattr(_rw(d), "RealWorldValueSlope", 0.0), "error:slope"),
        "slope missing": (lambda d: delattr(_rw(d), "RealWorldValueSlope"), "error:no slope/intercept"),
        "intercept NaN": (lambda d: setattr(_rw(d), "RealWorldValueIntercept", nan), "error:intercept"),
        "intercept -inf": (lambda d: setattr(_rw(d), "RealWorldValueIntercept", -float("inf")), "error:intercept"),
        "intercept missing": (lambda d: delattr(_rw(d), "RealWorldValueIntercept"), "error:no slope/intercept"),
        "slope 2": (lambda d: setattr(_rw(d), "RealWorldValueSlope", 2.0), "changed"),
        "intercept 1e300": (lambda d: setattr(_rw(d), "RealWorldValueIntercept", 1e300), "changed"),
        "slope 2 on frame 2 only": (
            lambda d: (setattr(_pf(d, 1), "RealWorldValueMappingSequence", [copy.deepcopy(_rw(d))]),
                       setattr(_pf(d, 1).RealWorldValueMappingSequence[0], "RealWorldValueSlope", 2.0)), "changed"),
        "LUT instead of slope": (lambda d: (delattr(_rw(d), "RealWorldValueSlope"),
                                            setattr(_rw(d), "RealWorldValueLUTData", [0.0, 1.0])), "error:LUT"),
        "float data 4 bytes short": (lambda d: setattr(d, "FloatPixelData", d.FloatPixelData[:-4]), "error:pixel data"),
        "float data one frame short": (lambda d: setattr(d, "FloatPixelData", d.FloatPixelData[:-512 * 512 * 4]),
                                       "error:pixel data"),
        "float data one frame long": (lambda d: setattr(d, "FloatPixelData", d.FloatPixelData + bytes(512 * 512 * 4)),
                                      "error:pixel data"),
        "float data 3 bytes long": (lambda d: setattr(d, "FloatPixelData", d.FloatPixelData + b"\0\0\0"), "exact"),
        "float data empty": (lambda d: setattr(d, "FloatPixelData", b""), "error:pixel data"),
        "float data as double": (lambda d: (setattr(d, "DoubleFloatPixelData", d.FloatPixelData),
                                            delattr(d, "FloatPixelData")), "error:pixel data"),
        "BitsAllocated 64": (lambda d: setattr(d, "BitsAllocated", 64), "error:pixel data"),
        "per-frame groups removed": (lambda d: delattr(d, "PerFrameFunctionalGroupsSequence"), "error:cannot place it"),
        "a per-frame group removed": (lambda d: d.PerFrameFunctionalGroupsSequence.pop(3), "error:per-frame"),
        "SOP class of a SEG": (lambda d: setattr(d, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.66.4"),
                               "error:not a parametric map"),
        "a line break in the referenced series": (
            lambda d: setattr(d.ReferencedSeriesSequence[0], "SeriesInstanceUID", "1.2\n3"), "error:references series"),
    }


def _check_pm_case(fn, expected, data, vol, heat, name):
    d = _ds(data)
    fn(d)
    if expected.startswith("error:"):
        _one_line(read_parametric_map, d, vol, match=expected[len("error:"):])
        return
    pm = read_parametric_map(d, vol)
    if expected == "exact":
        assert np.array_equal(pm.array, heat, equal_nan=True), name
    else:
        assert not np.array_equal(pm.array, heat, equal_nan=True), name
        assert np.array_equal(pm.array, _expected_pm(d, _frame_slices(_ds(data), vol), vol.array.shape),
                              equal_nan=True), name
        if np.isinf(pm.array).any():
            assert any("infinite" in w for w in pm.warnings), name


def test_pm_targeted_edits(tilt, tilt_pm):
    data, heat = tilt_pm
    failures = []
    for name, (fn, expected) in _pm_cases().items():
        try:
            _check_pm_case(fn, expected, data, tilt, heat, name)
        except BaseException as e:  # noqa: BLE001 - collect every escape, name each
            failures.append(f"{name}: expected {expected}: {type(e).__name__}: {str(e)[:200]}")
    assert not failures, "\n".join(failures)


def test_pm_frame_numbers_of_a_multiframe_source(mr, mr_pm):
    """A multi-frame source is referenced by frame number: 0 is no frame (never the first),
    one past the end is none, another frame's number with its position kept is refused."""
    data, heat = mr_pm
    for fr, keep_position, match in ((0, False, "not in the series"), (0, True, "frame 1"),
                                     (33, False, "not in the series"), (-1, False, "not in the series")):
        d = _ds(data)
        item = _pf(d, 2)
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = fr
        if not keep_position:
            del item.PlanePositionSequence
        _one_line(read_parametric_map, d, mr, match=match if fr != 0 or not keep_position else "frame 3")
    d = _ds(data)  # frame 3 pointed at frame 5's source frame: its position says otherwise
    s5 = _src(d, 4)
    _src(d, 2).ReferencedFrameNumber = s5.ReferencedFrameNumber
    _one_line(read_parametric_map, d, mr, match="frame 3 references slice")
    d = _ds(data)  # ... and without its position, two frames claim one slice
    _src(d, 2).ReferencedFrameNumber = s5.ReferencedFrameNumber
    del _pf(d, 2).PlanePositionSequence
    _one_line(read_parametric_map, d, mr, match="two frames on slice")


def test_truncated_pm_and_sr_are_one_line(tilt, mr, mr_pm, app_sr, tmp_path):
    data, _ = mr_pm
    for cut in list(range(200, len(data), max(1, len(data) // 40))) + [len(data) - 1]:
        p = tmp_path / "pm.dcm"
        p.write_bytes(data[:cut])
        _scan_never_raises(p)
        _one_line(read_parametric_map, str(p), mr)
    full = read_sr(_ds(app_sr))
    loaded = 0
    for cut in list(range(200, len(app_sr), 97)) + [len(app_sr) - 1]:
        p = tmp_path / "sr.dcm"
        p.write_bytes(app_sr[:cut])
        _scan_never_raises(p)
        try:
            sr = read_sr(str(p))
        except ResultObjectError as e:
            assert "\n" not in str(e)
            continue
        # a cut between two elements before the content: nothing listed, and said
        loaded += 1
        assert not sr.items and sr.warnings, cut
    assert loaded < 10 and full.items


def test_the_file_is_truncated_names_the_element(mr, mr_pm, app_sr):
    data, _ = mr_pm
    _one_line(read_parametric_map, pydicom.dcmread(io.BytesIO(data[: len(data) - 10]), force=True), mr,
              match="truncated")
    _one_line(read_sr, pydicom.dcmread(io.BytesIO(app_sr[: len(app_sr) // 2]), force=True), match="truncated")


def test_a_corrupt_sop_class_is_one_line_in_read_result(mr, mr_pm, tmp_path):
    data, _ = mr_pm
    at = data.index(b"\x08\x00\x16\x00UI")
    p = tmp_path / "vr.dcm"
    p.write_bytes(data[:at + 4] + b"\x55\xf7" + data[at + 6:])  # a VR pydicom does not know
    _scan_never_raises(p)
    _one_line(read_result, str(p), mr)
    d = _ds(data)
    d.SOPClassUID = "1.2.840.10008.5.1.4.1.1.30\n2"
    _one_line(read_result, d, mr)


# --------------------------------------------------------------------------- SR
def _walk(seq):
    for it in seq or []:
        yield it
        yield from _walk(it.get("ContentSequence"))


def _measurement_items(d, vt):
    """Content items of one value type inside "Imaging Measurements" (not the image library)."""
    im = next(i for i in d.ContentSequence if i.get("ValueType") == "CONTAINER"
              and i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements")
    return [i for i in _walk(im.ContentSequence) if i.get("ValueType") == vt]


def _slices(sr, vol):
    return {(i.kind, i.group, i.name): i.slice_in(vol) for i in sr.items}


def test_app_sr_reads_back_on_its_slices(tilt, app_sr):
    sr = read_sr(_ds(app_sr))
    assert not sr.warnings
    got = {(g.split()[1], name): k for (kind, g, name), k in _slices(sr, tilt).items()}
    assert got[("polygon", "Mean")] == 3 and got[("ruler", "Length")] == 4
    assert got[("ellipse", "Area")] == 3 and got[("text", "Comment")] == 2 and got[("angle", "Angle")] == 5


def _sr_num_cases():
    def num(v):
        def edit(d):
            mv = _measurement_items(d, "NUM")[0].MeasuredValueSequence[0]
            if v is None:
                del mv.NumericValue
            else:
                mv["NumericValue"].value = v
        return edit
    return {
        "NaN": (num("nan"), "not a finite number"), "inf": (num("inf"), "not a finite number"),
        "-inf": (num("-inf"), "not a finite number"), "1e400": (num("1e400"), "not a finite number"),
        "empty": (num(""), "no numeric value"), "missing": (num(None), "no numeric value"),
        "two values": (num(["1", "2"]), "no numeric value"),
        "no measured value": (lambda d: setattr(_measurement_items(d, "NUM")[0], "MeasuredValueSequence", []),
                              "has no value"),
    }


@pytest.mark.parametrize("case", list(_sr_num_cases()))
def test_sr_numbers_that_are_not_finite_are_left_out_and_said(tilt, app_sr, case):
    fn, warning = _sr_num_cases()[case]
    full = read_sr(_ds(app_sr))
    d = _ds(app_sr)
    fn(d)
    sr = read_sr(d)
    assert len(sr.items) == len(full.items) - 1  # the polygon's mean, and only it
    assert all(np.isfinite(i.number) for i in sr.items if i.kind == "measurement")
    assert any(warning in w for w in sr.warnings) and all("\n" not in w for w in sr.warnings)
    assert _slices(sr, tilt).items() <= _slices(full, tilt).items()


def test_sr_huge_number_and_missing_units(tilt, app_sr):
    d = _ds(app_sr)
    _measurement_items(d, "NUM")[0].MeasuredValueSequence[0].NumericValue = "1e300"
    sr = read_sr(d)
    assert sr.items[0].number == 1e300 and sr.items[0].value == "1e+300" and not sr.warnings
    for edit in (lambda mv: delattr(mv, "MeasurementUnitsCodeSequence"),
                 lambda mv: setattr(mv, "MeasurementUnitsCodeSequence", []),
                 lambda mv: (delattr(mv.MeasurementUnitsCodeSequence[0], "CodeValue"),
                             delattr(mv.MeasurementUnitsCodeSequence[0], "CodeMeaning"))):
        d = _ds(app_sr)
        edit(_measurement_items(d, "NUM")[0].MeasuredValueSequence[0])
        sr = read_sr(d)
        assert sr.items[0].unit == "" and any("has no unit" in w for w in sr.warnings)
        assert sr.items[0].slice_in(tilt) == 3


def _scoord_cases(dims):
    def data(fn):
        def edit(d):
            it = _measurement_items(d, "SCOORD3D" if dims == 3 else "SCOORD")[0]
            it["GraphicData"].value = fn(list(it.GraphicData))
        return edit

    def attr(kw, v):
        def edit(d):
            it = _measurement_items(d, "SCOORD3D" if dims == 3 else "SCOORD")[0]
            if v is None:
                delattr(it, kw)
            else:
                setattr(it, kw, v)
        return edit
    return {
        "NaN": (data(lambda g: [float("nan")] * len(g)), "not finite"),
        "inf": (data(lambda g: g[:-1] + [float("inf")]), "not finite"),
        "odd count": (data(lambda g: g[:-1]), "not a multiple"),
        "one value": (data(lambda g: g[:1]), "not a multiple"),
        "empty": (data(lambda g: []), "0 graphic data values"),
        "graphic type unknown": (attr("GraphicType", "FOO"), "graphic type FOO"),
        "graphic type missing": (attr("GraphicType", None), "graphic type missing"),
        "POINT with many points": (attr("GraphicType", "POINT"), "points for a POINT"),
        "wrong count for the graphic type": ((attr("GraphicType", "ELLIPSOID"), "4 points for a ELLIPSOID") if dims == 3
                                             else (attr("GraphicType", "ELLIPSE"), "5 points for a ELLIPSE")),
    }


@pytest.mark.parametrize("case", list(_scoord_cases(2)))
def test_sr_bad_2d_regions_are_said_and_the_image_reference_kept(tilt, app_sr, case):
    fn, warning = _scoord_cases(2)[case]
    d = _ds(app_sr)
    fn(d)
    sr = read_sr(d)
    assert any(warning in w and "viewer polygon" in w for w in sr.warnings), sr.warnings
    assert _slices(sr, tilt) == _slices(read_sr(_ds(app_sr)), tilt)  # the IMAGE reference places it


@pytest.mark.parametrize("case", list(_scoord_cases(3)) + ["no frame of reference", "as a 2D region"])
def test_sr_bad_3d_regions_place_nothing_and_are_said(tilt, sr3d, case):
    if case == "no frame of reference":
        fn, warning = (lambda d: delattr(_measurement_items(d, "SCOORD3D")[0], "ReferencedFrameOfReferenceUID"),
                       "no frame of reference")
    elif case == "as a 2D region":  # 3D coordinates read as SCOORD: 12 values are 6 (x, y)
        fn, warning = (lambda d: setattr(_measurement_items(d, "SCOORD3D")[0], "ValueType", "SCOORD"),
                       "graphic type POLYGON")
    else:
        fn, warning = _scoord_cases(3)[case]
    assert set(_slices(read_sr(_ds(sr3d)), tilt).values()) == {3}
    d = _ds(sr3d)
    fn(d)
    sr = read_sr(d)
    assert any(warning in w and "lesion 1" in w for w in sr.warnings), sr.warnings
    assert all(i.point_lps is None and i.slice_in(tilt) is None for i in sr.items)


def _move_3d(d, delta):
    it = _measurement_items(d, "SCOORD3D")[0]
    it.GraphicData = (np.asarray(it.GraphicData, float).reshape(-1, 3) + np.asarray(delta, float)).ravel().tolist()


def test_sr_3d_points_off_the_series_refer_to_no_image(tilt, sr3d):
    ipp = [np.array([float(v) for v in r.get("ImagePositionPatient")]) for r in tilt.headers]
    row_dir = np.asarray(tilt.direction, float)[:, 0]
    for name, edit, want in (
            ("another frame of reference", lambda d: setattr(_measurement_items(d, "SCOORD3D")[0],
                                                             "ReferencedFrameOfReferenceUID", "1.2.3.4"), None),
            # at the level of slice 3, beside its image: the slice of that level (as before)
            ("beside the image (in plane)", lambda d: _move_3d(d, row_dir * 1000), 3),
            ("far along the normal", lambda d: _move_3d(d, np.asarray(tilt.normal) * 100), None),
            ("1e30 everywhere", lambda d: setattr(_measurement_items(d, "SCOORD3D")[0], "GraphicData", [1e30] * 12), None),
            # a genuinely changed position: the slice it now lies on, by that slice's own position
            ("moved onto the next slice", lambda d: _move_3d(d, ipp[4] - ipp[3]), 4),
            ("moved onto the first slice", lambda d: _move_3d(d, ipp[0] - ipp[3]), 0)):
        d = _ds(sr3d)
        edit(d)
        sr = read_sr(d)
        assert {i.slice_in(tilt) for i in sr.items} == {want}, name


def test_sr_image_references_by_frame_number(tilt, app_sr):
    def refs(d):
        return _measurement_items(d, "IMAGE")
    full = _slices(read_sr(_ds(app_sr)), tilt)
    for fr in (0, 2, -1):  # single-frame images: only frame 1 (or none) is the image
        d = _ds(app_sr)
        for it in refs(d):
            it.ReferencedSOPSequence[0].ReferencedFrameNumber = fr
        assert set(_slices(read_sr(d), tilt).values()) == {None}, fr
    d = _ds(app_sr)
    for it in refs(d):
        it.ReferencedSOPSequence[0].ReferencedFrameNumber = 1
    assert _slices(read_sr(d), tilt) == full
    d = _ds(app_sr)  # every reference to an image of another series: none of ours
    for it in refs(d):
        it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    assert set(_slices(read_sr(d), tilt).values()) == {None}


@pytest.mark.parametrize("which", ["app_sr", "sr3d"])
def test_sr_byte_fuzz_never_attaches_a_measurement_elsewhere(which, tilt, request, tmp_path):
    data = request.getfixturevalue(which)
    full = read_sr(_ds(data))
    by_value = {(i.kind, i.value, i.unit): i for i in full.items}
    ipp = np.array([[float(v) for v in r.get("ImagePositionPatient")] for r in tilt.headers])
    n_vec = np.asarray(tilt.normal, float)
    half_gap = float(np.max(np.abs(np.diff(ipp @ n_vec)))) / 2
    outcomes = {"error": 0, "loaded": 0}
    files = _flipped_files(data, tmp_path, seed=23)
    for n, sr in _read_each(files, lambda p: read_result(p, tilt), StructuredReport, outcomes):
        for it in sr.items:
            k = it.slice_in(tilt)
            orig = by_value.get((it.kind, it.value, it.unit))
            if orig is not None and it.references == orig.references and it.point_lps == orig.point_lps:
                assert k in (None, orig.slice_in(tilt)), (n, it)
            if k is not None and not any(u for u, _ in it.references):  # placed by its 3D point
                p3 = np.asarray(it.point_lps, float)
                assert np.all(np.isfinite(p3)) and abs(float((p3 - ipp[k]) @ n_vec)) <= half_gap + 1e-6, (n, it)
            if it.kind == "measurement":
                assert np.isfinite(it.number), (n, it)
    assert outcomes["loaded"] and outcomes["error"], outcomes


# --------------------------------------------------------------------------- regions drawn
@pytest.mark.parametrize("which", ["app_sr", "sr3d"])
def test_sr_region_byte_fuzz_places_or_says_in_one_line(which, tilt, request, tmp_path):
    """The regions of a mutated SR on the tilted, unevenly spaced series: placed (finite points,
    a region whose own numbers are intact exactly where it was) or said in one line."""
    from imaging_assist.dicom.sr_regions import MAX_REGION_POINTS, place_regions
    data = request.getfixturevalue(which)
    layer, warns = place_regions(read_sr(_ds(data)), tilt)
    assert warns == [] and layer is not None
    where = {tuple(np.round(s.points, 6).ravel()) for s in layer.shapes}
    originals = {(r.graphic_type, tuple(map(tuple, r.points)), tuple(r.references), r.frame_of_reference)
                 for it in read_sr(_ds(data)).items for r in it.regions}
    placed = 0
    for n, p in _flipped_files(data, tmp_path, seed=31):
        try:
            sr = read_sr(str(p))
        except ResultObjectError as e:
            assert "\n" not in str(e), n
            continue
        got, warns = place_regions(sr, tilt)
        assert all(isinstance(w, str) and "\n" not in w for w in warns), n
        for s in got.shapes if got is not None else []:
            assert np.all(np.isfinite(s.points)) and len(s.points) <= max(MAX_REGION_POINTS, 64), n
            placed += 1
        # a region the flipped bytes did not touch (same type, numbers and image references)
        # lands exactly where it did: nothing else in the file moves it
        for it in sr.items:
            for r in it.regions:
                key = (r.graphic_type, tuple(map(tuple, r.points)), tuple(r.references), r.frame_of_reference)
                if key in originals:
                    one, _ = place_regions(StructuredReport("t", "", [it]), tilt)
                    assert one is not None and tuple(np.round(one.shapes[0].points, 6).ravel()) in where, n
    assert placed


def test_presentation_state_byte_fuzz_is_placed_or_one_line(tilt, tmp_path):
    """A GSPS on the tilted series, bytes flipped: read and placed (finite points on slices of
    the series), or one ResultObjectError line; scan() never raises."""
    from imaging_assist.dicom.presentation_state import PresentationState, read_presentation_state
    src = _sources(tilt)
    layer = hd.pr.GraphicLayer(layer_name="R", order=1)
    ann = hd.pr.GraphicAnnotation(
        referenced_images=[src[2]], graphic_layer=layer,
        graphic_objects=[hd.pr.GraphicObject("POLYLINE", np.array([[10.5, 10.5], [60.5, 10.5], [60.5, 40.5]]), "PIXEL"),
                         hd.pr.GraphicObject("CIRCLE", np.array([[100.5, 100.5], [110.5, 100.5]]), "PIXEL")],
        text_objects=[hd.pr.TextObject("note", "PIXEL", anchor_point=(30.5, 30.5))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=src, series_instance_uid=hd.UID(), series_number=400, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="W", manufacturer_model_name="W", software_versions="1",
            device_serial_number="1", content_label="R", graphic_layers=[layer], graphic_annotations=[ann])
    buf = io.BytesIO()
    ps.save_as(buf)
    data = buf.getvalue()
    base = read_presentation_state(_ds(data), tilt)
    assert len(base.layer.shapes) == 3 and base.warnings == []
    outcomes = {"error": 0, "loaded": 0}
    files = _flipped_files(data, tmp_path, seed=37)
    for n, got in _read_each(files, lambda p: read_presentation_state(p, tilt), PresentationState, outcomes):
        for s in got.layer.shapes if got.layer is not None else []:
            assert np.all(np.isfinite(s.points)) and set(np.unique(s.points[:, 0])) <= set(range(tilt.n_slices)), n
    assert outcomes["loaded"] and outcomes["error"], outcomes
