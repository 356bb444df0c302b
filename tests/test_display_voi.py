"""Display of grey values (issue 12): window functions, VOI LUTs, Presentation LUT Shape and
MONOCHROME1 give what pydicom's own functions give."""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi, apply_voi_lut, apply_windowing
from pydicom.sequence import Sequence

from _synth import write_ct_series
from conftest import DICOM, need
from imaging_assist import display
from imaging_assist.dicom import load_series, scan

CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"


def _to8(y, lo, hi):
    return np.floor((np.asarray(y, float) - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)


def _load(folder):
    return load_series(scan(str(folder)).image_series()[0])


def test_real_cr_equals_pydicom_windowing_inverted():
    vol = _load(need(CR).parent)
    ds = pydicom.dcmread(CR, force=True)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    ref = apply_voi_lut(ds.pixel_array, ds)  # WindowCenter 550 / Width 1024, output 0..1023
    want = 255 - _to8(ref, 0, 2 ** int(ds.BitsStored) - 1)  # MONOCHROME1: lowest values white
    img = display.render_slice(vol, 0)
    assert display.default_window(vol).source == "dicom"
    assert np.abs(img.astype(int) - want.astype(int)).max() <= 1
    assert np.mean(img == want) > 0.999


def _ct_with(tmp_path, **extra):
    paths = write_ct_series(tmp_path, [(0, 0, 0)], rows=32, cols=32)
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 4).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.save_as(paths[0])
    return paths[0]


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT", "LINEAR"])
def test_voi_lut_function_from_the_file(tmp_path, function):
    p = _ct_with(tmp_path, WindowCenter="500", WindowWidth="700", VOILUTFunction=function)
    vol = _load(tmp_path)
    pre = display.default_window(vol)
    assert pre.source == "dicom" and pre.function == function
    ds = pydicom.dcmread(p)
    y = apply_windowing(ds.pixel_array.astype(np.float64) * 1.0 - 1024.0, ds)
    lo, hi = -1024.0, 4095 - 1024.0  # pydicom's output range: stored range after rescale
    want = _to8(y, lo, hi)
    img = display.render_slice(vol, 0)
    assert np.abs(img.astype(int) - want.astype(int)).max() <= 1
    assert np.mean(img == want) > 0.99


def test_presentation_lut_shape_inverse(tmp_path):
    _ct_with(tmp_path / "a", WindowCenter="500", WindowWidth="700")
    _ct_with(tmp_path / "b", WindowCenter="500", WindowWidth="700", PresentationLUTShape="INVERSE")
    plain, inverse = _load(tmp_path / "a"), _load(tmp_path / "b")
    assert np.array_equal(display.render_slice(inverse, 0), 255 - display.render_slice(plain, 0))
    assert np.array_equal(display.render_slice(inverse, 0, invert=True), display.render_slice(plain, 0))


def _with_voi_lut(tmp_path, descriptor, data, vr="OW"):
    p = _ct_with(tmp_path)
    ds = pydicom.dcmread(p)
    ds.RescaleIntercept = "0"
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTExplanation = "TEST LUT"
    item.add_new(0x00283006, vr, data)
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(p)
    return p


