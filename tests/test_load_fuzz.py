"""Fuzz the loader with mutated REAL files (issue 12).

Every mutated file must end in one of three ways: refused with a one-line reason (by the
index or as a LoadError), loaded with a warning that names the attribute whose value
changed, or loaded with the same header-derived values as the original.  Any other
exception, a hang (pytest timeout) or a changed value without a word fails the test.
Pixel values are not compared for mutations inside the pixel data: uncompressed or RLE
data have no checksum, so a flipped pixel byte is indistinguishable from a real value.
"""

import random
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import CT_PHANTOM, DICOM, NINE_SYNTAXES, need
from imaging_assist.dicom import LoadError, load_series, scan

CT_SLICE = CT_PHANTOM / "I100.dcm"
CR = DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm"
SYNTAXES = sorted(p for p in NINE_SYNTAXES.glob("*.dcm"))

# What a changed value must be explained by: a warning naming one of these attributes.
EXPLAINED_BY = {
    # (a series split into several stacks says so, naming the repeated ImagePositionPatient)
    "shape": ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "ImagePositionPatient"),
    "spacing": ("PixelSpacing", "ImagerPixelSpacing", "SpacingBetweenSlices", "SliceThickness",
                "ImagePositionPatient",  # the slice spacing comes from the positions
                "EstimatedRadiographicMagnificationFactor", "SequenceOfUltrasoundRegions"),
    "spacing_source": ("PixelSpacing", "ImagerPixelSpacing", "EstimatedRadiographicMagnificationFactor",
                       "SequenceOfUltrasoundRegions"),
    "origin": ("ImagePositionPatient",),
    "direction": ("ImageOrientationPatient",),
    "has_geometry": ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"),
    "photometric": ("PhotometricInterpretation",),
    "units": ("RescaleType", "RescaleIntercept", "RescaleSlope", "Modality"),
    "modality": ("Modality",),
}


def _facts(vol) -> dict:
    return {"shape": tuple(vol.shape), "spacing": tuple(np.round(vol.spacing, 6)),
            "spacing_source": vol.spacing_source, "origin": tuple(np.round(vol.origin, 4)),
            "direction": tuple(np.round(np.asarray(vol.direction), 6).ravel()),
            "has_geometry": vol.has_geometry, "photometric": vol.photometric, "units": vol.units,
            "modality": vol.modality}


def _outcome(folder: Path, ref: dict | None, pixels_ref: np.ndarray | None = None) -> str:
    index = scan(str(folder))
    for p in index.problems:
        assert p.reason and "\n" not in p.reason
    series = index.image_series()
    if not series:
        # refused with a reason, or (Pixel Data tag destroyed) listed as a series without images
        assert index.problems or index.all_series(), "file vanished without a reason"
        return "refused"
    try:
        vol = load_series(series[0])
    except LoadError as e:
        assert str(e) and "\n" not in str(e)
        return "load-error"
    assert vol.loaded.any()
    if ref is None:
        return "loaded"
    got = _facts(vol)
    if not (got["has_geometry"] and ref["has_geometry"]):  # a slice step means nothing without
        got["spacing"], ref = got["spacing"][:2], dict(ref, spacing=ref["spacing"][:2])  # geometry
    changed = [k for k in ref if got[k] != ref[k]]
    for k in changed:
        names = EXPLAINED_BY[k]
        assert any(n in w for w in vol.warnings for n in names), \
            f"{k} changed silently: {ref[k]} -> {got[k]}; warnings {vol.warnings}"
    if not changed and pixels_ref is not None and not vol.warnings:
        # header mutations that changed nothing visible must not change the pixels either
        assert np.array_equal(vol.array, pixels_ref), "pixel values changed without a word"
    return "warned" if changed else "same"


def _reference(path: Path, tmp: Path):
    d = tmp / "ref"
    d.mkdir()
    (d / path.name).write_bytes(path.read_bytes())
    vol = load_series(scan(str(d)).image_series()[0])
    return _facts(vol), vol.array.copy()


def _write(tmp: Path, name: str, data: bytes) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "f.dcm").write_bytes(data)
    return d


