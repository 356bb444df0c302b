"""Wrong header values never load silently (issue 12): spacing, orientation, position,
rescale, size; and where the pixel spacing comes from (PS3.3 10.7.1.3)."""

import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from _synth import write_ct_series
from conftest import DICOM, need
from imaging_assist.dicom import LoadError, load_series, scan
from imaging_assist.measure import Measurement


def _patch(path, old: bytes, new: bytes) -> None:
    """Replace a header value in place, same length (DS text the writers would refuse)."""
    data = path.read_bytes()
    assert data.count(old) == 1, (old, data.count(old))
    new = new.ljust(len(old))
    assert len(new) == len(old)
    path.write_bytes(data.replace(old, new))


def _patch_ds(path, tag: int, new: bytes) -> None:
    """Overwrite the value of a DS element (explicit VR LE) in place, keeping its length."""
    data = bytearray(path.read_bytes())
    head = tag.to_bytes(4, "big")
    key = head[1::-1] + head[3:1:-1] + b"DS"
    i = data.index(key)
    n = int.from_bytes(data[i + 6:i + 8], "little")
    assert len(new) <= n, (new, n)
    data[i + 8:i + 8 + n] = new.ljust(n)
    path.write_bytes(bytes(data))


def _load(folder):
    return load_series(scan(str(folder)).image_series()[0])


def _load_or_refused(folder, attr):
    """The volume, or None when the index or the loader refused the files with a one-line
    reason naming ``attr`` (either is correct; loading silently is not)."""
    index = scan(str(folder))
    if not index.image_series():
        assert index.problems and all(attr in p.reason and "\n" not in p.reason for p in index.problems), \
            index.problems
        return None
    try:
        return load_series(index.image_series()[0])
    except LoadError as e:
        assert attr in str(e) and "\n" not in str(e), str(e)
        return None


def _series(tmp_path, n=3, **kw):
    return write_ct_series(tmp_path, [(0, 0, float(z)) for z in range(n)], **kw)


# ----------------------------------------------------------------------------- pixel spacing
@pytest.mark.parametrize("bad", [b"nan", b"inf", b"0.0", b"-0.5", b"500", b"1e-6"])
def test_bad_pixel_spacing_means_unknown_spacing(tmp_path, bad):
    paths = _series(tmp_path, spacing=(0.5, 0.7))
    for p in paths:
        _patch_ds(p, 0x00280030, bad + b"\\0.7")
    vol = _load(tmp_path)  # a bad spacing never hides the image: it opens, lengths in px
    assert vol.spacing_source == "none" and not vol.spacing_known
    assert any("PixelSpacing" in w for w in vol.warnings), vol.warnings
    g = vol.geometry_dict()
    assert g["spacing_source"] == "none" and g["spacing_known"] is False
    m = Measurement("ruler", [(0, 0), (0, 10)])
    m.compute_on(vol)
    assert m.summary() == "10.0 px (no spacing)" and m.to_dict()["length_unit"] == "px"


def test_good_pixel_spacing_is_the_source(tmp_path):
    _series(tmp_path, spacing=(0.5, 0.7))
    vol = _load(tmp_path)
    assert vol.spacing_source == "PixelSpacing" and vol.spacing_known
    assert vol.geometry_dict()["spacing_source"] == "PixelSpacing"
    m = Measurement("ruler", [(0, 0), (10, 0)])
    m.compute_on(vol)
    assert m.summary() == "7.0 mm (PixelSpacing)"
    assert m.to_dict()["spacing_source"] == "PixelSpacing"


# ----------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("iop", [(0, 0, 0, 0, 0, 0), (1, 0, 0, 1, 0, 0), (1, 0, 0, 0.5, 0.5, 0),
                                 (2, 0, 0, 0, 1, 0)])
def test_bad_orientation_means_no_geometry(tmp_path, iop):
    _series(tmp_path, iop=iop)
    vol = _load(tmp_path)
    assert not vol.has_geometry
    assert any("ImageOrientationPatient" in w for w in vol.warnings), vol.warnings


def test_nan_orientation_means_no_geometry(tmp_path):
    paths = _series(tmp_path)
    for p in paths:
        _patch(p, b"1.000000\\0.000000\\0.000000\\0.000000\\1.000000",
               b"nan\\0.000000\\0.000000\\0.000000\\1.000000")
    vol = _load(tmp_path)  # opens as images without 3D geometry
    assert not vol.has_geometry and any("ImageOrientationPatient" in w for w in vol.warnings)


def test_rounded_orientation_loads_quietly_reorthonormalised(tmp_path):
    a = math.radians(30)
    iop = (math.cos(a), math.sin(a), 0.0, -math.sin(a), math.cos(a), 0.0)
    # written with 6 decimals, then nudged by ~1e-4 as some scanners' rounding does
    iop = (iop[0] + 1e-4, iop[1], 0.0, iop[3], iop[4] - 1e-4, 1e-4)
    _series(tmp_path, iop=iop)
    vol = _load(tmp_path)
    assert vol.has_geometry and vol.warnings == []
    d = np.asarray(vol.direction)
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-9)
    assert np.allclose(d[:, 0], iop[:3], atol=3e-4)


