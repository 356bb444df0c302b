"""Series whose images disagree in their headers never load silently wrong (an audit of the
reader): mixed bit depths, a Modality LUT beside a rescale, a rescale missing on some slices,
High Bit, slices beside the line of the others, frames with their own pixel size; lengths on
reformatted planes of tilted and uneven stacks; the viewer's slice origins on a real tilt."""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence

from _synth import write_ct_series
from conftest import DICOM, need
from imaging_assist.dicom import load_series, scan
from imaging_assist.layers import standard_planes
from imaging_assist.measure import Measurement, remeasure_where_acquired

ENHANCED_MR = DICOM / "mr_enhanced_multiframe_philips"
GE_TILT = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"


def _files(folder):
    return sorted(folder.glob("*.dcm"))


def _edit(path, fn):
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path, enforce_file_format=True)


def _load(folder, stack=0):
    index = scan(str(folder))
    assert index.image_series(), index.problems
    return load_series(index.image_series()[0], stack)


def _reference(folder):
    """pydicom's modality values of every file, in position order."""
    out = []
    for p in _files(folder):
        ds = pydicom.dcmread(p)
        out.append((float(ds.ImagePositionPatient[2]), apply_modality_lut(ds.pixel_array, ds).astype(np.float64)))
    return [a for _, a in sorted(out, key=lambda t: t[0])]


def _series(tmp_path, n=4, **kw):
    return write_ct_series(tmp_path / "s", [(0, 0, float(z)) for z in range(n)], **kw) and tmp_path / "s"


def _to_16_bits_stored(ds):
    a = ds.pixel_array
    ds.BitsStored, ds.HighBit = 16, 15
    ds.PixelData = (a.astype(np.uint16) + 40000).tobytes()


def _to_8_bit(ds):
    a = ds.pixel_array
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (a % 256).astype(np.uint8).tobytes()
    ds.RescaleIntercept = "0"


@pytest.mark.parametrize("change", ["bits_stored_16_later", "8_bit_first"])
def test_images_with_other_bit_depths_keep_their_values(tmp_path, change):
    """The stack's type was planned from its first image: a later 16-bit image wrapped around
    (values off by 65,536 or 1,024, no warning)."""
    folder = _series(tmp_path)
    files = _files(folder)
    if change == "bits_stored_16_later":
        _edit(files[2], _to_16_bits_stored)
    else:
        _edit(files[0], _to_8_bit)
        for p in files[1:]:
            _edit(p, lambda ds: setattr(ds, "RescaleIntercept", "0"))
    vol = _load(folder)
    for k, ref in enumerate(_reference(folder)):
        np.testing.assert_array_equal(vol.array[k].astype(np.float64), ref, err_msg=f"slice {k}")


def _modality_lut(ds, lut_type="HU"):
    it = Dataset()
    it.LUTDescriptor = [4096, 0, 16]
    it.LUTData = np.clip(np.arange(4096) * 2 + 5, 0, 65535).astype(np.uint16).tobytes()
    it["LUTData"].VR = "OW"
    it.ModalityLUTType = lut_type
    ds.ModalityLUTSequence = Sequence([it])


def test_a_modality_lut_beside_a_rescale_is_applied_alone_and_said(tmp_path):
    """Both applied, every pixel was 1,024 too low; the standard allows one of the two, and
    pydicom applies the LUT."""
    folder = _series(tmp_path)
    for p in _files(folder):
        _edit(p, _modality_lut)
    vol = _load(folder)
    for k, ref in enumerate(_reference(folder)):
        np.testing.assert_allclose(vol.array[k], ref)
    assert any("both a Modality LUT and RescaleSlope" in w for w in vol.warnings), vol.warnings
    assert vol.units == "HU"


