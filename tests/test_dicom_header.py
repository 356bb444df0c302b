"""The fast header walk must agree with pydicom on every file it accepts."""

from pathlib import Path

import pydicom
import pytest

from conftest import SHARED, need
from imaging_assist.dicom import header as H

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def all_files():
    files = sorted(p for p in need(SHARED / "dicom").rglob("*") if p.is_file())
    files += sorted(p for p in (SHARED / "variety").rglob("*.dcm"))
    files += sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())
    return files


def test_fast_walk_matches_pydicom():
    n_fast = 0
    for f in all_files():
        try:
            rec = H.read_record(str(f))
        except H.HeaderError:
            continue
        if not rec.fast:
            continue
        n_fast += 1
        ref = H.InstanceRecord(path=str(f))
        with open(f, "rb") as fh:
            try:
                H._pydicom_scan(fh, ref)
            except H.HeaderError:
                continue
        for kw in set(rec.tags) | set(ref.tags):
            a, b = rec.tags.get(kw), ref.tags.get(kw)
            if a in (None, "") and b in (None, ""):
                continue
            assert a == b, f"{f.name}: {kw}: fast {a!r} != pydicom {b!r}"
        assert rec.flags == ref.flags, f.name
        assert rec.has_pixels == ref.has_pixels, f.name
        assert rec.encapsulated == ref.encapsulated, f.name
        assert rec.pixel_length == ref.pixel_length, f.name
    assert n_fast > 250  # the fast path covers the common files


def test_pixel_offset_points_at_pixel_bytes():
    f = need(SHARED / "dicom" / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose" / "I10.dcm")
    rec = H.read_record(str(f))
    ds = pydicom.dcmread(f)
    with open(f, "rb") as fh:
        fh.seek(rec.pixel_offset)
        assert fh.read(rec.pixel_length) == ds.PixelData


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello world, not dicom at all" * 10, "not DICOM"),
    (b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xff\xff\xff\x7f", ""),
])
def test_garbage_gives_one_line_reason(tmp_path, content, reason):
    p = tmp_path / "bad.dcm"
    p.write_bytes(content)
    with pytest.raises(H.HeaderError) as ei:
        H.read_record(str(p))
    msg = str(ei.value)
    assert "\n" not in msg and reason in msg
