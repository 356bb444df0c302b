"""Volume assembly on real data (checked against SimpleITK/GDCM) and synthetic series."""

import numpy as np
import pydicom
import pytest

from _synth import write_ct_series
from conftest import CT_PHANTOM, DICOM, NINE_SYNTAXES, need
from imaging_assist import display
from imaging_assist.dicom import SeriesLoader, load_series, plan_series, scan


def test_ct_phantom_matches_simpleitk(ct_volume):
    import SimpleITK as sitk  # test extra: missing must fail
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(CT_PHANTOM)))
    img = r.Execute()
    ref = sitk.GetArrayFromImage(img)
    vol = ct_volume
    assert vol.shape == ref.shape == (140, 512, 512)
    assert np.array_equal(vol.array.astype(np.int32), ref.astype(np.int32))
    assert np.allclose(vol.spacing, img.GetSpacing(), atol=1e-6)
    assert np.allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    assert np.allclose(np.asarray(vol.direction).ravel(), img.GetDirection(), atol=1e-6)
    assert vol.units == "HU" and vol.warnings == []
    assert vol.value_range() == (-1024.0, float(ref.max()))


def test_ct_hu_equals_pydicom_modality_lut(ct_volume):
    from pydicom.pixels import apply_modality_lut
    rec = ct_volume.headers[70]
    ds = pydicom.dcmread(rec.path)
    assert np.array_equal(ct_volume.array[70], apply_modality_lut(ds.pixel_array, ds).astype(np.int16))
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(ct_volume.index_to_lps(0, 0, 70)[2])


def test_ct_presets_and_orientation(ct_volume):
    names = [p.name for p in ct_volume.window_presets]
    for n in ("Brain", "Subdural", "Stroke", "Lung", "Mediastinum", "Abdomen", "Bone"):
        assert n in names
    assert ct_volume.window_presets[0].source == "dicom"
    assert ct_volume.orientation_labels() == {"right": "L", "left": "R", "bottom": "P", "top": "A"}


def test_nine_transfer_syntaxes_decode_identically():
    index = scan(str(need(NINE_SYNTAXES)))
    arrays = {}
    for s in index.image_series():
        vol = load_series(s)
        arrays[s.instances[0].path.split("/")[-1]] = vol.array[0]
    assert len(arrays) == 9, sorted(arrays)
    ref = next(iter(arrays.values()))
    assert ref.shape == (384, 384) and ref.max() > 0
    for name, a in arrays.items():
        assert np.array_equal(a, ref), name


def test_sorting_by_position_not_instance_number_or_name(tmp_path):
    zs = [10.0, 12.5, 15.0, 17.5, 20.0]
    # Files named and numbered in an order unrelated to position.
    order = [3, 0, 4, 1, 2]
    write_ct_series(tmp_path, [(0, 0, zs[i]) for i in order], names=[f"{n}.dcm" for n in "edcba"],
                    instance_numbers=[5, 1, 4, 2, 3], extra={"SliceThickness": "2.5"})
    vol = load_series(scan(str(tmp_path)).image_series()[0])
    # Slice k holds the file written for zs[k]: pixel value 1000 + 10 * position-in-write-order - 1024.
    written_k = [order.index(k) for k in range(5)]
    assert [int(vol.array[k, 0, 0]) for k in range(5)] == [1000 + 10 * w - 1024 for w in written_k]
    assert vol.spacing == pytest.approx((0.7, 0.5, 2.5))  # (column, row, slice); PixelSpacing is row\col
    assert vol.origin == pytest.approx((0, 0, 10.0))
    assert vol.warnings == []


def test_spacing_from_positions_not_slice_thickness(tmp_path):
    write_ct_series(tmp_path, [(0, 0, z) for z in (0, 3, 6, 9)], extra={"SliceThickness": "1.0"})
    vol = load_series(scan(str(tmp_path)).image_series()[0])
    assert vol.spacing[2] == pytest.approx(3.0)
    assert any("gaps between slices" in w for w in vol.warnings)


def test_uneven_spacing_is_reported(tmp_path):
    write_ct_series(tmp_path, [(0, 0, z) for z in (0, 1, 2, 5, 6)])
    vol = load_series(scan(str(tmp_path)).image_series()[0])
    assert any("uneven slice spacing" in w for w in vol.warnings)
    assert np.allclose(vol.slice_positions, [0, 1, 2, 5, 6])


def test_gantry_tilt_keeps_exact_affine(tmp_path):
    tilt = np.radians(20)
    # Image plane tilted about x; the table moves along z: slice origins step along z only.
    iop = (1, 0, 0, 0, np.cos(tilt), -np.sin(tilt))
    pos = [(0, 0, 2.0 * k) for k in range(6)]
    write_ct_series(tmp_path, pos, iop=iop)
    vol = load_series(scan(str(tmp_path)).image_series()[0])
    assert any("gantry tilt" in w and "20.0 degrees" in w for w in vol.warnings)
    for k in range(6):
        assert np.allclose(vol.index_to_lps(0, 0, k), pos[k], atol=1e-4)
        # and an in-plane voxel lands where the DICOM formula puts it
        expect = np.array(pos[k]) + 3 * 0.7 * np.array(iop[:3]) + 5 * 0.5 * np.array(iop[3:])
        assert np.allclose(vol.index_to_lps(3, 5, k), expect, atol=1e-4)


