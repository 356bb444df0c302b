"""Session 21 audit: the index is checked against the file when pixels are read.  A file
rewritten after the scan (a longer header moves the pixels) is refused in one line, never
loaded from the old pixel offset or with the old rescale; a file (or zip) replaced by a
named pipe is refused at once, never waited on."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from conftest import DICOM, ROOT, need
from imaging_assist.dicom import scan
from imaging_assist.dicom.header import HeaderError, read_dataset
from imaging_assist.dicom.loader import LoadError, load_series

PY = sys.executable
GE = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"
STALE = "changed since it was indexed: open the folder again"


def _copy_ge(dest: Path) -> Path:
    dest.mkdir()
    for p in sorted(need(GE).glob("*.dcm")):
        shutil.copy(p, dest / p.name)
        os.chmod(dest / p.name, 0o644)
    return dest


def _values(ds) -> np.ndarray:
    """What the file on disk says the slice is (pydicom pixels * slope + intercept)."""
    return ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) \
        + float(ds.get("RescaleIntercept", 0))


def _longer_header(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    ds.ImageComments = "X" * 64  # a new element: the pixels move 72 bytes further
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _never_wrong(vol, name: str, path: Path) -> None:
    """The slice of ``name`` is either the file's pixels or not loaded, with one warning line."""
    names = [os.path.basename(r.path) for r in vol.headers]
    k = names.index(name)
    if vol.loaded[k]:
        assert np.array_equal(vol.array[k].astype(np.float32), _values(pydicom.dcmread(path)))
    else:
        said = [w for w in vol.warnings if name in w]
        assert len(said) == 1 and STALE in said[0] and "\n" not in said[0], vol.warnings
    for j, n in enumerate(names):  # the other slices are read as before
        if n != name:
            assert vol.loaded[j]
            assert np.array_equal(vol.array[j].astype(np.float32), _values(pydicom.dcmread(path.parent / n)))


def test_file_rewritten_with_a_longer_header_is_refused_never_shifted(tmp_path):
    d = _copy_ge(tmp_path / "ct")
    series = scan(str(d)).image_series()[0]
    assert all(r.fast and r.pixel_offset for r in series.instances)  # the native fast path
    _longer_header(d / "14.dcm")
    vol = load_series(series)
    _never_wrong(vol, "14.dcm", d / "14.dcm")
    assert not vol.loaded[[os.path.basename(r.path) for r in vol.headers].index("14.dcm")]


def test_pydicom_path_refuses_a_rewritten_file_instead_of_applying_the_old_rescale(tmp_path):
    # a deflated file is read by pydicom (no pixel offset): its rescale comes from the record
    src = need(GE / "14.dcm")
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    d = tmp_path / "defl"
    d.mkdir()
    ds.save_as(d / "a.dcm", enforce_file_format=True)
    series = scan(str(d)).image_series()[0]
    assert not series.instances[0].fast
    _longer_header(d / "a.dcm", RescaleIntercept=-1000)
    with pytest.raises(LoadError) as e:
        vol = load_series(series)
        assert np.array_equal(vol.array[0].astype(np.float32), _values(pydicom.dcmread(d / "a.dcm")))
    msg = str(e.value)
    assert STALE in msg and "a.dcm" in msg and "\n" not in msg
    with pytest.raises(HeaderError, match=STALE):  # the tag browser and others get it too
        read_dataset(series.instances[0], stop_before_pixels=True)


def test_zip_member_rewritten_since_the_scan_is_refused(tmp_path):
    src = need(GE / "14.dcm")
    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(src, "14.dcm")
    series = scan(str(z)).image_series()[0]
    changed = tmp_path / "14.dcm"
    shutil.copy(src, changed)
    _longer_header(changed, RescaleIntercept=-1000)
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(changed, "14.dcm")
    with pytest.raises(LoadError) as e:
        vol = load_series(series)
        assert np.array_equal(vol.array[0].astype(np.float32), _values(pydicom.dcmread(changed)))
    assert STALE in str(e.value) and "\n" not in str(e.value)


def test_record_without_identity_still_loads(tmp_path):
    # records made without a file identity (by hand, zip members) are not checked
    d = _copy_ge(tmp_path / "ct")
    series = scan(str(d)).image_series()[0]
    series.instances = [dataclasses.replace(r, file_identity=None) for r in series.instances]
    vol = load_series(series)
    assert vol.loaded.all()


_FIFO_CHILD = r"""
import json, os, sys, zipfile
from imaging_assist.dicom import scan
from imaging_assist.dicom.loader import LoadError, load_series
target = sys.argv[2]
series = scan(sys.argv[1]).image_series()[0]
os.unlink(target)
os.mkfifo(target)
try:
    vol = load_series(series)
    print(json.dumps({"loaded": int(vol.loaded.sum()), "n": len(vol.loaded), "warnings": vol.warnings}))
except LoadError as e:
    print(json.dumps({"error": str(e)}))
"""


def _load_with_fifo_in_child(root: Path, target: Path, timeout: float = 60) -> dict:
    try:
        out = subprocess.run([PY, "-c", _FIFO_CHILD, str(root), str(target)], capture_output=True,
                             text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading blocked on the named pipe {target.name} for {timeout} s")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_file_replaced_by_a_named_pipe_is_refused_not_waited_on(tmp_path):
    d = _copy_ge(tmp_path / "ct")
    res = _load_with_fifo_in_child(d, d / "15.dcm")
    assert res["loaded"] == res["n"] - 1, res
    said = [w for w in res["warnings"] if "15.dcm" in w]
    assert len(said) == 1 and "not a regular file (named pipe)" in said[0] and "\n" not in said[0]


def test_zip_replaced_by_a_named_pipe_is_refused_not_waited_on(tmp_path):
    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(need(GE / "14.dcm"), "14.dcm")
    res = _load_with_fifo_in_child(z, z)
    assert "not a regular file (named pipe)" in res.get("error", ""), res
    assert "\n" not in res["error"]
