"""Pixel values shown as PS3.3 says and as dcmtk's dcm2pnm shows them (session 21 audit):
VOI LUTs of 8-bit entries with more than 256 entries, 16-bit colour, PALETTE COLOR in big
endian and with bits above BitsStored, a Modality LUT of signed data whose first value is
written as US, a slope without an intercept, and files of very many frames.

Inputs are built with pydicom in tmp_path; dcmtk (dcm2pnm, dcmcjpls) is the reference where
a test names it, and such a test fails without it."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from imaging_assist import display
from imaging_assist.dicom import LoadError, load_series, loader, scan
from imaging_assist_ui.shared.render import SliceRenderer


def _base(rows, cols, bits=16, stored=None, signed=0, samples=1, pi="MONOCHROME2", modality="OT",
          frames=1, sop="1.2.840.10008.5.1.4.1.1.7"):
    ds = Dataset()
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = sop, fm.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "Test^P", modality
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored or bits, (stored or bits) - 1
    ds.PixelRepresentation, ds.SamplesPerPixel = signed, samples
    ds.PhotometricInterpretation = pi
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _save(ds, folder, ts=ExplicitVRLittleEndian):
    folder.mkdir(parents=True, exist_ok=True)
    ds.file_meta.TransferSyntaxUID = ts
    path = folder / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _load(folder):
    return load_series(scan(str(folder)).image_series()[0])


def _dcmtk(tool):
    exe = shutil.which(tool)
    assert exe, f"dcmtk's {tool} is needed as the reference for this test"
    return exe


def _dcm2pnm(path, tmp_path, *opts):
    out = tmp_path / "ref.pnm"
    subprocess.run([_dcmtk("dcm2pnm"), "--write-raw-pnm", *opts, str(path), str(out)], check=True,
                   capture_output=True)
    return np.asarray(Image.open(out))


# ----------------------------------------------------------------------------- defect 1
def test_voi_lut_of_8bit_entries_longer_than_256_is_a_ramp_not_a_sawtooth(tmp_path):
    """4096 entries of 8 bits, one per 16-bit word: the engine sampled pydicom's apply_voi,
    which computes value - first in uint8 (stored 256 showed as 0, 4095 as 15)."""
    ds = _base(64, 64, 16, stored=12, modality="CR", sop="1.2.840.10008.5.1.4.1.1.1")
    a = (np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64)
    ds.PixelData = a.tobytes()
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])
    lut = (np.arange(4096) * 255 // 4095).astype("<u2")
    item.add_new(0x00283006, "OW", lut.tobytes())
    item.LUTExplanation = "RAMP"
    ds.VOILUTSequence = Sequence([item])
    p = _save(ds, tmp_path / "s")
    vol = _load(tmp_path / "s")
    pre = display.default_window(vol)
    assert pre.source == "voilut"
    byhand = lut[a].astype(np.uint8)  # PS3.3 C.11.2.1.1; 8-bit entries are 0..255 already
    img = display.render_slice(vol, 0, pre)
    viewer = (SliceRenderer(vol).render32(vol.array[0], pre) & 0xFF).astype(np.uint8)
    assert np.array_equal(img, byhand) and np.array_equal(viewer, byhand)
    assert img.ravel()[[256, 1000, 2048, 4095]].tolist() == [15, 62, 127, 255]
    ref = _dcm2pnm(p, tmp_path, "+Wl", "1")
    assert np.array_equal(img, ref)


# ----------------------------------------------------------------------------- defect 2
def test_16bit_rgb_is_scaled_by_bits_stored_the_same_in_every_frame(tmp_path):
    """A dark 12-bit RGB cine: each frame was scaled by its own maximum (4x too bright, and a
    frame with one bright pixel a different brightness)."""
    ds = _base(32, 40, 16, stored=12, samples=3, pi="RGB", frames=2)
    f1 = np.random.default_rng(0).integers(0, 1024, (32, 40, 3)).astype(np.uint16)
    f2 = f1.copy()
    f2[0, 0] = 4095
    ds.PixelData = np.stack([f1, f2]).tobytes()
    ds.FrameTime = 40
    p = _save(ds, tmp_path / "s")
    vol = _load(tmp_path / "s")
    hand = (f1.astype(np.float64) * 255 / 4095 + 0.5).astype(np.uint8)
    one, two = display.render_slice(vol, 0), display.render_slice(vol, 1)
    assert np.array_equal(one, hand)
    assert np.array_equal(two[1:], hand[1:]) and two[0, 0].tolist() == [255, 255, 255]
    assert np.array_equal(SliceRenderer(vol).render(vol.array[0], display.default_window(vol)), hand)
    ref = _dcm2pnm(p, tmp_path)
    assert np.abs(one.astype(int) - ref.astype(int)).max() <= 1
    assert vol.bits_stored == 12


# ----------------------------------------------------------------------------- defect 3
def test_palette_colour_in_big_endian_reads_its_palette_big_endian(tmp_path):
    ds = _base(16, 64, 8, pi="PALETTE COLOR")
    a = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    ds.PixelData = a.tobytes()
    lut = {"Red": np.arange(256) * 256, "Green": 65535 - np.arange(256) * 256, "Blue": np.full(256, 0x1000)}
    for i, c in enumerate(("Red", "Green", "Blue")):
        ds.add_new(0x00281101 + i, "US", [256, 0, 16])
        ds.add_new(0x00281201 + i, "OW", lut[c].astype(">u2").tobytes())  # big-endian words
    p = _save(ds, tmp_path / "s", ExplicitVRBigEndian)
    before = p.read_bytes()
    vol = _load(tmp_path / "s")
    hand = (np.stack([lut[c][a] for c in ("Red", "Green", "Blue")], -1) / 257 + 0.5).astype(np.uint8)
    img = display.render_slice(vol, 0)
    assert np.array_equal(img, hand)
    assert p.read_bytes() == before
    ref = _dcm2pnm(p, tmp_path)
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 1


# ----------------------------------------------------------------------------- defect 4
def _many_frames(folder, n, **extra):
    ds = _base(1, 1, 8, frames=n, modality="XA", sop="1.2.840.10008.5.1.4.1.1.12.1")
    ds.PixelData = bytes(n + (n % 2))
    for k, v in extra.items():
        setattr(ds, k, v)
    return _save(ds, folder)


def test_an_implausible_number_of_frames_is_refused_in_one_line(tmp_path):
    """100,001 frames of 1x1 (100 KB): every frame was planned and validated (8 s, 330 MB;
    a million frames 86 s and 2.7 GB)."""
    _many_frames(tmp_path / "s", 100_001)
    index = scan(str(tmp_path / "s"))
    with pytest.raises(LoadError) as e:
        load_series(index.image_series()[0])
    msg = str(e.value)
    assert "NumberOfFrames 100001" in msg and "100000" in msg and "\n" not in msg


def test_frames_of_one_multiframe_file_are_validated_once_and_read_in_few_units(tmp_path, monkeypatch):
    n = 20_000
    _many_frames(tmp_path / "s", n, ImagePositionPatient=[0, 0, 0], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    calls = {"iop": 0, "read": 0}
    check_iop, read_native = loader._check_iop, loader._read_native

    def counting_iop(*a):
        calls["iop"] += 1
        return check_iop(*a)

    def counting_read(*a):
        calls["read"] += 1
        return read_native(*a)

    monkeypatch.setattr(loader, "_check_iop", counting_iop)
    monkeypatch.setattr(loader, "_read_native", counting_read)
    vol = _load(tmp_path / "s")
    assert vol.n_slices == n and vol.loaded.all() and vol.frames == list(range(n))
    assert calls["iop"] == 1  # one geometry for the whole file: validated once (was once per frame)
    assert calls["read"] <= 2  # ~1 MiB per read unit (was one thread-pool job per frame)


def test_frames_of_an_enhanced_object_without_per_frame_items_are_validated_once(tmp_path, monkeypatch):
    n = 3000
    shared = Dataset()
    pos, ori, meas = Dataset(), Dataset(), Dataset()
    pos.ImagePositionPatient = [0, 0, 0]
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    meas.PixelSpacing = [0.5, 0.5]
    shared.PlanePositionSequence = Sequence([pos])
    shared.PlaneOrientationSequence = Sequence([ori])
    shared.PixelMeasuresSequence = Sequence([meas])
    _many_frames(tmp_path / "s", n, SharedFunctionalGroupsSequence=Sequence([shared]))
    calls = {"iop": 0}
    check_iop = loader._check_iop

    def counting_iop(*a):
        calls["iop"] += 1
        return check_iop(*a)

    monkeypatch.setattr(loader, "_check_iop", counting_iop)
    vol = _load(tmp_path / "s")
    assert vol.n_slices == n and vol.frames == list(range(n)) and vol.spacing[:2] == (0.5, 0.5)
    assert calls["iop"] == 1


# ----------------------------------------------------------------------------- defect 5
def test_modality_lut_of_signed_data_whose_first_value_is_written_unsigned(tmp_path):
    """LUTDescriptor first value -1000 written as US 64536: the load failed with a numpy
    OverflowError text (pydicom compares int16 pixels with 64536)."""
    ds = _base(32, 32, 16, stored=12, signed=1)
    a = np.linspace(-1000, 999, 1024).round().astype(np.int16).reshape(32, 32)
    ds.PixelData = a.tobytes()
    item = Dataset()
    item.add_new(0x00283002, "US", [2000, 65536 - 1000, 16])
    item.ModalityLUTType = "OD"
    lut = (np.arange(2000) * 3).astype("<u2")
    item.add_new(0x00283006, "OW", lut.tobytes())
    ds.ModalityLUTSequence = Sequence([item])
    ds.WindowCenter, ds.WindowWidth = 3000, 6000
    p = _save(ds, tmp_path / "s")
    vol = _load(tmp_path / "s")
    hand = lut[np.clip(a.astype(int) + 1000, 0, 1999)]
    assert np.array_equal(vol.array[0], hand.astype(np.float32))
    _dcm2pnm(p, tmp_path, "+Wi", "1")  # dcmtk shows the file too


# ----------------------------------------------------------------------------- defect 6
def test_palette_lookup_uses_only_the_bits_stored(tmp_path):
    """12 bits stored in 16 with the high bits set, JPEG-LS (dcmcjpls keeps them): every pixel
    took the palette's last entry."""
    ds = _base(32, 64, 16, stored=12, pi="PALETTE COLOR")
    a = (np.arange(32 * 64) * 2 % 4096).astype(np.uint16).reshape(32, 64)
    high = (np.random.default_rng(0).integers(1, 16, a.shape) << 12).astype(np.uint16)
    ds.PixelData = (a | high).tobytes()
    lut = {"Red": np.arange(4096) * 16, "Green": 65535 - np.arange(4096) * 16,
           "Blue": (np.arange(4096) % 256) * 256}
    for i, c in enumerate(("Red", "Green", "Blue")):
        ds.add_new(0x00281101 + i, "US", [4096, 0, 16])
        ds.add_new(0x00281201 + i, "OW", lut[c].astype("<u2").tobytes())
    src = _save(ds, tmp_path / "native")
    (tmp_path / "jls").mkdir()
    subprocess.run([_dcmtk("dcmcjpls"), str(src), str(tmp_path / "jls" / "x.dcm")], check=True,
                   capture_output=True)
    hand = (np.stack([lut[c][a] for c in ("Red", "Green", "Blue")], -1) / 257 + 0.5).astype(np.uint8)
    vol = _load(tmp_path / "jls")
    assert np.array_equal(vol.array[0], hand)


# ----------------------------------------------------------------------------- defect 7
def test_ct_slope_without_intercept_is_shown_as_stored_as_the_warning_says(tmp_path):
    ds = _base(16, 16, 16, signed=1, modality="CT", sop="1.2.840.10008.5.1.4.1.1.2")
    a = np.arange(256, dtype=np.int16).reshape(16, 16) * 10
    ds.PixelData = a.tobytes()
    ds.RescaleSlope = 2
    _save(ds, tmp_path / "s")
    vol = _load(tmp_path / "s")
    assert np.array_equal(vol.array[0], a)  # as pydicom's apply_modality_lut: no rescale without both
    assert vol.units == "" and any("shown as stored" in w for w in vol.warnings)


def test_a_lone_rescale_slope_of_other_images_is_not_applied_and_said(tmp_path):
    ds = _base(16, 16, 16, modality="OT")
    a = np.arange(256, dtype=np.uint16).reshape(16, 16)
    ds.PixelData = a.tobytes()
    ds.RescaleSlope = 3
    _save(ds, tmp_path / "s")
    vol = _load(tmp_path / "s")
    assert np.array_equal(vol.array[0], a)
    assert any("without the other: not applied" in w for w in vol.warnings)