# ----------------------------------------------------------------------------- position
@pytest.mark.parametrize("bad", [b"nan", b"inf"])
def test_non_finite_position_means_no_geometry(tmp_path, bad):
    paths = _series(tmp_path)
    _patch_ds(paths[1], 0x00200032, b"0.000000\\0.000000\\" + bad)
    assert not scan(str(tmp_path)).problems  # the pixels are fine: the loader decides
    vol = _load(tmp_path)
    assert not vol.has_geometry
    assert any("ImagePositionPatient" in w for w in vol.warnings), vol.warnings
    assert np.all(np.isfinite(vol.origin))


# ----------------------------------------------------------------------------- rescale
@pytest.mark.parametrize("attr,tag,bad", [("RescaleSlope", 0x00281053, b"nan"),
                                          ("RescaleSlope", 0x00281053, b"inf"),
                                          ("RescaleIntercept", 0x00281052, b"nan"),
                                          ("RescaleSlope", 0x00281053, b"1e39"),
                                          ("RescaleSlope", 0x00281053, b"0")])
def test_non_finite_rescale_is_refused(tmp_path, attr, tag, bad):
    paths = _series(tmp_path)
    for p in paths:
        _patch_ds(p, tag, bad)
    assert _load_or_refused(tmp_path, attr) is None


def test_rows_columns_disagreeing_with_pixel_data_are_refused(tmp_path):
    paths = _series(tmp_path, rows=16, cols=12)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.Rows = 8  # pixel data holds 16 rows: half the image would be dropped silently
        ds.save_as(p)
    assert _load_or_refused(tmp_path, "Rows") is None


# ----------------------------------------------------------------------------- spacing source
def _write_dx(path, extra):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Synthetic^DX", "SYN002"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = 20, 30
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(600, dtype=np.uint16).reshape(20, 30)).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("extra,source,sx,warn", [
    ({"ImagerPixelSpacing": [0.2, 0.1], "EstimatedRadiographicMagnificationFactor": 1.25},
     "ImagerPixelSpacing/ERMF", 0.08, None),
    ({"ImagerPixelSpacing": [0.2, 0.1]}, "ImagerPixelSpacing", 0.1, "detector"),
    ({"ImagerPixelSpacing": [0.2, 0.1], "PixelSpacing": [0.2, 0.1],
      "EstimatedRadiographicMagnificationFactor": 1.25}, "ImagerPixelSpacing/ERMF", 0.08, None),
    ({"ImagerPixelSpacing": [0.2, 0.1], "PixelSpacing": [0.16, 0.08]}, "calibrated", 0.08, None),
    ({"PixelSpacing": [0.16, 0.08], "PixelSpacingCalibrationType": "GEOMETRY"}, "calibrated", 0.08, None),
    ({"PixelSpacing": [0.16, 0.08]}, "PixelSpacing", 0.08, None),
    ({}, "none", 1.0, "no pixel spacing"),
    ({"ImagerPixelSpacing": [0.2, 0.1], "EstimatedRadiographicMagnificationFactor": 0.0},
     "ImagerPixelSpacing", 0.1, "EstimatedRadiographicMagnificationFactor"),
])
def test_projection_spacing_source(tmp_path, extra, source, sx, warn):
    _write_dx(tmp_path / "dx.dcm", extra)
    vol = _load(tmp_path)
    assert vol.spacing_source == source, vol.warnings
    assert vol.spacing_known == (source != "none")
    assert vol.spacing[0] == pytest.approx(sx)
    if warn:
        assert any(warn in w for w in vol.warnings), vol.warnings
    else:
        assert not any("spacing" in w.lower() for w in vol.warnings), vol.warnings
    m = Measurement("ruler", [(0, 0), (10, 0)])
    m.compute_on(vol)
    if source == "none":
        assert m.summary() == "10.0 px (no spacing)"
    else:
        assert m.summary() == f"{10 * sx:.1f} mm ({source})"


def test_real_cr_has_no_spacing():
    vol = _load(need(DICOM / "cr_chest_monochrome1_fuji"))
    assert vol.spacing_source == "none" and not vol.spacing_known
    roi = Measurement("rectangle", [(10, 10), (30, 20)])
    roi.compute_on(vol)
    assert "px²" in roi.summary() and "(no spacing)" in roi.summary()
    assert roi.to_dict()["spacing_source"] == "none"


