"""A zip member rewritten after the scan to the same size (here: the same header, other pixel
values) is refused as changed, not loaded as the scanned file: the index keeps the member's
CRC-32 from the central directory and compares it before reading (its size alone would not
tell).  The tag browser's path (read_dataset) gets the same one-line refusal."""

from __future__ import annotations

import zipfile

import numpy as np
import pydicom
import pytest

from conftest import DICOM, need
from imaging_assist.dicom import scan
from imaging_assist.dicom.header import STALE_FILE, HeaderError, read_dataset
from imaging_assist.dicom.loader import LoadError, load_series

GE = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"


def _same_size_other_pixels(src, dst) -> None:
    ds = pydicom.dcmread(src)
    a = ds.pixel_array.copy()
    a[:8, :8] = a.max()  # a change a reader would see, same byte count
    ds.PixelData = a.tobytes()
    ds.save_as(dst)


def test_member_rewritten_to_the_same_size_is_refused(tmp_path):
    src = need(GE / "14.dcm")
    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(src, "14.dcm")
    series = scan(str(z)).image_series()[0]
    assert series.instances[0].member_crc is not None
    changed = tmp_path / "14.dcm"
    _same_size_other_pixels(src, changed)
    assert changed.stat().st_size == src.stat().st_size
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(changed, "14.dcm")
    with pytest.raises(LoadError) as e:
        load_series(series)
    assert STALE_FILE in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(HeaderError, match=STALE_FILE):
        read_dataset(series.instances[0], stop_before_pixels=True)


def test_unchanged_member_still_loads(tmp_path):
    src = need(GE / "14.dcm")
    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(src, "14.dcm")
    vol = load_series(scan(str(z)).image_series()[0])
    assert vol.loaded.all()
    ds = pydicom.dcmread(src)
    want = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(vol.array[0].astype(np.float32), want.astype(np.float32))