def test_voi_lut_8bit_entries_in_16bit_words(tmp_path):
    lut = (np.arange(4096) // 16).astype("<u2")  # 8 bits per entry, one entry per 16-bit word
    p = _with_voi_lut(tmp_path, [4096, 0, 8], lut.tobytes())
    vol = _load(tmp_path)
    pre = vol.window_presets[0]
    assert pre.source == "voilut" and display.default_window(vol) is pre
    ds = pydicom.dcmread(p)
    # by hand (PS3.3 C.11.2.1.1): entry value - first, clipped to the table.  Not pydicom's
    # apply_voi: for 8-bit entries it computes value - first in uint8 (a sawtooth past 255)
    want = _to8(lut[np.clip(ds.pixel_array.astype(int) - 0, 0, 4095)], 0, 255)
    img = display.render_slice(vol, 0)
    assert np.array_equal(img, want) and img.max() == 255


def test_voi_lut_scaled_by_its_bit_depth_not_its_maximum(tmp_path):
    lut = (np.arange(4096) // 2).astype("<u2")  # 12-bit entries that only reach 2047: half bright
    p = _with_voi_lut(tmp_path, [4096, 0, 12], lut.tobytes())
    vol = _load(tmp_path)
    ds = pydicom.dcmread(p)
    want = _to8(apply_voi(ds.pixel_array, ds), 0, 4095)
    img = display.render_slice(vol, 0)
    assert np.array_equal(img, want) and img.max() <= 128


def test_voi_lut_us_values(tmp_path):
    lut = [int(v) for v in (4095 - np.arange(4096))]
    p = _with_voi_lut(tmp_path, [4096, 0, 12], lut, vr="US")
    vol = _load(tmp_path)
    ds = pydicom.dcmread(p)
    assert np.array_equal(display.render_slice(vol, 0), _to8(apply_voi(ds.pixel_array, ds), 0, 4095))


def test_non_finite_window_is_skipped_with_a_warning(tmp_path):
    p = _ct_with(tmp_path, WindowCenter="500", WindowWidth="700")
    data = bytearray(p.read_bytes())
    i = data.index(b"\x28\x00\x51\x10DS")
    n = int.from_bytes(data[i + 6:i + 8], "little")
    data[i + 8:i + 8 + n] = b"nan".ljust(n)
    p.write_bytes(bytes(data))
    index = scan(str(tmp_path))
    if index.problems:  # the index may refuse the file outright, naming the attribute
        assert "WindowWidth" in index.problems[0].reason and not index.image_series()
        return
    vol = load_series(index.image_series()[0])
    assert not any(w.source == "dicom" for w in vol.window_presets)
    assert any("WindowWidth" in w for w in vol.warnings)
    img = display.render_slice(vol, 0)
    assert img.max() > img.min()


# ----------------------------------------------------------------------------- key images
def _key_image(vol, tmp_path, **res_kw):
    from PIL import Image

    from imaging_assist.inference.results import ClassificationResult, write_item_files
    res = ClassificationResult(model_id="m", model_version="1", task="classification", labels=["a", "b"],
                               shape=vol.shape[:3], probabilities={"a": 0.3, "b": 0.7}, **res_kw)
    d = write_item_files(res, vol, tmp_path, "item")
    return np.asarray(Image.open(tmp_path / d["key_images"][0]).convert("RGB"))


def test_key_image_of_monochrome1_cr_is_what_the_viewer_shows(tmp_path):
    vol = _load(need(CR).parent)
    key = _key_image(vol, tmp_path)
    shown = display.render_slice(vol, 0)
    assert np.array_equal(key, np.stack([shown] * 3, -1))
    # not a negative: the air-filled lungs are darker than the spine between them
    rows, cols = shown.shape
    lung = key[rows // 3: rows // 2, cols // 5: cols // 3, 0].mean()
    spine = key[rows // 3: rows // 2, cols // 2 - 10: cols // 2 + 10, 0].mean()
    assert lung < spine


def test_key_image_uses_the_file_window(tmp_path):
    _ct_with(tmp_path / "s", WindowCenter="500", WindowWidth="700", VOILUTFunction="SIGMOID")
    vol = _load(tmp_path / "s")
    key = _key_image(vol, tmp_path)
    assert np.array_equal(key[..., 0], display.render_slice(vol, 0))


def test_a_grey_key_image_is_one_channel_and_an_overlay_keeps_its_colours(tmp_path):
    """A key image with nothing coloured on it is written as a grey PNG (the same pixels, a
    third of the data: results.overlay_png); one with a heat map stays RGB."""
    from PIL import Image

    from imaging_assist.inference.results import overlay_png, overlay_rgb

    vol = _load(need(CR).parent)
    img = vol.array[0]
    overlay_png(img, tmp_path / "grey.png", volume=vol, k=0)
    with Image.open(tmp_path / "grey.png") as im:
        assert im.mode == "L"
        assert np.array_equal(np.asarray(im), display.render_slice(vol, 0))
    heat = np.zeros(img.shape[:2], np.float32)
    heat[: img.shape[0] // 2] = 1.0
    overlay_png(img, tmp_path / "heat.png", heat_slice=heat, volume=vol, k=0)
    with Image.open(tmp_path / "heat.png") as im:
        assert im.mode == "RGB"
        assert np.array_equal(np.asarray(im), overlay_rgb(img, heat_slice=heat, volume=vol, k=0))


def test_voi_lut_of_signed_data_whose_first_value_is_written_unsigned(tmp_path):
    """Signed CT whose LUTDescriptor first value -1024 is written as US 64512 (the descriptor's
    VR is US or SS): the LUT applies from -1024. The table was asked of pydicom from -1024 while
    pydicom read 64512, so every value took entry 0 (a black image, no warning)."""
    p = _ct_with(tmp_path, PixelRepresentation=1, RescaleIntercept="0")
    ds = pydicom.dcmread(p)
    ds.PixelData = (np.arange(32 * 32, dtype=np.int16).reshape(32, 32) * 2 - 1024).tobytes()
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 64512, 12])  # LUTDescriptor: first value -1024 as US
    item.add_new(0x00283006, "US", list(range(4096)))  # identity ramp
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(p)
    vol = _load(tmp_path)
    assert vol.voi_lut_first == -1024 and not vol.warnings
    img = display.render_slice(vol, 0)
    want = _to8(np.clip(vol.array[0].astype(float) + 1024, 0, 4095), 0, 4095)  # entry = value + 1024
    assert np.abs(img.astype(int) - want.astype(int)).max() <= 1 and img.max() > 100