def test_ultrasound_regions_give_spacing(tmp_path):
    from pydicom.sequence import Sequence
    reg = Dataset()
    reg.RegionSpatialFormat = 1
    reg.RegionDataType = 1
    reg.RegionLocationMinX0, reg.RegionLocationMinY0 = 0, 0
    reg.RegionLocationMaxX1, reg.RegionLocationMaxY1 = 29, 19
    reg.PhysicalUnitsXDirection, reg.PhysicalUnitsYDirection = 3, 3  # cm
    reg.PhysicalDeltaX, reg.PhysicalDeltaY = 0.02, 0.03
    _write_dx(tmp_path / "us.dcm", {"Modality": "US", "SequenceOfUltrasoundRegions": Sequence([reg])})
    vol = _load(tmp_path)
    assert vol.spacing_source == "calibrated" and vol.spacing[:2] == pytest.approx((0.2, 0.3))
    _write_dx(tmp_path / "b" / "us.dcm", {"Modality": "US"})
    vol = _load(tmp_path / "b")
    assert vol.spacing_source == "none"


# ----------------------------------------------------------------------------- enhanced objects
# Per-frame values sit in functional-group sequences the index never reads: the loader
# alone stands between them and the screen.
ENHANCED_MR = DICOM / "mr_enhanced_multiframe_philips"


def _enhanced_copy(tmp_path, edit):
    import glob

    from pydicom import config
    src = glob.glob(str(need(ENHANCED_MR) / "*.dcm"))[0]
    ds = pydicom.dcmread(src)
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        for item in ds.PerFrameFunctionalGroupsSequence:
            edit(item)
        ds.save_as(tmp_path / "enh.dcm")
    finally:
        config.settings.writing_validation_mode = old
    return tmp_path


def test_enhanced_per_frame_nan_rescale_is_refused(tmp_path):
    def edit(item):
        item.PixelValueTransformationSequence[0].RescaleSlope = "nan"
    with pytest.raises(LoadError, match="RescaleSlope"):
        _load(_enhanced_copy(tmp_path, edit))


def test_enhanced_per_frame_bad_spacing_and_orientation(tmp_path):
    def edit(item):
        item.PixelMeasuresSequence[0].PixelSpacing = ["inf", "4"]
        item.PlaneOrientationSequence[0].ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    vol = _load(_enhanced_copy(tmp_path, edit))
    assert vol.spacing_source == "none" and not vol.has_geometry
    assert any("PixelSpacing" in w for w in vol.warnings)
    assert any("ImageOrientationPatient" in w for w in vol.warnings)


# ----------------------------------------------------------------------------- display / slice values
@pytest.mark.parametrize("attr,tag", [("WindowCenter", 0x00281050), ("WindowWidth", 0x00281051),
                                      ("SliceThickness", 0x00180050)])
@pytest.mark.parametrize("bad", [b"nan", b"inf"])
def test_bad_display_or_thickness_value_still_opens(tmp_path, attr, tag, bad):
    """A NaN window or thickness does not make the pixels unreadable: the series is indexed
    and opens, without that value, and never with NaN in what the viewer uses."""
    paths = _series(tmp_path, extra={"WindowCenter": "40.000", "WindowWidth": "400.00",
                                     "SliceThickness": "1.0000"})
    for p in paths:
        _patch_ds(p, tag, bad)
    index = scan(str(tmp_path))
    assert not index.problems, index.problems
    vol = load_series(index.image_series()[0])
    assert np.all(np.isfinite(vol.spacing)) and np.all(np.isfinite(vol.origin))
    for w in vol.window_presets:
        assert math.isfinite(w.center) and math.isfinite(w.width) and w.width > 0
    if "Window" in attr:
        assert any(attr in w or "window" in w.lower() for w in vol.warnings), vol.warnings


# ----------------------------------------------------------------------------- palette colour
PALETTE = DICOM / "palette_color_testpattern" / "TestPattern_Palette.dcm"


@pytest.mark.parametrize("removed", [("Green",), ("Red", "Green", "Blue")])
def test_palette_without_its_lookup_table_is_a_named_error(tmp_path, removed):
    ds = pydicom.dcmread(need(PALETTE))
    for c in removed:
        delattr(ds, f"{c}PaletteColorLookupTableData")
        if len(removed) > 1:
            delattr(ds, f"{c}PaletteColorLookupTableDescriptor")
    ds.save_as(tmp_path / "p.dcm")
    index = scan(str(tmp_path))
    with pytest.raises(LoadError, match=f"PALETTE COLOR image without its palette.*{removed[0]}") as e:
        load_series(index.image_series()[0])
    assert "\n" not in str(e.value)


def test_16_bit_palette_is_scaled_by_its_bit_depth_not_its_largest_entry(tmp_path):
    """A dark 16-bit palette (entries up to 16383 of 65535) stays dark: 16383/257 = 64."""
    ds = pydicom.dcmread(need(PALETTE))
    lut = (np.arange(256, dtype=np.uint16) * 64).astype("<u2")  # 0 .. 16320
    for c in ("Red", "Green", "Blue"):
        setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{c}PaletteColorLookupTableData", lut.tobytes())
    ds.save_as(tmp_path / "p.dcm")
    vol = load_series(scan(str(tmp_path)).image_series()[0])
    src = pydicom.dcmread(tmp_path / "p.dcm").pixel_array
    want = np.round(lut[src].astype(np.float64) / 257.0)
    assert np.abs(vol.array[0, ..., 0].astype(float) - want).max() <= 1
    assert vol.array.max() <= 64