def _pixel_offset(path: Path) -> int:
    """File offset of the Pixel Data value."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, force=True, defer_size=64)
        return int(ds._dict[0x7FE00010].value_tell)  # the raw element: its value is not read


@pytest.mark.timeout(120)
@pytest.mark.parametrize("src", [CT_SLICE, CR] + SYNTAXES[:1] + SYNTAXES[2:3], ids=lambda p: p.stem)
def test_header_byte_flips(tmp_path, src):
    src = need(src)
    ref, pix = _reference(src, tmp_path)
    data = src.read_bytes()
    end = _pixel_offset(src)
    rnd = random.Random(src.name)
    start = 132 if data[128:132] == b"DICM" else 0
    seen = {}
    for n in range(60):
        b = bytearray(data)
        for _ in range(1 + n % 3):
            i = rnd.randrange(start, end)
            b[i] ^= 0xFF
        out = _outcome(_write(tmp_path, f"h{n}", bytes(b)), ref, pix)
        seen[out] = seen.get(out, 0) + 1
    assert seen.get("same", 0) + seen.get("warned", 0) > 0, seen  # the test does load files


@pytest.mark.timeout(120)
@pytest.mark.parametrize("src", [CT_SLICE, CR], ids=lambda p: p.stem)
def test_pixel_byte_flips_and_truncations(tmp_path, src):
    src = need(src)
    ref, _ = _reference(src, tmp_path)
    data = src.read_bytes()
    off = _pixel_offset(src)
    rnd = random.Random(1)
    for n in range(10):
        b = bytearray(data)
        for _ in range(50):
            b[rnd.randrange(off, len(b))] ^= 0xFF
        assert _outcome(_write(tmp_path, f"p{n}", bytes(b)), ref) in ("same", "warned")
    for n, cut in enumerate([len(data) - 1, len(data) - 2, len(data) - 1000, off + 10, off, off - 3, 200, 64]):
        assert _outcome(_write(tmp_path, f"t{n}", data[:cut]), ref) in ("refused", "load-error",
                                                                          "same", "warned")


def _set(src: Path, tmp: Path, name: str, **values) -> Path:
    from pydicom import config
    ds = pydicom.dcmread(src, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        for k, v in values.items():
            setattr(ds, k, v)
        d = tmp / name
        d.mkdir()
        ds.save_as(d / "f.dcm")
    finally:
        config.settings.writing_validation_mode = old
    return d


ABSURD = [
    {"Rows": 65535}, {"Columns": 1}, {"Rows": 0}, {"Columns": 65535, "Rows": 65535},
    {"BitsAllocated": 12}, {"BitsAllocated": 64}, {"BitsAllocated": 0}, {"BitsStored": 40},
    {"SamplesPerPixel": 3}, {"NumberOfFrames": 100000}, {"NumberOfFrames": 0},
    {"PixelSpacing": [1e9, 1e9]}, {"PixelSpacing": ["nan", "0.5"]}, {"PixelSpacing": [0, 0]},
    {"PixelSpacing": ["-1", "-1"]}, {"PixelSpacing": ["1e-9", "1e-9"]},
    {"ImagePositionPatient": ["nan", "0", "0"]}, {"ImagePositionPatient": ["1e300", "0", "0"]},
    {"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]}, {"ImageOrientationPatient": ["inf", 0, 0, 0, 1, 0]},
    {"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]},
    {"RescaleSlope": "nan"}, {"RescaleSlope": "0"}, {"RescaleIntercept": "-inf"}, {"RescaleSlope": "1e300"},
    {"WindowCenter": "nan", "WindowWidth": "nan"}, {"WindowWidth": "0"}, {"WindowWidth": "-5"},
    {"PhotometricInterpretation": "PALETTE COLOR"}, {"PhotometricInterpretation": "RGB"},
    {"PhotometricInterpretation": "YBR_FULL"},
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("src", [CT_SLICE, CR], ids=lambda p: p.stem)
def test_absurd_values(tmp_path, src):
    src = need(src)
    ref, _ = _reference(src, tmp_path)
    for n, values in enumerate(ABSURD):
        d = _set(src, tmp_path, f"a{n}", **values)
        out = _outcome(d, ref)
        key = next(iter(values))
        if key in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
                   "RescaleSlope", "RescaleIntercept", "BitsStored") or key == "PhotometricInterpretation":
            assert out in ("refused", "load-error") or (key == "BitsStored" and out == "warned") \
                or (key == "NumberOfFrames" and values[key] == 0 and out in ("same", "warned")), (values, out)


def _fragments(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every encapsulated fragment after the Basic Offset Table."""
    data = path.read_bytes()
    off = _pixel_offset(path)
    out, pos, first = [], off, True
    while pos + 8 <= len(data):
        tag, n = struct.unpack_from("<LL", data, pos)
        if tag == 0xE0DDFFFE:
            break
        if tag != 0xE000FFFE:
            break
        if not first:
            out.append((pos + 8, n))
        first = False
        pos += 8 + n
    return out


COMPRESSED = [p for p in SYNTAXES if p.stem[0] in "456789"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("src", COMPRESSED, ids=lambda p: p.stem)
def test_corrupt_compressed_frames(tmp_path, src):
    src = need(src)
    ref, _ = _reference(src, tmp_path)
    data = src.read_bytes()
    frags = _fragments(src)
    assert frags, "no fragments found"
    rnd = random.Random(src.name)
    fo, fl = frags[0]
    cases = []
    for n in range(12):  # flipped bytes inside the compressed stream (headers included)
        b = bytearray(data)
        for _ in range(1 + n):
            b[fo + rnd.randrange(0, min(fl, 2000) if n % 2 else fl)] ^= 0xFF
        cases.append(bytes(b))
    for cut in (fl // 2, 16, 2):  # a frame cut short (the rest of the file kept consistent)
        b = bytearray(data[:fo - 4] + struct.pack("<L", cut + (cut & 1)) + data[fo:fo + cut])
        b += b"\0" * (cut & 1) + struct.pack("<LL", 0xE0DDFFFE, 0)
        cases.append(bytes(b))
    cases.append(data[:fo + fl // 3])  # the file itself truncated inside the frame
    for n, b in enumerate(cases):
        assert _outcome(_write(tmp_path, f"c{n}", b), ref) in ("refused", "load-error", "same", "warned")