def test_mixed_sizes_are_split(tmp_path):
    uid = "1.2.3.4.5.6.7"
    study = {"StudyInstanceUID": "1.2.3.4.5.6.8"}  # one series of one study (two studies keep it apart)
    write_ct_series(tmp_path / "a", [(0, 0, z) for z in (0, 1, 2)], series_uid=uid, extra=study)
    write_ct_series(tmp_path / "b", [(0, 0, z) for z in (0, 1)], rows=8, cols=8, series_uid=uid, extra=study)
    series = scan(str(tmp_path)).image_series()
    assert sorted(s.n_instances for s in series) == [2, 3]
    assert all("mixed image sizes" in s.warnings[0] for s in series)


def test_monochrome1_is_inverted_for_display():
    index = scan(str(need(DICOM / "cr_chest_monochrome1_fuji")))
    vol = load_series(index.image_series()[0])
    assert vol.photometric == "MONOCHROME1"
    k = 0
    lo = np.unravel_index(np.argmin(vol.array[k]), vol.array[k].shape)
    img = display.render_slice(vol, k)
    assert img[lo] == 255  # lowest value shows white
    assert display.render_slice(vol, k, invert=True)[lo] == 0


def test_window_formula_linear():
    a = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])
    img = display.window_to_uint8(a, 40, 80)
    assert img[0] == 0 and img[-1] == 255
    # PS3.3 C.11.2.1.2: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    assert img[2] == round(((40 - 39.5) / 79 + 0.5) * 255)


def test_multiframe_cine_xa():
    vol = load_series(scan(str(need(DICOM / "xa_multiframe_cine_jpeg_baseline"))).image_series()[0])
    assert vol.shape == (96, 512, 512) and vol.is_cine and vol.frame_time_ms == 33
    assert not vol.has_geometry


def test_enhanced_mr_stacks_and_rescale():
    series = scan(str(need(DICOM / "mr_enhanced_multiframe_philips"))).image_series()[0]
    plans = plan_series(series)
    assert len(plans) == 2 and all(len(p.slots) == 32 for p in plans)
    vol = load_series(series)
    assert vol.shape == (32, 64, 64) and vol.spacing[2] == pytest.approx(4.0)
    assert vol.array.dtype == np.float32
    ds = pydicom.dcmread(series.instances[0].path)
    slope = float(ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope)
    frame = vol.frames[0]
    assert np.allclose(vol.array[0], ds.pixel_array[frame] * slope, rtol=1e-5)
    assert np.all(np.diff(vol.slice_positions) > 0)


def test_j2k_enhanced_series_four_stacks():
    series = scan(str(need(DICOM / "mr_enhanced_siemens_series_jpeg2000_lossless_derived"))).image_series()[0]
    plans = plan_series(series)
    assert len(plans) == 4 and all(len(p.slots) == 25 for p in plans)
    vol = load_series(series, stack=1)
    ds = pydicom.dcmread(plans[1].records[plans[1].slots[0].rec].path)
    assert vol.shape == (25, 64, 64)
    assert np.array_equal(np.sort(vol.array.ravel()), np.sort(ds.pixel_array.ravel()))


@pytest.mark.parametrize("folder", ["palette_color_testpattern", "rgb_jpeg_lossless_secondary_capture"])
def test_colour_images_become_rgb(folder):
    vol = load_series(scan(str(need(DICOM / folder))).image_series()[0])
    assert vol.is_color and vol.array.shape[-1] == 3 and vol.array.dtype == np.uint8
    assert vol.array.std(axis=-1).max() > 0  # really coloured


def test_progressive_loader_middle_first_and_cancel(ct_index):
    series = ct_index.image_series()[0]
    firsts, slices = [], []
    loader = SeriesLoader(series, on_first=lambda v, k: firsts.append(k), on_slice=slices.append)
    loader.start()
    vol = loader.wait()
    assert firsts == [70] and slices[0] == 70 and vol.loaded.all() and len(slices) == 140
    loader = SeriesLoader(series, workers=1)
    loader.cancel()
    vol = loader.run()  # cancelled before it starts: only the first (middle) slice
    assert vol.loaded.sum() < 140 and vol.loaded[70]
    assert any("cancelled" in w for w in vol.warnings)


def test_voi_lut_sequence_is_honoured(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    paths = write_ct_series(tmp_path, [(0, 0, 0)], intercept=0.0)
    ds = pydicom.dcmread(paths[0])
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTExplanation = "INVERTING TEST LUT"
    item.LUTData = np.arange(4095, -1, -1, dtype="<u2").tobytes()
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(paths[0])
    vol = load_series(scan(str(tmp_path)).image_series()[0])
    preset = vol.window_presets[0]
    assert preset.source == "voilut" and preset.name == "INVERTING TEST LUT"
    img = display.render_slice(vol, 0, preset)
    v = int(vol.array[0, 3, 0])  # 1003
    assert img[3, 0] == round((4095 - v) / 4095 * 255)