def test_a_ct_modality_lut_of_another_type_is_not_called_hu(tmp_path):
    folder = _series(tmp_path)
    for p in _files(folder):
        _edit(p, lambda ds: (_modality_lut(ds, "OD"), delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept")))
    vol = _load(folder)
    assert vol.units != "HU" and any("Modality LUT of type OD" in w for w in vol.warnings), vol.warnings


def test_a_rescale_missing_on_one_ct_slice_is_said_and_not_called_hu(tmp_path):
    folder = _series(tmp_path, n=5)
    _edit(_files(folder)[2], lambda ds: (delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept")))
    vol = _load(folder)
    assert any("missing in 1 of 5 CT images" in w for w in vol.warnings), vol.warnings
    assert vol.units != "HU"
    for k, ref in enumerate(_reference(folder)):
        np.testing.assert_array_equal(vol.array[k].astype(np.float64), ref)


def test_high_bit_not_bits_stored_minus_one_is_refused(tmp_path):
    folder = _series(tmp_path)
    _edit(_files(folder)[1], lambda ds: setattr(ds, "HighBit", 15))
    index = scan(str(folder))
    bad = [p for p in index.problems if "HighBit 15 is not BitsStored - 1" in p.reason]
    assert bad and "\n" not in bad[0].reason, index.problems


def test_a_slice_beside_the_line_of_the_others_has_no_3d_geometry(tmp_path):
    """x = 0, 3, 0, 3, 0 along z: the affine put slices 1 and 3 at x = 0, 3 mm from where they
    were acquired, and MPR, exports and reference lines with them."""
    folder = write_ct_series(tmp_path / "s", [(3.0 * (k % 2), 0, 2.0 * k) for k in range(5)]) and tmp_path / "s"
    vol = _load(folder)
    assert not vol.has_geometry
    assert any("do not lie on one line" in w and "3.00 mm" in w for w in vol.warnings), vol.warnings
    assert not any("InstanceNumber order" in w for w in vol.warnings)
    # still in position order
    assert [int(vol.array[k, 0, 0]) for k in range(5)] == [1000 + 10 * k - 1024 for k in range(5)]


def test_a_tilted_and_an_uneven_stack_keep_their_3d_geometry(tmp_path):
    tilt = np.radians(15)
    tilted = [(0, 2.0 * k * np.tan(tilt), 2.0 * k) for k in range(6)]
    uneven = [(0, 0, z) for z in (0, 1, 2, 3, 8, 9)]
    for name, pos in (("tilted", tilted), ("uneven", uneven)):
        vol = _load(write_ct_series(tmp_path / name, pos) and tmp_path / name)
        assert vol.has_geometry and not any("one line" in w for w in vol.warnings), vol.warnings
        np.testing.assert_allclose(vol.slice_origins(), np.array(pos, float), atol=1e-4)


def test_enhanced_frames_with_their_own_pixel_size_are_stacks_of_their_own(tmp_path):
    """Every second frame of the Philips enhanced MR given 5 mm pixels instead of 4: all
    frames got 4 mm (50 mm off at the far corner, lengths 25 % off)."""
    src = next(p for p in need(ENHANCED_MR).rglob("*") if p.is_file() and pydicom.misc.is_dicom(p))
    ds = pydicom.dcmread(src)
    if "PixelMeasuresSequence" in ds.SharedFunctionalGroupsSequence[0]:
        pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        for f in ds.PerFrameFunctionalGroupsSequence:
            f.PixelMeasuresSequence = pydicom.sequence.Sequence([pydicom.dataset.Dataset()])
            f.PixelMeasuresSequence[0].update(pm[0])
    for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence):
        if i % 2:
            f.PixelMeasuresSequence[0].PixelSpacing = [5.0, 5.0]
    (tmp_path / "e").mkdir()
    ds.save_as(tmp_path / "e" / "mr.dcm", enforce_file_format=True)
    series = scan(str(tmp_path / "e")).image_series()[0]
    seen = set()
    k = 0
    while True:
        try:
            vol = load_series(series, k)
        except Exception:  # noqa: BLE001 - past the last stack
            break
        seen.add(round(float(vol.spacing[0]), 3))
        assert any("different pixel sizes" in w for w in vol.warnings), vol.warnings
        frames = [ds.PerFrameFunctionalGroupsSequence[f] for f in vol.frames]
        assert {float(f.PixelMeasuresSequence[0].PixelSpacing[0]) for f in frames} == {float(vol.spacing[0])}
        k += 1
    assert seen == {4.0, 5.0}


def test_enhanced_ct_without_pixel_value_transformation_uses_the_top_level_rescale_and_says_so(tmp_path):
    src = next(p for p in need(ENHANCED_MR).rglob("*") if p.is_file() and pydicom.misc.is_dicom(p))
    ds = pydicom.dcmread(src)
    ds.Modality = "CT"
    for item in [ds.SharedFunctionalGroupsSequence[0]] + list(ds.PerFrameFunctionalGroupsSequence):
        if "PixelValueTransformationSequence" in item:
            del item.PixelValueTransformationSequence
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
    (tmp_path / "e").mkdir()
    ds.save_as(tmp_path / "e" / "ct.dcm", enforce_file_format=True)
    vol = _load(tmp_path / "e")
    assert any("without a Pixel Value Transformation" in w for w in vol.warnings), vol.warnings
    raw = pydicom.dcmread(tmp_path / "e" / "ct.dcm").pixel_array[vol.frames[0]].astype(np.float64)
    np.testing.assert_allclose(vol.array[0], raw * 2 - 1024)


def _ruler_on(vol, axis, p0, p1, index):
    plane = next(p for p in standard_planes(vol.direction) if p.axis == axis)
    m = Measurement("ruler", [p0, p1], axis=axis, index=index)
    m.compute(None, plane.spacing2d(vol.spacing))
    remeasure_where_acquired(m, vol, plane)
    a, b = (vol.acquired_lps(*plane.to_voxel(u, v, index, vol.array.shape[:3])) for u, v in (p0, p1))
    return m, plane, float(np.linalg.norm(a - b))


def test_rulers_on_reformatted_planes_of_tilted_and_uneven_stacks_are_patient_millimetres(tmp_path):
    """A sagittal ruler on a 20-degree tilted stack read 23 % long, a coronal ruler across an
    uneven gap 57 % long: measured on the sheared / evenly stretched voxel grid."""
    t = np.radians(20)
    folder = write_ct_series(tmp_path / "tilt", [(0, 0, 2.0 * k) for k in range(10)],
                             iop=(1, 0, 0, 0, np.cos(t), np.sin(t)), spacing=(0.5, 0.5)) and tmp_path / "tilt"
    vol = _load(folder)
    assert vol.reformat_distortion() == "gantry tilt"
    for axis in (1, 2):
        m, plane, true = _ruler_on(vol, axis, (2.0, 3.0), (11.0, 8.0), 1)
        assert m.result["length"] == pytest.approx(true, abs=1e-6) and m.result["reformatted_grid"] == "gantry tilt"
        assert m.result["text"][0] == f"{true:.1f} mm"
    # the native plane is exact and unchanged
    m, _, true = _ruler_on(vol, 0, (2.0, 3.0), (11.0, 8.0), 1)
    assert m.result["length"] == pytest.approx(true) and "reformatted_grid" not in m.result

    folder = write_ct_series(tmp_path / "gap", [(0, 0, z) for z in (0, 1, 2, 3, 8, 9, 10, 11)],
                             spacing=(0.5, 0.5)) and tmp_path / "gap"
    vol = _load(folder)
    assert vol.reformat_distortion() == "uneven slice spacing"
    plane = next(p for p in standard_planes(vol.direction) if p.axis == 1)
    shape3 = vol.array.shape[:3]
    (u0, v0, _), (u1, v1, _) = plane.from_voxel((0, 5, 5), shape3), plane.from_voxel((3, 5, 5), shape3)
    m = Measurement("ruler", [(u0, v0), (u1, v1)], axis=1, index=5)
    m.compute(None, plane.spacing2d(vol.spacing))
    remeasure_where_acquired(m, vol, plane)
    assert m.result["length"] == pytest.approx(3.0, abs=1e-6)
    # an area there stays the grid's, and says so
    roi = Measurement("rectangle", [(u0, v0), (u1 + 2, v1)], axis=1, index=5)
    roi.compute(plane.extract(vol.array, 5), plane.spacing2d(vol.spacing))
    remeasure_where_acquired(roi, vol, plane)
    assert roi.result["text"][-1] == "Area approximate: reformatted grid (uneven slice spacing)"


def test_viewer_slices_of_the_real_gantry_tilt_lie_at_their_own_positions():
    """The viewer moved each slice of the real GE tilted, uneven series only along the normal:
    2 mm from its ImagePositionPatient (reference lines drawn off by as much)."""
    from imaging_assist.viewing import slice_geometry

    folder = need(GE_TILT)
    vol = _load(folder)
    assert vol.reformat_distortion() == "gantry tilt"
    plane = next(p for p in standard_planes(vol.direction) if p.axis == 0)
    shape3 = vol.array.shape[:3]
    ipp = {}
    for p in folder.rglob("*"):
        if p.is_file() and pydicom.misc.is_dicom(p):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            ipp[ds.SOPInstanceUID] = np.array([float(x) for x in ds.ImagePositionPatient])
    for k, h in enumerate(vol.headers):
        g = slice_geometry(vol, plane, k)
        _, j, i = plane.to_voxel(0.0, 0.0, k, shape3)
        want = ipp[h.get("SOPInstanceUID")] + vol.affine[:3, 0] * i + vol.affine[:3, 1] * j
        np.testing.assert_allclose(g.origin, want, atol=1e-3)


def test_pixels_that_are_not_square_are_said(tmp_path):
    """PixelAspectRatio 2:1 without a pixel spacing: shown square, with nothing said."""
    folder = _series(tmp_path, n=1)
    _edit(_files(folder)[0], lambda ds: (delattr(ds, "PixelSpacing"), setattr(ds, "PixelAspectRatio", [2, 1])))
    vol = _load(folder)
    assert any("PixelAspectRatio 2:1" in w for w in vol.warnings), vol.warnings


def test_images_with_different_file_windows_name_the_image_whose_window_is_offered(tmp_path):
    """One File window per series, the middle image's: the viewer called it the file's window
    on every image (the GE series opens on an image whose own window is W 100, shown W 85)."""
    folder = _series(tmp_path, n=4)
    for k, p in enumerate(_files(folder)):
        _edit(p, lambda ds, k=k: (setattr(ds, "WindowCenter", 40), setattr(ds, "WindowWidth", 100 + 50 * k)))
    vol = _load(folder)
    names = [p.name for p in vol.window_presets if p.source == "dicom"]
    assert names == ["File window (image 3)"], names
    assert any("4 different file windows" in w for w in vol.warnings), vol.warnings
    same = _series(tmp_path / "same", n=3)
    for p in _files(same):
        _edit(p, lambda ds: (setattr(ds, "WindowCenter", 40), setattr(ds, "WindowWidth", 400)))
    assert [p.name for p in _load(same).window_presets if p.source == "dicom"] == ["File window"]
